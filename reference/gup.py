"""FOLL_PIN | FOLL_LONGTERM pins, as mm/gup.c: one page at a time."""

from __future__ import annotations

from machine import MM, VMA, Machine, check
from machine.errors import EFAULT, EINVAL, OK, SIGBUS, UFFD
from machine.pgtable import PAGE_SHIFT, is_pte_marker, is_swap_pte, pte_none, pte_present, pte_special, pte_write

from .folio import (
    GUP_PIN_COUNTING_BIAS, PageAnonExclusive, folio_put_refs, folio_test_large,
    page_folio,
)
from .filemap import do_read_fault, vma_needs_dirty_tracking
from .memory import do_anonymous_page_read, do_swap_page, handle_unshare_fault, handle_write_fault


def gup_must_unshare(machine: Machine, vma: VMA, level: str, entry: int, page: int) -> bool:
    """A R/O pin must unshare a page mapped read-only by entry that is not
    PageAnonExclusive (the head's for a PMD); always the zero page, and a page-cache page in
    a private mapping (not anon: a FOLL_LONGTERM pin in a COW mapping unshares it; files are
    opened rw, so every private mapping is one). Its caller's !pte_write test is folded in."""
    if pte_write(entry):
        return False
    if pte_special(entry):
        return True
    if not machine.frames.folio_anon[page_folio(machine, page)]:
        return not vma.shared
    exclusive_page = page_folio(machine, page) if level == "pmd" else page
    return not PageAnonExclusive(machine, exclusive_page)


def faultin_page_for_pin(machine: Machine, mm: MM, vma: VMA, addr: int, writable: bool) -> str:
    """Fault until the page at addr may be pinned: writable for a rw pin, exclusive for ro."""
    for _attempt in range(3):
        level, entry = machine.lookup(mm, addr)
        if writable:
            if pte_present(entry) and pte_write(entry):
                return OK
            result = handle_write_fault(machine, mm, vma, addr, order=0)
        elif (pte_none(entry) or is_pte_marker(entry)) and vma.file is not None:
            result = do_read_fault(machine, mm, vma, addr, uffd_wp=is_pte_marker(entry))
        elif pte_none(entry) or is_pte_marker(entry):
            result = do_anonymous_page_read(machine, mm, vma, addr)  # the zero page, unshared next
        elif is_swap_pte(entry):
            result = do_swap_page(machine, mm, vma, addr, write_fault=False)
        elif gup_must_unshare(machine, vma, level, entry, machine.page_at(mm, addr)):
            result = handle_unshare_fault(machine, mm, vma, addr)
        else:
            return OK
        if result != OK:
            return result
    check(False, "pin fault at %#x did not converge", addr)
    return EFAULT


def try_grab_folio_pin(machine: Machine, page: int) -> str:
    """FOLL_PIN one page: +1 ref and +1 _pincount on a large folio, +1024 refs on a small one.

    Returns OK (the kernel's 0): the model has no refcount overflow to fail on.
    """
    frames = machine.frames
    folio = page_folio(machine, page)
    check(frames.folio_refcount[folio] >= 1, "pinning a free folio")
    if folio_test_large(machine, folio):
        frames.folio_refcount[folio] += 1
        frames.folio_pincount[folio] += 1
    else:
        frames.folio_refcount[folio] += GUP_PIN_COUNTING_BIAS
    return OK


def gup_put_folio_pin(machine: Machine, page: int) -> None:
    """Undo try_grab_folio_pin; the last reference frees the folio."""
    frames = machine.frames
    folio = page_folio(machine, page)
    if folio_test_large(machine, folio):
        check(frames.folio_pincount[folio] >= 1, "folio %s pincount underflow", folio)
        frames.folio_pincount[folio] -= 1
        folio_put_refs(machine, folio, 1)
    else:
        folio_put_refs(machine, folio, GUP_PIN_COUNTING_BIAS)


def pin_user_pages(machine: Machine, mm: MM, addr: int, nr_pages: int, writable: bool) -> str:
    """Pin nr_pages pages from addr, faulting each in and unsharing it, in ascending order.

    As __get_user_pages: MMF_HAS_PINNED is set before the walk, and a page outside a VMA
    (or in a read-only one for rw) ends it with EFAULT, the pages pinned so far unpinned
    and the faults before it kept.
    """
    if nr_pages == 0:
        return EINVAL
    mm.has_pinned = True
    pages = []
    for i in range(nr_pages):
        page_addr = addr + (i << PAGE_SHIFT)
        vma = mm.find_vma(page_addr)
        if vma is None or (writable and not vma.writable) or (writable and vma_needs_dirty_tracking(machine, vma)):
            for page in pages:
                gup_put_folio_pin(machine, page)
            return EFAULT
        result = faultin_page_for_pin(machine, mm, vma, page_addr, writable)
        if result in (SIGBUS, UFFD):  # VM_FAULT_SIGBUS (past a file's end, or userfaultfd's with
            # UFFD_FEATURE_SIGBUS): __get_user_pages fails with -EFAULT, the faults before kept
            for page in pages:
                gup_put_folio_pin(machine, page)
            return EFAULT
        if result != OK:
            return result
        page = machine.page_at(mm, page_addr)
        check(not machine.frames.folio_anon[page_folio(machine, page)]
              or PageAnonExclusive(machine, pin_exclusive_page(machine, mm, page_addr, page)),
              f"pinning non-exclusive page {page}")
        check(try_grab_folio_pin(machine, page) == OK, "could not grab page %s", page)
        pages.append(page)
    machine.pin_add(mm.pid, addr, "rw" if writable else "ro", tuple(pages))
    return OK


def pin_exclusive_page(machine: Machine, mm: MM, addr: int, page: int) -> int:
    """The page whose PageAnonExclusive speaks for page at addr: the head under a PMD."""
    level, _entry = machine.lookup(mm, addr)
    return page_folio(machine, page) if level == "pmd" else page


def unpin_user_pages(machine: Machine, pin_id: int) -> str:
    if pin_id not in machine.pins:
        return EINVAL
    pin = machine.pin_remove(pin_id)
    for page in pin.pages:
        gup_put_folio_pin(machine, page)
    return OK


