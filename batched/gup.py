"""FOLL_PIN | FOLL_LONGTERM pins, as mm/gup.c: pages that need no fault are grabbed
together, and so are the faults of a run of none PTEs (one fresh order-0 folio each, as
the kernel's one-page faults give); any other fault goes one page at a time."""

from __future__ import annotations

import numpy as np

from machine import MM, VMA, Machine, all_set, any_set, check
from machine.errors import EFAULT, EINVAL, ENOMEM, OK, SIGBUS, UFFD
from machine.pgtable import (
    PAGE_SHIFT,
    PMD_SIZE,
    is_pte_marker,
    is_swap_pte,
    pmd_trans_huge,
    pte_marker_uffd_wp,
    pte_mkuffd_wp,
    pte_none,
    pte_pfn,
    pte_present,
    pte_special,
    pte_write,
)

from .filemap import do_read_fault, vma_needs_dirty_tracking
from .folio import GUP_PIN_COUNTING_BIAS, folios_put_refs, page_folio
from .internal import add_at
from .memory import (
    do_swap_page,
    handle_unshare_fault,
    handle_write_fault,
    map_new_anon_pages,
    mk_pte,
)
from .rmap import folio_add_new_anon_rmap


def do_unshare_anonymous_page(machine: Machine, mm: MM, vma: VMA, addr: int) -> str:
    """A R/O pin of an unpopulated address (or of a uffd-wp marker): the read fault's zero page
    and its unshare copy (wp_page_copy with unshare: a zeroed exclusive folio, mapped as `base`)
    in one step; a marker's uffd-wp bit goes along in a registered VMA (the zero page took it
    and wp_page_copy keeps it)."""
    uffd_wp = bool(pte_marker_uffd_wp(machine.ptep_get(mm, addr))) and vma.uffd_wp
    folio = machine.frames.folio_alloc(0)
    if folio is None:
        return ENOMEM
    folio_add_new_anon_rmap(machine, folio, mm, vma, addr, exclusive=True)
    entry = mk_pte(folio, vma)
    machine.set_pte_at(mm, addr, pte_mkuffd_wp(entry) if uffd_wp else entry)
    mm.rss_anon += 1
    return OK


def gup_must_unshare(machine: Machine, vma: VMA, level: str, entry, page):
    """A R/O pin must unshare a page mapped read-only by entry that is not
    PageAnonExclusive (the head's for a PMD); always the zero page, and a page-cache page in
    a private (COW) mapping only. Its caller's !pte_write test is folded in. entry and page
    may be arrays of present entries and their pages: one answer each."""
    exclusive_page = page_folio(machine, page) if level == "pmd" else page
    anon = machine.frames.folio_anon[page_folio(machine, page)]
    return np.logical_not(pte_write(entry)) & (pte_special(entry) | np.where(
        anon, np.logical_not(machine.frames.page_anon_exclusive[exclusive_page]), not vma.shared))


def range_needs_fault_for_pin(machine: Machine, mm: MM, vma: VMA, start: int, end: int,
                              writable: bool) -> np.ndarray:
    """Per page of the range [start, end) (inside one PMD): must it be faulted before it can
    be pinned? rw: unless mapped writable; ro: unless mapped and not gup_must_unshare."""
    nr_pages = (end - start) >> PAGE_SHIFT
    pmd = machine.pmdp_get(mm, start & ~(PMD_SIZE - 1))
    if pmd_trans_huge(pmd):
        if writable:
            return np.full(nr_pages, not pte_write(pmd))
        return np.full(nr_pages, bool(gup_must_unshare(machine, vma, "pmd", pmd, int(pte_pfn(pmd)))))
    ptes = machine.ptes_get(mm, start, nr_pages)
    present = pte_present(ptes)
    if writable:
        return ~(present & pte_write(ptes))
    need_fault = ~present
    need_fault[present] = gup_must_unshare(machine, vma, "pte", ptes[present], pte_pfn(ptes[present]).astype(np.int64))
    return need_fault


def pte_none_run(machine: Machine, mm: MM, start: int, end: int) -> int:
    """How many PTEs from start (before end, inside one PMD) are none in a row: 0 under a
    PMD block."""
    if pmd_trans_huge(machine.pmdp_get(mm, start & ~(PMD_SIZE - 1))):
        return 0
    mapped = ~pte_none(machine.ptes_get(mm, start, (end - start) >> PAGE_SHIFT))
    return int(np.argmax(mapped)) if any_set(mapped) else len(mapped)


def faultin_none_pages_for_pin(machine: Machine, mm: MM, vma: VMA, addr: int, nr_pages: int,
                               writable: bool) -> bool:
    """Fault in nr_pages none PTEs from addr as GUP's one-page faults do, all at once: a fresh
    exclusive order-0 folio each (a write fault's: writable and dirty for rw; an unshare's for
    ro: the zero page a read fault maps, unshared at once), at the lowest free frames in
    ascending address order. False, with nothing done, if
    fewer frames are free: the page-by-page path then fails where the kernel would."""
    check(nr_pages >= 1, "nr_pages must be positive")
    check(addr >= vma.start and addr + (nr_pages << PAGE_SHIFT) <= vma.end, "faults outside the VMA")
    check(not writable or vma.writable, "rw pin fault in a read-only VMA")
    folios = machine.frames.folios_alloc_order0(nr_pages)
    if folios is None:
        return False
    addrs = addr + (np.arange(nr_pages, dtype=np.int64) << PAGE_SHIFT)
    map_new_anon_pages(machine, mm, vma, addr & ~(PMD_SIZE - 1), addrs, folios, dirty=writable)
    return True


def faultin_page_for_pin(machine: Machine, mm: MM, vma: VMA, addr: int, writable: bool) -> str:
    """One page's faults until it may be pinned: writable for rw, exclusive for ro."""
    for _attempt in range(3):
        if not range_needs_fault_for_pin(machine, mm, vma, addr, addr + (1 << PAGE_SHIFT), writable)[0]:
            return OK
        entry = machine.lookup(mm, addr)[1]
        if writable:
            result = handle_write_fault(machine, mm, vma, addr, order=0)
        elif (pte_none(entry) or is_pte_marker(entry)) and vma.file is not None:
            result = do_read_fault(machine, mm, vma, addr, uffd_wp=is_pte_marker(entry))
        elif pte_none(entry) or is_pte_marker(entry):
            result = do_unshare_anonymous_page(machine, mm, vma, addr)
        elif is_swap_pte(entry):
            result = do_swap_page(machine, mm, vma, addr, write_fault=False)
        else:
            result = handle_unshare_fault(machine, mm, vma, addr)
        if result != OK:
            return result
    check(not range_needs_fault_for_pin(machine, mm, vma, addr, addr + (1 << PAGE_SHIFT), writable)[0],
          f"pin fault at {addr:#x} did not converge")
    return OK


def pinned_pages(machine: Machine, mm: MM, start: int, end: int) -> np.ndarray:
    """The pfns mapped at [start, end) (inside one PMD), checked exclusive as a pin needs."""
    frames = machine.frames
    pmd = machine.pmdp_get(mm, start & ~(PMD_SIZE - 1))
    nr_pages = (end - start) >> PAGE_SHIFT
    if pmd_trans_huge(pmd):
        folio = int(pte_pfn(pmd))
        check(frames.page_anon_exclusive[folio], "pinning non-exclusive PMD folio %s", folio)
        return folio + ((start & (PMD_SIZE - 1)) >> PAGE_SHIFT) + np.arange(nr_pages, dtype=np.int64)
    pages = pte_pfn(machine.ptes_get(mm, start, nr_pages)).astype(np.int64)
    check(all_set(frames.page_anon_exclusive[pages] | ~frames.folio_anon[frames.page_folio[pages]]),
          "pinning non-exclusive pages")
    return pages


def try_grab_folios_pin(machine: Machine, pages: np.ndarray) -> str:
    """try_grab_folio_pin for each page (of many folios): +1 ref and +1 _pincount on a large
    folio, +1024 refs on a small one. Returns OK (the kernel's 0) for all: the model has no
    refcount overflow to fail on."""
    frames = machine.frames
    folios = page_folio(machine, pages)
    check(all_set(frames.folio_refcount[folios] >= 1), "pinning a free folio")
    large = frames.folio_order[folios] > 0
    add_at(frames.folio_refcount, folios, np.where(large, 1, GUP_PIN_COUNTING_BIAS))
    add_at(frames.folio_pincount, folios[large], 1)
    return OK


def gup_put_folios_pin(machine: Machine, pages: np.ndarray) -> None:
    """gup_put_folio_pin for each page (of many folios): undo try_grab_folios_pin; folios
    losing their last reference are freed."""
    frames = machine.frames
    folios = page_folio(machine, pages)
    large = frames.folio_order[folios] > 0
    add_at(frames.folio_pincount, folios[large], -1)
    check(all_set(frames.folio_pincount[folios] >= 0), "pincount underflow")
    folios_put_refs(machine, folios, np.where(large, 1, GUP_PIN_COUNTING_BIAS))


def pin_user_pages(machine: Machine, mm: MM, addr: int, nr_pages: int, writable: bool) -> str:
    """Pin nr_pages pages from addr in ascending order: runs that need no fault are grabbed
    at once, a run of none PTEs is faulted at once, and each other page that needs a fault
    is faulted before anything after it is looked at. As __get_user_pages: MMF_HAS_PINNED
    is set first, and the first page outside a VMA (or in a read-only one for rw) ends the
    walk with EFAULT, what was pinned unpinned and the faults kept."""
    if nr_pages == 0:
        return EINVAL
    mm.has_pinned = True
    end = addr + (nr_pages << PAGE_SHIFT)
    pages: list[np.ndarray] = []
    page_addr = addr
    while page_addr < end:
        vma = mm.find_vma(page_addr)
        if vma is None or (writable and not vma.writable) or (writable and vma_needs_dirty_tracking(machine, vma)):
            if pages:
                gup_put_folios_pin(machine, np.concatenate(pages))
            return EFAULT
        chunk_end = min(end, vma.end, (page_addr & ~(PMD_SIZE - 1)) + PMD_SIZE)
        need_fault = range_needs_fault_for_pin(machine, mm, vma, page_addr, chunk_end, writable)
        ready_end = page_addr + (int(np.argmax(need_fault)) << PAGE_SHIFT) if any_set(need_fault) else chunk_end
        if ready_end > page_addr:
            ready = pinned_pages(machine, mm, page_addr, ready_end)
            check(try_grab_folios_pin(machine, ready) == OK, "could not grab pages")
            pages.append(ready)
            page_addr = ready_end
            continue
        nr_none = pte_none_run(machine, mm, page_addr, chunk_end)
        if nr_none and vma.file is None and faultin_none_pages_for_pin(machine, mm, vma, page_addr, nr_none, writable):
            continue   # now ready: grabbed on the next turn
        result = faultin_page_for_pin(machine, mm, vma, page_addr, writable)
        if result in (SIGBUS, UFFD):  # VM_FAULT_SIGBUS (past a file's end, or userfaultfd's with
            # UFFD_FEATURE_SIGBUS): __get_user_pages fails with -EFAULT, the faults before kept
            if pages:
                gup_put_folios_pin(machine, np.concatenate(pages))
            return EFAULT
        if result != OK:
            return result
        ready = pinned_pages(machine, mm, page_addr, page_addr + (1 << PAGE_SHIFT))
        check(try_grab_folios_pin(machine, ready) == OK, "could not grab pages")
        pages.append(ready)
        page_addr += 1 << PAGE_SHIFT
    machine.pin_add(mm.pid, addr, "rw" if writable else "ro", tuple(map(int, np.concatenate(pages))))
    return OK


def unpin_user_pages(machine: Machine, pin_id: int) -> str:
    if pin_id not in machine.pins:
        return EINVAL
    pin = machine.pin_remove(pin_id)
    gup_put_folios_pin(machine, np.array(pin.pages, np.int64))
    return OK
