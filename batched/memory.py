"""Faults, COW, swap-in, zap and fork's page-table copy, as mm/memory.c, batched.

zap and fork handle a PTE table's range at once: folio_pte_batch finds every
batch, the rmap functions take all batches together, and the batched
primitives write all runs of the table in one call.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from machine import MM, VMA, Machine, PteRuns, all_set, any_set, check
from machine.errors import ENOMEM, OK, UFFD
from machine.mm import PUD_SIZE, pmd_index
from machine.pgtable import (
    HPAGE_PMD_ORDER,
    PAGE_SHIFT,
    PAGE_SIZE,
    PMD_SHIFT,
    PMD_SIZE,
    PTE_MARKER_UFFD_WP,
    SWP_OFFSET_MASK,
    SWP_OFFSET_SHIFT,
    is_pte_marker,
    is_swap_pte,
    is_swap_slot_pte,
    make_pte_marker,
    pfn_pte,
    pmd_trans_huge,
    pte_clear_uffd_wp,
    pte_marker_uffd_wp,
    pte_mkdirty,
    pte_mknoncont,
    pte_mkold,
    pte_mkuffd_wp,
    pte_mkwrite,
    pte_mkyoung,
    pte_none,
    pte_pfn,
    pte_present,
    pte_swp_clear_exclusive,
    pte_swp_clear_uffd_wp,
    pte_swp_exclusive,
    pte_swp_offset,
    pte_swp_uffd_wp,
    pte_uffd_wp,
    pte_write,
    pte_wrprotect,
    vm_get_page_prot,
)
from machine.swap import NO_FOLIO

from . import filemap, huge_memory
from .folio import (
    PageAnonExclusive,
    SetPageAnonExclusive,
    copy_user_pages,
    folio_put,
    folio_ref_add,
    folios_put_refs,
    folios_ref_add,
    page_folio,
    vm_normal_pages,
    zero_page_pte,
)
from .internal import (
    FPB_FORK,
    FPB_ZAP,
    PteBatches,
    SwapBatches,
    folio_pte_batch,
    pte_offsets_in_batches,
    swap_pte_batch,
)
from .rmap import (
    BusyPerBatch,
    folio_add_new_anon_rmap,
    folio_remove_rmap_pte,
    folios_add_anon_rmap_ptes,
    folios_add_new_anon_rmap_order0,
    folios_remove_rmap_ptes,
    folios_try_dup_anon_rmap_ptes,
)
from .swap import (
    folio_free_swap,
    folio_put_swap,
    free_swap_and_cache_nr,
    free_swap_cache,
    swap_cache_add_folio,
    swap_duplicate_nr,
)


def maybe_mkwrite(pte, vma: VMA):
    return pte_mkwrite(pte) if vma.writable else pte


def mk_pte(page, vma: VMA):
    return pfn_pte(page, vm_get_page_prot(vma.writable))


PMD_SLOTS_READ_SINGLY = 8


def pmd_ranges(mm: MM, start: int, end: int) -> Iterator[tuple[int, int, bool]]:
    """Split [start, end) at PMD boundaries: (addr, next_addr, whether it is a whole PMD),
    for each PMD entry that maps something: only the PMD tables present are looked into,
    and each one's non-none entries in the range are found at once."""
    for pmd_table in mm.pmd_tables_in(start, end):
        first = pmd_index(max(start, pmd_table.base))
        last = pmd_index(min(end, pmd_table.base + PUD_SIZE) - 1)
        entries = pmd_table.entries
        if last - first < PMD_SLOTS_READ_SINGLY:  # a few slots: plain reads beat a numpy call
            mapped = [index for index in range(first, last + 1) if entries.item(index)]
        else:
            mapped = (np.flatnonzero(entries[first:last + 1]) + first).tolist()
        for index in mapped:
            haddr = pmd_table.base + (index << PMD_SHIFT)
            addr, next_addr = max(start, haddr), min(end, haddr + PMD_SIZE)
            yield addr, next_addr, addr == haddr and next_addr == haddr + PMD_SIZE


def userfaultfd_pte_wp(vma: VMA, pte: int) -> bool:
    """A write to this present entry (PTE or PMD) must be reported to userfaultfd."""
    return vma.uffd_wp and bool(pte_uffd_wp(pte))


# Anonymous faults (do_anonymous_page, alloc_anon_folio).

def do_anonymous_page_read(machine: Machine, mm: MM, vma: VMA, addr: int) -> str:
    """A read fault on a none entry or a uffd-wp marker: the shared zero page, with no folio,
    rmap, reference or RSS; with the marker's uffd-wp bit in a registered VMA, the marker
    dropped first in one no longer registered. Context: nothing but a marker is at addr."""
    entry = machine.lookup(mm, addr)[1]
    check(pte_none(entry) or is_pte_marker(entry), "anonymous read fault on a mapped address %#x", addr)
    pte = zero_page_pte(machine, vma)
    if is_pte_marker(entry):
        if vma.uffd_wp and pte_marker_uffd_wp(entry):
            pte = pte_mkuffd_wp(pte)
        else:
            pte_marker_clear(machine, mm, addr)
    machine.set_ptes(mm, addr, pte, 1)
    return OK


def do_anonymous_read_fault(machine: Machine, mm: MM, vma: VMA, addr: int, order: int) -> str:
    """A read fault on a none entry or a marker with the anon sizes up to order enabled:
    the huge zero folio if order reaches the PMD size and alloc_anon_folio's PMD test
    passes (create_huge_pmd, do_huge_pmd_anonymous_page), else the zero page."""
    if order == HPAGE_PMD_ORDER and alloc_anon_folio_suitable(machine, mm, vma, addr, order):
        return huge_memory.set_huge_zero_folio(machine, mm, vma, addr & ~(PMD_SIZE - 1))
    return do_anonymous_page_read(machine, mm, vma, addr)


def fault_orders(order: int) -> tuple[int, ...]:
    """The orders a fault of order K tries: K, K-1, ... 0, never 1 (K = 1 acts as 0)."""
    return _FAULT_ORDERS[order]


_FAULT_ORDERS = tuple(tuple(candidate for candidate in range(order, -1, -1) if candidate != 1)
                      for order in range(HPAGE_PMD_ORDER + 1))


def alloc_anon_folio_suitable(machine: Machine, mm: MM, vma: VMA, addr: int, order: int) -> bool:
    """alloc_anon_folio's test of one order (thp_vma_suitable_order, pte_range_none): the
    aligned 2**order pages around addr lie in vma and every PTE there is none."""
    nr_pages = 1 << order
    start = addr & ~((nr_pages << PAGE_SHIFT) - 1)
    if start < vma.start or start + (nr_pages << PAGE_SHIFT) > vma.end:
        return False
    if order == HPAGE_PMD_ORDER and pmd_trans_huge(machine.pmdp_get(mm, start)):
        return False
    return machine.ptes_none(mm, start, nr_pages)


def do_anonymous_page(machine: Machine, mm: MM, vma: VMA, addr: int, order: int, uffd_wp: bool = False) -> str:
    """A write fault on a none entry (or a uffd-wp marker: uffd_wp, order 0, the new entry
    write-protected with the bit): the largest suitable order K..0 that can be allocated.

    Context: vma is writable; nothing is mapped at addr.
    """
    check(vma.writable, "anonymous write fault in a read-only VMA")
    entry = machine.lookup(mm, addr)[1]
    check(pte_none(entry) or (uffd_wp and pte_marker_uffd_wp(entry)), "anonymous fault on a mapped address %#x", addr)
    if uffd_wp:
        folio = machine.frames.folio_alloc(0)
        if folio is None:
            return ENOMEM
        map_anon_folio_pte_pf(machine, mm, vma, addr, folio, uffd_wp=True)
        return OK
    for candidate in fault_orders(order):
        if vma.uffd_wp and 0 < candidate < HPAGE_PMD_ORDER:
            continue  # alloc_anon_folio: userfaultfd_armed wants per-page fault fidelity
        if not alloc_anon_folio_suitable(machine, mm, vma, addr, candidate):
            continue
        folio = machine.frames.folio_alloc(candidate)
        if folio is None:
            continue
        if candidate == HPAGE_PMD_ORDER:
            huge_memory.map_anon_folio_pmd(machine, mm, vma, addr & ~(PMD_SIZE - 1), folio)
        else:
            map_anon_folio_pte_pf(machine, mm, vma, addr & ~((PAGE_SIZE << candidate) - 1), folio)
        return OK
    return ENOMEM


def map_anon_folio_pte_nopf(machine: Machine, mm: MM, vma: VMA, addr: int, folio: int, uffd_wp: bool) -> None:
    """Map a fresh folio whole at addr with one set_ptes, writable and dirty (uffd_wp:
    write-protected with the bit), all exclusive (no counters)."""
    nr_pages = machine.frames.folio_nr_pages(folio)
    folio_ref_add(machine, folio, nr_pages - 1)
    folio_add_new_anon_rmap(machine, folio, mm, vma, addr, exclusive=True)
    entry = maybe_mkwrite(pte_mkdirty(mk_pte(folio, vma)), vma)
    machine.set_ptes(mm, addr, pte_mkuffd_wp(entry) if uffd_wp else entry, nr_pages)


def map_anon_folio_pte_pf(machine: Machine, mm: MM, vma: VMA, addr: int, folio: int,
                          uffd_wp: bool = False) -> None:
    """map_anon_folio_pte_nopf for a page fault: also count the folio's pages in MM_ANONPAGES."""
    map_anon_folio_pte_nopf(machine, mm, vma, addr, folio, uffd_wp)
    mm.rss_anon += machine.frames.folio_nr_pages(folio)


# Write faults on present read-only PTEs (do_wp_page): one page, as in the kernel.

def wp_can_reuse_anon_folio(machine: Machine, folio: int, mm: MM) -> bool:
    """Every reference is one of mm's mappings, so no one else can see the folio (a small
    swap-cache folio leaves the cache first if it can)."""
    frames = machine.frames
    if frames.folio_order[folio] > 0:
        return __wp_can_reuse_large_anon_folio(machine, folio, mm)
    in_swap_cache = frames.folio_swap.item(folio) != 0
    if frames.folio_refcount.item(folio) > 1 + in_swap_cache:
        return False
    if in_swap_cache:
        folio_free_swap(machine, folio)  # leaves the cache only if no swap PTE references the slot
    return frames.folio_refcount.item(folio) == 1


def __wp_can_reuse_large_anon_folio(machine: Machine, folio: int, mm: MM) -> bool:
    """v6.15: reuse when mapped more than once, only by mm, and all refs are mappings (a
    swap-cache folio leaves the cache first if it can)."""
    frames = machine.frames
    large_mapcount = frames.folio_large_mapcount.item(folio)
    if large_mapcount <= 1:
        return False  # give back a large folio mapped by a single page
    if frames.folio_mm_ids_shared[folio]:
        return False
    if frames.folio_swap.item(folio) != 0:
        folio_free_swap(machine, folio)  # fails while a swap PTE references one of its slots (#103)
    if large_mapcount != frames.folio_refcount.item(folio):
        return False
    check(mm.mm_id in frames.folio_mm_id[folio], "exclusively mapped folio not mapped by the faulting mm")
    return True


def do_wp_page(machine: Machine, mm: MM, vma: VMA, addr: int, pte: int, unshare: bool) -> str:
    """A write (or unshare) fault on the present read-only PTE pte at addr (vmf->orig_pte):
    reuse the page, else copy it.

    Context: pte is still the entry at addr; for a write fault the VMA is writable.
    """
    check(pte_mknoncont(pte) == pte_mknoncont(machine.ptep_get(mm, addr)),   # vmf->orig_pte may predate a fold
          "do_wp_page: the PTE at %#x changed", addr)
    check(pte_present(pte), "do_wp_page on a non-present PTE")
    check(unshare or vma.writable, "write fault in a read-only VMA")
    if not unshare and userfaultfd_pte_wp(vma, pte):
        return UFFD  # handle_userfault(VM_UFFD_WP); with UFFD_FEATURE_SIGBUS the fault is SIGBUS
    if not vm_normal_pages(machine, pte):
        return wp_page_copy(machine, mm, vma, addr, pte, unshare)  # the zero page: always copied
    page = int(pte_pfn(pte))
    folio = int(page_folio(machine, page))
    if vma.shared:  # a page-cache page of a shared file mapping: written in place
        check(not unshare, "unshare fault in a shared mapping")
        return filemap.wp_page_shared(machine, mm, vma, addr, pte)
    if machine.frames.folio_anon.item(folio) and (
            PageAnonExclusive(machine, page) or wp_can_reuse_anon_folio(machine, folio, mm)):
        SetPageAnonExclusive(machine, page)
        if not unshare:
            wp_page_reuse(machine, mm, vma, addr, pte)
        return OK
    return wp_page_copy(machine, mm, vma, addr, pte, unshare)


def wp_page_reuse(machine: Machine, mm: MM, vma: VMA, addr: int, pte: int) -> None:
    """Make the reused page's PTE young, dirty and (in a writable VMA) writable
    (ptep_set_access_flags: a folded block unfolds when the write bit changes, never folds)."""
    machine.ptep_set_access_flags(mm, addr, maybe_mkwrite(pte_mkdirty(pte_mkyoung(pte)), vma))


def wp_page_copy(machine: Machine, mm: MM, vma: VMA, addr: int, pte: int, unshare: bool) -> str:
    """Copy the page pte maps to a new exclusive order-0 folio, then drop the old mapping.
    A copy of the zero page is a zeroed folio, and one page more in MM_ANONPAGES; a copy of
    a private file page moves one page from MM_FILEPAGES to MM_ANONPAGES."""
    zero_page = not vm_normal_pages(machine, pte)
    page = int(pte_pfn(pte))
    new_folio = machine.frames.folio_alloc(0)
    if new_folio is None:
        return ENOMEM
    if zero_page:
        machine.frames.page_data[new_folio] = 0  # vma_alloc_zeroed_movable_folio
    else:
        copy_user_pages(machine, new_folio, page)
    folio_add_new_anon_rmap(machine, new_folio, mm, vma, addr, exclusive=True)
    entry = mk_pte(new_folio, vma)
    if not unshare:
        entry = maybe_mkwrite(pte_mkdirty(entry), vma)
    elif pte_uffd_wp(pte):
        entry = pte_mkuffd_wp(entry)
    machine.ptep_get_and_clear(mm, addr)
    machine.set_pte_at(mm, addr, entry)
    if zero_page:
        mm.rss_anon += 1
        return OK
    folio = int(page_folio(machine, page))
    if not machine.frames.folio_anon.item(folio):  # a private file page COWed
        mm.rss_file -= 1
        mm.rss_anon += 1
    folio_remove_rmap_pte(machine, folio, page, mm)
    folio_put(machine, folio)
    return OK


# Swap-in (do_swap_page): every swap-in goes through the swap cache (zram, SWP_SYNCHRONOUS_IO).

def swap_folio_orders(machine: Machine, mm: MM, vma: VMA, addr: int, pte: int, order: int) -> list[int]:
    """alloc_swap_folio's orders, highest first: the mTHP orders up to the fault's (below the PMD
    order) whose aligned range lies in vma with its slot offset aligned as the address, from the
    highest whose entries are the swap PTEs of consecutive slots with pte's bits, uncached,
    with one zeromap value; the swap count is not asked (#100)."""
    if vma.uffd_wp:  # userfaultfd_armed: per-page fault fidelity
        return []
    slot = int(pte_swp_offset(pte))
    index = addr >> PAGE_SHIFT
    orders = [candidate for candidate in fault_orders(order)
              if 0 < candidate < HPAGE_PMD_ORDER and index % (1 << candidate) == slot % (1 << candidate)
              and vma.start <= (addr & ~((PAGE_SIZE << candidate) - 1))
              and (addr & ~((PAGE_SIZE << candidate) - 1)) + (PAGE_SIZE << candidate) <= vma.end]
    if not orders:
        return []
    top = 1 << orders[0]
    start = addr & ~((top << PAGE_SHIFT) - 1)
    offset = (addr - start) >> PAGE_SHIFT
    swap = machine.swap
    slots = slot - offset + np.arange(top, dtype=np.int64)
    in_swap = slots < swap.nr_slots  # the top order's run may pass the device's end, a lower one not
    slots = np.where(in_swap, slots, 0)
    expected = (np.uint64(pte) & ~np.uint64(SWP_OFFSET_MASK)) | (slots.astype(np.uint64) << np.uint64(SWP_OFFSET_SHIFT))
    usable = in_swap & (machine.ptes_get(mm, start, top) == expected) & (swap.swap_cache[slots] == NO_FOLIO)
    zeromap = swap.swap_zeromap[slots]
    for position, candidate in enumerate(orders):
        nr_pages = 1 << candidate
        low = offset & ~(nr_pages - 1)
        run = slice(low, low + nr_pages)
        if all_set(usable[run]) and (all_set(zeromap[run]) or not any_set(zeromap[run])):
            return orders[position:]
    return []


def alloc_swap_folio(machine: Machine, mm: MM, vma: VMA, addr: int, pte: int, order: int) -> int | None:
    """The highest of swap_folio_orders that can be allocated, else order 0 (None: none)."""
    for candidate in swap_folio_orders(machine, mm, vma, addr, pte, order):
        folio = machine.frames.folio_alloc(candidate)
        if folio is not None:
            return folio
    return machine.frames.folio_alloc(0)


def swap_folio_mapped_whole(machine: Machine, mm: MM, vma: VMA, addr: int, pte: int, folio: int) -> bool:
    """A large swap-cache folio is mapped whole by a swap-in at addr when its range lies in
    the VMA and addr's PMD and its entries there are its slots' swap PTEs with pte's bits."""
    frames = machine.frames
    nr_pages = frames.folio_nr_pages(folio)
    first = frames.folio_swap.item(folio)
    start = addr - ((int(pte_swp_offset(pte)) - first) << PAGE_SHIFT)
    pmd_start = addr & ~(PMD_SIZE - 1)
    if start < max(pmd_start, vma.start) or start + (nr_pages << PAGE_SHIFT) > min(pmd_start + PMD_SIZE, vma.end):
        return False
    slots = first + np.arange(nr_pages, dtype=np.uint64)
    expected = (np.uint64(pte) & ~np.uint64(SWP_OFFSET_MASK)) | (slots << np.uint64(SWP_OFFSET_SHIFT))
    return all_set(machine.ptes_get(mm, start, nr_pages) == expected)


def swapin_maps_exclusive(machine: Machine, pte: int, first_slot: int, nr_pages: int, fresh: bool) -> bool:
    """Whether a swap-in maps its nr_pages from first_slot exclusive: only through
    PTE_SWP_EXCLUSIVE, which only slots referenced once carry; a folio just read into the
    swap cache is no proof (another process's entries may share its slots, #100)."""
    exclusive = bool(pte_swp_exclusive(pte))
    check(not exclusive or all_set(machine.swap.swap_count[first_slot:first_slot + nr_pages] == 1),
          "PTE_SWP_EXCLUSIVE on a shared slot %s", int(pte_swp_offset(pte)))
    return exclusive


def do_swap_page(machine: Machine, mm: MM, vma: VMA, addr: int, write_fault: bool, order: int = 0) -> str:
    """Map the slot's swap-cache folio (a miss reads a fresh folio into the cache: larger than
    order 0 only for a `fault` of order K, alloc_swap_folio): whole if the process's entries
    are its run's (always for a fresh one), else the faulting page alone (#100); writable and
    exclusive only through PTE_SWP_EXCLUSIVE; then folio_free_swap, and a write fault not yet
    satisfied goes on to do_wp_page. Context: a swap PTE maps addr."""
    pte = machine.ptep_get(mm, addr)
    check(is_swap_slot_pte(pte), "do_swap_page on a non-swap PTE")
    check(not write_fault or vma.writable, "write fault in a read-only VMA")
    frames, swap = machine.frames, machine.swap
    slot = int(pte_swp_offset(pte))
    folio = swap.swap_cache.item(slot)
    fresh = folio < 0
    if fresh:
        folio = alloc_swap_folio(machine, mm, vma, addr, pte, order)
        if folio is None:
            return ENOMEM
        nr_pages = frames.folio_nr_pages(folio)
        first = slot & ~(nr_pages - 1)
        frames.page_data[folio:folio + nr_pages] = swap.swap_data[first:first + nr_pages]
        swap_cache_add_folio(machine, folio, first)
    else:
        folio_ref_add(machine, folio, 1)  # the lookup's reference, the mapping's from here on
    page_idx = slot - frames.folio_swap.item(folio)
    check(not frames.page_anon_exclusive[folio + page_idx], "swap-cache page %s is exclusive", folio + page_idx)
    whole = fresh or (frames.folio_order.item(folio) > 0
                      and swap_folio_mapped_whole(machine, mm, vma, addr, pte, folio))
    nr_pages = frames.folio_nr_pages(folio) if whole else 1
    start, first_page = (addr - (page_idx << PAGE_SHIFT), folio) if whole else (addr, folio + page_idx)
    first_slot = slot - ((addr - start) >> PAGE_SHIFT)
    exclusive = swapin_maps_exclusive(machine, pte, first_slot, nr_pages, fresh)
    entry = mk_pte(first_page, vma)
    if pte_swp_uffd_wp(pte):
        entry = pte_mkuffd_wp(entry)
    writable = exclusive and vma.writable and not userfaultfd_pte_wp(vma, entry)
    if writable:
        entry = pte_mkwrite(entry)
        if write_fault:
            entry = pte_mkdirty(entry)
    if nr_pages > 1:
        folio_ref_add(machine, folio, nr_pages - 1)
    if fresh:
        folio_add_new_anon_rmap(machine, folio, mm, vma, start, exclusive=exclusive)
    else:
        folios_add_anon_rmap_ptes(machine, np.array([folio], np.int64), np.array([first_page], np.int64),
                                  np.array([nr_pages], np.int64), mm, np.array([exclusive]))
    folio_put_swap(machine, folio, None if whole else page_idx)
    mm.rss_swap -= nr_pages
    mm.rss_anon += nr_pages
    machine.set_ptes(mm, start, entry, nr_pages)
    folio_free_swap(machine, folio)  # should_try_to_free_swap: always for SWP_SYNCHRONOUS_IO
    if write_fault and not writable:
        return do_wp_page(machine, mm, vma, addr, machine.ptep_get(mm, addr), unshare=False)
    return OK


def handle_write_fault(machine: Machine, mm: MM, vma: VMA, addr: int, order: int) -> str:
    """Make addr writable as a user write fault does (order applies to a none entry)."""
    check(vma.writable, "write fault in a read-only VMA")
    haddr = addr & ~(PMD_SIZE - 1)
    pmd = machine.pmdp_get(mm, haddr)
    if pmd_trans_huge(pmd):
        if pte_write(pmd):
            return OK
        if userfaultfd_pte_wp(vma, pmd):  # wp_huge_pmd: userfaultfd_huge_pmd_wp
            return UFFD
        result = huge_memory.do_huge_pmd_wp_page(machine, mm, vma, addr, unshare=False)
        if result != huge_memory.FALLBACK:
            return result
    pte = machine.ptep_get(mm, addr)
    if is_pte_marker(pte):
        return handle_pte_marker(machine, mm, vma, addr, order)
    if pte_none(pte) and vma.file is not None:
        return filemap.do_file_write_fault(machine, mm, vma, addr, order)
    if pte_none(pte):
        return do_anonymous_page(machine, mm, vma, addr, order)
    if is_swap_pte(pte):
        return do_swap_page(machine, mm, vma, addr, write_fault=True, order=order)
    if pte_write(pte):
        return OK
    return do_wp_page(machine, mm, vma, addr, pte, unshare=False)


def pte_marker_clear(machine: Machine, mm: MM, addr: int) -> None:
    """A marker left in a VMA no longer registered is dropped: the entry is none again."""
    check(is_pte_marker(machine.ptep_get(mm, addr)), "pte_marker_clear of a non-marker at %#x", addr)
    machine.ptep_get_and_clear(mm, addr)


def handle_pte_marker(machine: Machine, mm: MM, vma: VMA, addr: int, order: int) -> str:
    """A write fault on a uffd-wp marker (pte_marker_handle_uffd_wp): a registered VMA faults
    as on a none entry (do_pte_missing: an anonymous VMA's fresh page, a file VMA's page-cache
    page or private copy) with the marker's bit, write-protected, and the retried write traps:
    UFFD; in a VMA no longer registered the marker is dropped and the fault is an ordinary one."""
    check(pte_marker_uffd_wp(machine.ptep_get(mm, addr)), "handle_pte_marker without a uffd-wp marker at %#x", addr)
    if not vma.uffd_wp:
        pte_marker_clear(machine, mm, addr)
        return do_anonymous_page(machine, mm, vma, addr, order)
    if vma.file is not None:
        result = filemap.do_file_write_fault(machine, mm, vma, addr, 0, uffd_wp=True)
    else:
        result = do_anonymous_page(machine, mm, vma, addr, 0, uffd_wp=True)
    return UFFD if result == OK else result


def handle_unshare_fault(machine: Machine, mm: MM, vma: VMA, addr: int) -> str:
    """FAULT_FLAG_UNSHARE: make a maybe-shared page exclusive, never writable."""
    if pmd_trans_huge(machine.pmdp_get(mm, addr & ~(PMD_SIZE - 1))):
        result = huge_memory.do_huge_pmd_wp_page(machine, mm, vma, addr, unshare=True)
        if result != huge_memory.FALLBACK:
            return result
    return do_wp_page(machine, mm, vma, addr, machine.ptep_get(mm, addr), unshare=True)


# zap (zap_pte_range, zap_present_ptes, zap_nonpresent_ptes).

def zap_present_ptes(machine: Machine, mm: MM, batches: PteBatches) -> None:
    """Unmap every batch: clear_full_ptes, rmap removal and nr_pages references each; the
    page-cache batches through zap_present_file_ptes (their dirty bits go to the folio)."""
    file = machine.frames.folio_mapping[batches.folio] != 0
    if any_set(file):
        filemap.zap_present_file_ptes(machine, mm, batches.select(file))
        batches = batches.select(~file)
    zap_anon_ptes(machine, mm, batches)


def zap_anon_ptes(machine: Machine, mm: MM, batches: PteBatches) -> None:
    """Clear every batch of anon folios (clear_full_ptes) and drop its rmap, its nr_pages
    references and its MM_ANONPAGES: zap's, and try_to_unmap_one's discard of a lazyfree batch."""
    if len(batches) == 0:
        return
    machine.clear_full_ptes_runs(mm, batches.runs)
    mm.rss_anon -= int(batches.nr_pages.sum())
    folios_remove_rmap_ptes(machine, batches.folio, batches.page, batches.nr_pages, mm)
    free_swap_cache(machine, batches.folio)  # free_pages_and_swap_cache, before the references go
    folios_put_refs(machine, batches.folio, batches.nr_pages)


def zap_zero_page_ptes(machine: Machine, mm: MM, start: int, zero: np.ndarray) -> None:
    """Clear the zero-page entries (zero, per entry from start): no folio, so no rmap,
    reference or RSS (zap_present_ptes with vm_normal_page() NULL)."""
    index = np.flatnonzero(zero).astype(np.int64) + ((start & (PMD_SIZE - 1)) >> PAGE_SHIFT)
    machine.clear_full_ptes_runs(mm, PteRuns(start & ~(PMD_SIZE - 1), index, np.ones(len(index), np.int64)))


def zap_nonpresent_ptes(machine: Machine, mm: MM, batches: SwapBatches) -> None:
    """Drop every swap batch's slot references."""
    machine.clear_full_ptes_runs(mm, batches.runs)
    mm.rss_swap -= int(batches.nr_pages.sum())
    free_swap_and_cache_nr(machine, batches.slots())


def zap_pte_markers(machine: Machine, mm: MM, start: int, index: np.ndarray) -> None:
    """Clear the markers at entries index (ascending) of the PTEs from start."""
    table_addr = start & ~(PMD_SIZE - 1)
    first = (start - table_addr) >> PAGE_SHIFT
    machine.clear_full_ptes_runs(mm, PteRuns(table_addr, first + index, np.ones(len(index), np.int64)))


def zap_pte_range(machine: Machine, mm: MM, vma: VMA, start: int, end: int, drop_markers: bool) -> None:
    """Zap every PTE in [start, end), which lies inside one PMD and one VMA. In a file VMA
    registered for uffd-wp, unless drop_markers (ZAP_FLAG_DROP_MARKER), markers stay and
    every entry of a protected batch gets one (zap_install_uffd_wp_if_needed); an anonymous
    VMA drops its markers (zap_nonpresent_ptes)."""
    if mm.pte_table(start) is None:
        return
    ptes = machine.ptes_get(mm, start, (end - start) >> PAGE_SHIFT)
    if not any_set(ptes):
        return
    keep_markers = vma.file is not None and not drop_markers
    present = pte_present(ptes)
    normal = present & vm_normal_pages(machine, ptes)
    if any_set(normal):
        batches = folio_pte_batch(machine, mm, start, ptes, FPB_ZAP, candidate=normal)
        zap_present_ptes(machine, mm, batches)
        if keep_markers:
            filemap.install_uffd_wp_ptes_if_needed(machine, mm, vma, batches.runs, batches.pte)
    if any_set(present & ~normal):
        zap_zero_page_ptes(machine, mm, start, present & ~normal)
    if any_set(is_swap_slot_pte(ptes)):
        swap_batches = swap_pte_batch(start, ptes)
        zap_nonpresent_ptes(machine, mm, swap_batches)
        if keep_markers:
            filemap.install_uffd_wp_ptes_if_needed(machine, mm, vma, swap_batches.runs, swap_batches.pte)
    markers = is_pte_marker(ptes)
    if any_set(markers) and not keep_markers:
        zap_pte_markers(machine, mm, start, np.flatnonzero(markers))


def unmap_page_range(machine: Machine, mm: MM, vma: VMA, start: int, end: int, drop_markers: bool) -> None:
    """Zap [start, end) of vma: a fully covered PMD block whole, a partial one split first;
    drop_markers: ZAP_FLAG_DROP_MARKER."""
    check(vma.start <= start < end <= vma.end, "zap range leaves the VMA")
    for addr, next_addr, whole_pmd in pmd_ranges(mm, start, end):
        haddr = addr & ~(PMD_SIZE - 1)
        if pmd_trans_huge(machine.pmdp_get(mm, haddr)):
            if whole_pmd:
                huge_memory.zap_huge_pmd(machine, mm, haddr)
                continue
            huge_memory.split_huge_pmd_locked(machine, mm, vma, haddr)
        zap_pte_range(machine, mm, vma, addr, next_addr, drop_markers)


# fork (copy_page_range, copy_pte_range, copy_present_ptes, copy_nonpresent_pte).

def copy_nonpresent_ptes(machine: Machine, dst_mm: MM, dst_vma: VMA, src_mm: MM, batches: SwapBatches) -> None:
    """Share swap batches with the child; exclusive markers are cleared in both, the
    uffd-wp bit in the child unless its VMA is uffd-wp registered."""
    swap_duplicate_nr(machine, batches.slots())
    shared = pte_swp_clear_exclusive(batches.pte)
    was_exclusive = pte_swp_exclusive(batches.pte)
    if any_set(was_exclusive):
        exclusive_runs = PteRuns(batches.runs.addr, batches.runs.index[was_exclusive],
                                 batches.runs.nr_pages[was_exclusive])
        machine.set_ptes_runs(src_mm, exclusive_runs, shared[was_exclusive])
    dst_mm.rss_swap += int(batches.nr_pages.sum())
    if not dst_vma.uffd_wp:  # userfaultfd_wp(dst_vma)
        shared = pte_swp_clear_uffd_wp(shared)
    machine.set_ptes_runs(dst_mm, batches.runs, shared)


def __copy_present_ptes(machine: Machine, dst_mm: MM, dst_vma: VMA, src_mm: MM, batches: PteBatches) -> None:
    """The shared case: write-protect writable batches in the parent, set the child's
    entries old and write-protected from each batch's template (without the uffd-wp bit
    unless the child's VMA is registered)."""
    writable = pte_write(batches.pte)
    if any_set(writable):
        machine.wrprotect_ptes_runs(src_mm, batches.select(writable).runs)
    child = np.where(writable, pte_wrprotect(batches.pte), batches.pte)
    if not dst_vma.uffd_wp:  # userfaultfd_wp(dst_vma)
        child = pte_clear_uffd_wp(child)
    machine.set_ptes_runs(dst_mm, batches.runs, pte_mkold(child))


def copy_zero_page_ptes(machine: Machine, dst_mm: MM, dst_vma: VMA, start: int, ptes: np.ndarray,
                        zero: np.ndarray) -> None:
    """The zero-page entries (zero, per entry of ptes from start) go to the child old, the
    parent's untouched: no folio to reference or dup (copy_present_ptes with page NULL);
    their uffd-wp bits only to a registered child VMA (__copy_present_ptes)."""
    check(not any_set(pte_write(ptes[zero])), "writable zero-page PTE")
    index = np.flatnonzero(zero).astype(np.int64) + ((start & (PMD_SIZE - 1)) >> PAGE_SHIFT)
    entries = pte_mkold(ptes[zero])
    if not dst_vma.uffd_wp:
        entries = pte_clear_uffd_wp(entries)
    machine.set_ptes_runs(dst_mm, PteRuns(start & ~(PMD_SIZE - 1), index, np.ones(len(index), np.int64)), entries)


def copy_present_ptes(machine: Machine, dst_mm: MM, dst_vma: VMA, src_mm: MM, batches: PteBatches) -> BusyPerBatch:
    """Share each batch with the child (folio refs, folios_try_dup_anon_rmap_ptes, entries).
    Returns which batches failed (EBUSY) because the folio may be pinned and a page is
    exclusive; they are left untouched for the page-by-page fallback. Page-cache batches are
    shared with folio_dup_file_rmap_ptes and never fail."""
    file = machine.frames.folio_mapping[batches.folio] != 0
    if any_set(file):
        filemap.copy_present_file_ptes(machine, dst_mm, dst_vma, src_mm, batches.select(file))
        busy = np.zeros(len(batches), bool)
        if not all_set(file):
            busy[~file] = copy_present_ptes(machine, dst_mm, dst_vma, src_mm, batches.select(~file))
        return busy
    folios_ref_add(machine, batches.folio, batches.nr_pages)
    busy = folios_try_dup_anon_rmap_ptes(machine, batches.folio, batches.page, batches.nr_pages,
                                         dst_mm, src_mm)
    folios_put_refs(machine, batches.folio[busy], batches.nr_pages[busy])
    shared = batches.select(~busy)
    dst_mm.rss_anon += int(shared.nr_pages.sum())
    __copy_present_ptes(machine, dst_mm, dst_vma, src_mm, shared)
    return busy


def copy_present_pages(machine: Machine, dst_mm: MM, dst_vma: VMA, addrs: np.ndarray,
                       src_pages: np.ndarray, table_addr: int) -> str:
    """Give the child its own copy of each exclusive page of a maybe-pinned folio, allocated
    in ascending address order (the lowest free frames, as page-by-page copies would get).

    Context: dst_vma is not uffd-wp registered (dup_userfaultfd without
    UFFD_FEATURE_EVENT_FORK reset it), so no copy carries the uffd-wp bit.
    """
    check(not dst_vma.uffd_wp, "fork's child VMA registered with userfaultfd")
    new_folios = machine.frames.folios_alloc_order0(len(src_pages))
    if new_folios is None:
        return ENOMEM
    copy_user_pages(machine, new_folios, src_pages)
    map_new_anon_pages(machine, dst_mm, dst_vma, table_addr, addrs, new_folios, dirty=True)
    return OK


def map_new_anon_pages(machine: Machine, mm: MM, vma: VMA, table_addr: int, addrs: np.ndarray,
                       folios: np.ndarray, dirty: bool) -> None:
    """Map fresh order-0 folios, one per address (ascending, in the PTE table at table_addr),
    exclusive: their rmap, RSS and entries; dirty ones also writable in a writable VMA."""
    check(len(addrs) == len(folios) >= 1, "one fresh folio per address")
    folios_add_new_anon_rmap_order0(machine, folios, mm, vma, addrs)
    mm.rss_anon += len(folios)
    entries = mk_pte(folios.astype(np.uint64), vma)
    if dirty:
        entries = maybe_mkwrite(pte_mkdirty(entries), vma)
    index = (addrs - table_addr) >> PAGE_SHIFT
    machine.set_ptes_runs(mm, PteRuns(table_addr, index, np.ones(len(index), np.int64)), entries)


def split_failed_batches(machine: Machine, batches: PteBatches) -> tuple[PteBatches, np.ndarray, np.ndarray]:
    """The page-by-page fallback for batches whose dup failed: their non-exclusive pages as
    batches of one (shared as usual) and the addresses and pfns of their exclusive pages
    (copied for the child)."""
    pages = batches.pages()
    offsets = pte_offsets_in_batches(batches.nr_pages)
    index = batches.runs.index.repeat(batches.nr_pages) + offsets
    ptes = batches.pte.repeat(batches.nr_pages) + (offsets.astype(np.uint64) << np.uint64(PAGE_SHIFT))
    folios = batches.folios_of_pages()
    exclusive = machine.frames.page_anon_exclusive[pages]
    singles = PteBatches(PteRuns(batches.runs.addr, index[~exclusive], np.ones(int((~exclusive).sum()), np.int64)),
                         folios[~exclusive], pages[~exclusive], ptes[~exclusive])
    addrs = batches.runs.addr + (index[exclusive] << PAGE_SHIFT)
    return singles, addrs, pages[exclusive]


def copy_pte_range(machine: Machine, dst_mm: MM, dst_vma: VMA, src_mm: MM, start: int, end: int) -> str:
    """Copy every PTE of [start, end) (one PMD, one VMA) to the child."""
    if src_mm.pte_table(start) is None:
        return OK
    ptes = machine.ptes_get(src_mm, start, (end - start) >> PAGE_SHIFT)
    if not any_set(ptes):
        return OK
    if any_set(is_swap_slot_pte(ptes)):
        copy_nonpresent_ptes(machine, dst_mm, dst_vma, src_mm, swap_pte_batch(start, ptes))
    markers = pte_marker_uffd_wp(ptes)
    if any_set(markers) and dst_vma.uffd_wp:  # copy_pte_marker: only to a registered VMA
        table_addr = start & ~(PMD_SIZE - 1)
        index = ((start - table_addr) >> PAGE_SHIFT) + np.flatnonzero(markers)
        machine.set_ptes_runs(dst_mm, PteRuns(table_addr, index, np.ones(len(index), np.int64)),
                              np.full(len(index), make_pte_marker(PTE_MARKER_UFFD_WP), np.uint64))
    present = pte_present(ptes)
    normal = present & vm_normal_pages(machine, ptes)
    if any_set(present & ~normal):
        copy_zero_page_ptes(machine, dst_mm, dst_vma, start, ptes, present & ~normal)
    if not any_set(normal):
        return OK
    batches = folio_pte_batch(machine, src_mm, start, ptes, FPB_FORK, candidate=normal)
    failed = copy_present_ptes(machine, dst_mm, dst_vma, src_mm, batches)
    if not any_set(failed):
        return OK
    singles, addrs, exclusive_pages = split_failed_batches(machine, batches.select(failed))
    # The fallback takes each page singly: a page of a batch of one cannot be exclusive here.
    check(not any_set(copy_present_ptes(machine, dst_mm, dst_vma, src_mm, singles)), "non-exclusive page refused")
    return copy_present_pages(machine, dst_mm, dst_vma, addrs, exclusive_pages, batches.runs.addr)


def copy_page_range(machine: Machine, dst_mm: MM, dst_vma: VMA, src_mm: MM, src_vma: VMA) -> str:
    """Copy every mapping of src_vma to the child, PMD by PMD in ascending address order; a
    VMA without an anon_vma (no anon folio ever mapped in it: a file VMA never COWed, or only
    the zero page read) copies nothing (vma_needs_copy)."""
    if not src_vma.anon_vma:
        return OK
    for addr, next_addr, _whole_pmd in pmd_ranges(src_mm, src_vma.start, src_vma.end):
        haddr = addr & ~(PMD_SIZE - 1)
        if pmd_trans_huge(machine.pmdp_get(src_mm, haddr)) \
                and huge_memory.copy_huge_pmd(machine, dst_mm, dst_vma, src_mm, src_vma, haddr) == OK:
            continue  # shared as a PMD; FALLBACK split it and its PTEs are copied below
        result = copy_pte_range(machine, dst_mm, dst_vma, src_mm, addr, next_addr)
        if result != OK:
            return result
    return OK


def fork_copies_bound(machine: Machine, mm: MM) -> int:
    """At most how many pages fork may copy: none unless mm has pinned (then every present page)."""
    return mm.rss_anon if mm.has_pinned else 0

