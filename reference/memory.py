"""Faults, COW, swap-in, zap and fork's page-table copy, as mm/memory.c: one PTE at a time."""

from __future__ import annotations

from collections.abc import Iterator

from machine import MM, VMA, Machine, check
from machine.errors import EBUSY, ENOMEM, OK, UFFD
from machine.mm import PUD_SIZE
from machine.pgtable import (
    pte_mknoncont,
    CONT_PTE_SIZE, CONT_PTES, HPAGE_PMD_ORDER, PAGE_SHIFT, PAGE_SIZE, PMD_SIZE, PTE_ADDR_MASK, PTE_MARKER_UFFD_WP,
    is_pte_marker, is_swap_pte,
    is_swap_slot_pte, make_pte_marker, pfn_pte, pmd_trans_huge, pte_marker_uffd_wp, pte_clear_uffd_wp,
    pte_mkdirty, pte_mkold, pte_mkuffd_wp, pte_mkwrite, pte_mkyoung, pte_none, pte_present,
    pte_move_swp_offset, pte_swp_clear_exclusive, pte_swp_clear_uffd_wp, pte_swp_exclusive,
    pte_pfn, pte_swp_offset, pte_swp_uffd_wp,
    pte_uffd_wp, pte_write, pte_wrprotect, vm_get_page_prot,
)

from . import filemap, huge_memory
from .folio import (
    PageAnonExclusive, SetPageAnonExclusive, copy_user_page, folio_alloc, folio_get,
    folio_needs_cow_for_dma, folio_pte_batch,
    folio_large_maybe_mapped_shared, folio_nr_pages, folio_put, folio_ref_add, folio_test_large,
    page_folio, vm_normal_page, zero_page_pte,
)
from .pgtable import set_ptes
from .rmap import (
    folio_add_anon_rmap_pte, folio_add_new_anon_rmap, folio_remove_rmap_pte, folio_try_dup_anon_rmap_pte,
)
from machine.swap import NO_FOLIO

from .swap import (
    folio_free_swap, folio_put_swap, folio_test_swapcache, free_swap_and_cache, free_swap_cache, swap_cache_add_folio,
    swap_cache_get_folio, swap_duplicate,
)


def maybe_mkwrite(pte: int, vma: VMA) -> int:
    return pte_mkwrite(pte) if vma.writable else pte


def mk_pte(page: int, vma: VMA) -> int:
    return pfn_pte(page, vm_get_page_prot(vma.writable))


def userfaultfd_pte_wp(vma: VMA, pte: int) -> bool:
    """A write to this present entry (PTE or PMD) must be reported to userfaultfd."""
    return vma.uffd_wp and bool(pte_uffd_wp(pte))


# Anonymous faults (do_anonymous_page, alloc_anon_folio).

def do_anonymous_page_read(machine: Machine, mm: MM, vma: VMA, addr: int) -> str:
    """A read fault on a none entry or a uffd-wp marker: map the shared zero page ("Use the
    zero-page for reads"), with no folio, rmap, reference or RSS; in a registered VMA it takes
    the marker's uffd-wp bit (vmf_orig_pte_uffd_wp), in one no longer registered the marker
    is dropped first (pte_marker_handle_uffd_wp: pte_marker_clear, then the fault again).

    Context: nothing but a marker is at addr.
    """
    entry = machine.lookup(mm, addr)[1]
    check(pte_none(entry) or is_pte_marker(entry), "anonymous read fault on a mapped address %#x", addr)
    pte = zero_page_pte(machine, vma)
    if is_pte_marker(entry):
        if vma.uffd_wp and pte_marker_uffd_wp(entry):
            pte = pte_mkuffd_wp(pte)
        else:
            pte_marker_clear(machine, mm, addr)
    machine.set_pte_at(mm, addr, pte)
    return OK


def do_anonymous_read_fault(machine: Machine, mm: MM, vma: VMA, addr: int, order: int) -> str:
    """A read fault on a none entry or a marker of an anonymous VMA with the anon THP sizes up
    to order enabled: the huge zero folio where the PMD size applies (order 9, the aligned
    2 MiB inside vma with no PMD block and all 512 entries none: __handle_mm_fault,
    create_huge_pmd, do_huge_pmd_anonymous_page), else the zero page (do_anonymous_page
    uses no mTHP size for a read)."""
    if order >= HPAGE_PMD_ORDER and alloc_anon_folio_suitable(machine, mm, vma, addr, HPAGE_PMD_ORDER):
        return huge_memory.do_huge_pmd_anonymous_page_read(machine, mm, vma, addr)
    return do_anonymous_page_read(machine, mm, vma, addr)


def fault_orders(order: int) -> list[int]:
    """The orders a fault of order K tries: K, K-1, ... 0, never 1 (K = 1 acts as 0)."""
    return [candidate for candidate in range(order, -1, -1) if candidate != 1]


def pte_range_none(machine: Machine, mm: MM, addr: int, nr_pages: int) -> bool:
    """All nr_pages PTEs from addr are none, one entry at a time."""
    return all(pte_none(machine.ptep_get(mm, addr + (i << PAGE_SHIFT))) for i in range(nr_pages))


def alloc_anon_folio_suitable(machine: Machine, mm: MM, vma: VMA, addr: int, order: int) -> bool:
    """alloc_anon_folio's test of one order (thp_vma_suitable_order, pte_range_none): the
    aligned range of 2**order pages around addr lies in vma and maps nothing."""
    nr_pages = 1 << order
    start = addr & ~((nr_pages << PAGE_SHIFT) - 1)
    end = start + (nr_pages << PAGE_SHIFT)
    if start < vma.start or end > vma.end:
        return False
    if order == HPAGE_PMD_ORDER and pmd_trans_huge(machine.pmdp_get(mm, start)):
        return False
    return pte_range_none(machine, mm, start, nr_pages)


def do_anonymous_page(machine: Machine, mm: MM, vma: VMA, addr: int, order: int, uffd_wp: bool = False) -> str:
    """A write fault on a none entry (or a uffd-wp marker: uffd_wp, order 0, the new entry
    write-protected with the bit): the largest suitable order K..0 that can be allocated.

    Context: vma is writable; nothing is mapped at addr.
    """
    check(vma.writable, "anonymous write fault in a read-only VMA")
    entry = machine.lookup(mm, addr)[1]
    check(pte_none(entry) or (uffd_wp and pte_marker_uffd_wp(entry)), "anonymous fault on a mapped address %#x", addr)
    if uffd_wp:
        folio = folio_alloc(machine, 0)
        if folio is None:
            return ENOMEM
        map_anon_folio_pte_pf(machine, mm, vma, addr, folio, uffd_wp=True)
        return OK
    for candidate in fault_orders(order):
        if vma.uffd_wp and 0 < candidate < HPAGE_PMD_ORDER:
            continue  # alloc_anon_folio: userfaultfd_armed wants per-page fault fidelity
        if not alloc_anon_folio_suitable(machine, mm, vma, addr, candidate):
            continue
        folio = folio_alloc(machine, candidate)
        if folio is None:
            continue
        if candidate == HPAGE_PMD_ORDER:
            huge_memory.map_anon_folio_pmd(machine, mm, vma, addr & ~(PMD_SIZE - 1), folio)
        else:
            map_anon_folio_pte_pf(machine, mm, vma, addr & ~((PAGE_SIZE << candidate) - 1), folio)
        return OK
    return ENOMEM


def map_anon_folio_pte_nopf(machine: Machine, mm: MM, vma: VMA, addr: int, folio: int, uffd_wp: bool) -> None:
    """Map a fresh folio whole at addr, writable and dirty (uffd_wp: write-protected with the
    bit), every page exclusive (no counters)."""
    nr_pages = folio_nr_pages(machine, folio)
    folio_ref_add(machine, folio, nr_pages - 1)
    folio_add_new_anon_rmap(machine, folio, mm, vma, addr, exclusive=True)
    entry = maybe_mkwrite(pte_mkdirty(mk_pte(folio, vma)), vma)
    if uffd_wp:
        entry = pte_mkuffd_wp(entry)
    set_ptes(machine, mm, addr, pfn_pte(folio, entry), nr_pages)


def map_anon_folio_pte_pf(machine: Machine, mm: MM, vma: VMA, addr: int, folio: int,
                          uffd_wp: bool = False) -> None:
    """map_anon_folio_pte_nopf for a page fault: also count the folio's pages in MM_ANONPAGES."""
    map_anon_folio_pte_nopf(machine, mm, vma, addr, folio, uffd_wp)
    mm.rss_anon += folio_nr_pages(machine, folio)


# Write faults on present read-only entries (do_wp_page).

def wp_can_reuse_anon_folio(machine: Machine, folio: int, mm: MM) -> bool:
    """Whether every reference is one of mm's mappings, so no one else can see the folio; a
    small swap-cache folio first leaves the cache if no swap PTE references it."""
    frames = machine.frames
    if folio_test_large(machine, folio):
        return __wp_can_reuse_large_anon_folio(machine, folio, mm)
    if int(frames.folio_refcount[folio]) > 1 + folio_test_swapcache(machine, folio):
        return False
    folio_free_swap(machine, folio)  # only if no swap PTE references its slot any more
    return int(frames.folio_refcount[folio]) == 1


def __wp_can_reuse_large_anon_folio(machine: Machine, folio: int, mm: MM) -> bool:
    """v6.15: reuse when mapped more than once, only by mm, and all refs are mappings (a
    swap-cache folio first leaves the cache if no swap PTE references it, #103)."""
    frames = machine.frames
    large_mapcount = int(frames.folio_large_mapcount[folio])
    if large_mapcount <= 1:
        return False  # give back a large folio mapped by a single page
    if folio_large_maybe_mapped_shared(machine, folio):
        return False
    folio_free_swap(machine, folio)
    if large_mapcount != int(frames.folio_refcount[folio]):
        return False
    check(mm.mm_id in (int(frames.folio_mm_id[folio, 0]), int(frames.folio_mm_id[folio, 1])),
          "exclusively mapped folio not mapped by the faulting mm")
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
    page = vm_normal_page(machine, pte)
    if page is None:
        return wp_page_copy(machine, mm, vma, addr, pte, unshare)  # the zero page: always copied
    folio = page_folio(machine, page)
    if vma.shared:  # a page-cache page of a shared file mapping: written in place
        check(not unshare, "unshare fault in a shared mapping")
        return filemap.wp_page_shared(machine, mm, vma, addr, pte)
    anon = bool(machine.frames.folio_anon[folio])
    if anon and (PageAnonExclusive(machine, page) or wp_can_reuse_anon_folio(machine, folio, mm)):
        SetPageAnonExclusive(machine, page)
        if unshare:
            return OK
        wp_page_reuse(machine, mm, vma, addr, pte)
        return OK
    return wp_page_copy(machine, mm, vma, addr, pte, unshare)


def wp_page_reuse(machine: Machine, mm: MM, vma: VMA, addr: int, pte: int) -> None:
    """Make the reused page's PTE young, dirty and (in a writable VMA) writable."""
    entry = maybe_mkwrite(pte_mkdirty(pte_mkyoung(pte)), vma)
    machine.ptep_set_access_flags(mm, addr, entry)


def wp_page_copy(machine: Machine, mm: MM, vma: VMA, addr: int, pte: int, unshare: bool) -> str:
    """Copy the page pte maps to a new exclusive order-0 folio, then drop the old mapping.
    A copy of the zero page is a zeroed folio, and counts one more page in MM_ANONPAGES; a
    copy of a private file page moves one page from MM_FILEPAGES to MM_ANONPAGES."""
    old_page = vm_normal_page(machine, pte)
    new_folio = folio_alloc(machine, 0)
    if new_folio is None:
        return ENOMEM
    if old_page is None:
        machine.frames.page_data[new_folio] = 0  # vma_alloc_zeroed_movable_folio
    else:
        copy_user_page(machine, new_folio, old_page)
    folio_add_new_anon_rmap(machine, new_folio, mm, vma, addr, exclusive=True)
    entry = mk_pte(new_folio, vma)
    if not unshare:
        entry = maybe_mkwrite(pte_mkdirty(entry), vma)
    elif pte_uffd_wp(pte):
        entry = pte_mkuffd_wp(entry)
    machine.ptep_get_and_clear(mm, addr)
    machine.set_pte_at(mm, addr, entry)
    if old_page is None:
        mm.rss_anon += 1
        return OK
    old_folio = page_folio(machine, old_page)
    if not machine.frames.folio_anon[old_folio]:  # a private file page COWed
        mm.rss_file -= 1
        mm.rss_anon += 1
    folio_remove_rmap_pte(machine, old_folio, old_page, mm)
    folio_put(machine, old_folio)
    return OK


# Swap-in (do_swap_page): through the swap cache, as zram's SWP_SYNCHRONOUS_IO device does.

def can_swapin_thp(machine: Machine, mm: MM, addr: int, pte: int, order: int) -> bool:
    """The 2**order entries of the aligned range around addr are the swap PTEs of consecutive
    slots with pte's bits (pte_move_swp_offset, swap_pte_batch), whose zeromap bits agree
    (swap_zeromap_batch) and none in the swap cache (non_swapcache_batch); the swap count
    is not asked (#100)."""
    nr_pages = 1 << order
    start = addr & ~((nr_pages << PAGE_SHIFT) - 1)
    first = pte_move_swp_offset(pte, -((addr - start) >> PAGE_SHIFT))
    swap = machine.swap
    zero = []
    for i in range(nr_pages):
        entry = machine.ptep_get(mm, start + (i << PAGE_SHIFT))
        if entry != pte_move_swp_offset(first, i):
            return False
        slot = int(pte_swp_offset(entry))
        if swap.swap_cache[slot] != NO_FOLIO:
            return False
        zero.append(bool(swap.swap_zeromap[slot]))
    return all(zero) or not any(zero)


def swap_folio_orders(machine: Machine, mm: MM, vma: VMA, addr: int, pte: int, order: int) -> list[int]:
    """alloc_swap_folio's orders, highest first: the mTHP orders up to the fault's (below the
    PMD order) whose aligned range lies in vma and whose slot offset is aligned as the address
    is, from the highest that can_swapin_thp on; none in a userfaultfd-armed VMA."""
    if vma.uffd_wp:
        return []
    slot = int(pte_swp_offset(pte))
    orders = []
    for candidate in fault_orders(order):
        nr_pages = 1 << candidate
        start = addr & ~((nr_pages << PAGE_SHIFT) - 1)
        if (0 < candidate < HPAGE_PMD_ORDER and vma.start <= start and start + (nr_pages << PAGE_SHIFT) <= vma.end
                and (addr >> PAGE_SHIFT) % nr_pages == slot % nr_pages):
            orders.append(candidate)
    for index, candidate in enumerate(orders):
        if can_swapin_thp(machine, mm, addr, pte, candidate):
            return orders[index:]
    return []


def alloc_swap_folio(machine: Machine, mm: MM, vma: VMA, addr: int, pte: int, order: int) -> int | None:
    """The folio a swap-cache miss reads into: the highest of swap_folio_orders that can be
    allocated, else order 0 (None: not even that)."""
    for candidate in swap_folio_orders(machine, mm, vma, addr, pte, order):
        folio = folio_alloc(machine, candidate)
        if folio is not None:
            return folio
    return folio_alloc(machine, 0)


def swap_pte_batch_maps_folio(machine: Machine, mm: MM, vma: VMA, addr: int, pte: int, folio: int) -> bool:
    """Whether a swap-in at addr of a large swap-cache folio maps it whole: its range lies in
    the VMA and in addr's PMD, and every one of its entries there is the swap PTE of its slot
    with pte's bits (pte_move_swp_offset, swap_pte_batch == nr)."""
    nr_pages = folio_nr_pages(machine, folio)
    page_idx = int(pte_swp_offset(pte)) - int(machine.frames.folio_swap[folio])
    start = addr - (page_idx << PAGE_SHIFT)
    end = start + (nr_pages << PAGE_SHIFT)
    if start < max(addr & ~(PMD_SIZE - 1), vma.start) or end > min((addr & ~(PMD_SIZE - 1)) + PMD_SIZE, vma.end):
        return False
    first = pte_move_swp_offset(pte, -page_idx)
    return all(machine.ptep_get(mm, start + (i << PAGE_SHIFT)) == pte_move_swp_offset(first, i)
               for i in range(nr_pages))


def do_swap_page(machine: Machine, mm: MM, vma: VMA, addr: int, write_fault: bool, order: int = 0) -> str:
    """Map the swap-cache folio of the slot at addr, reading it on a miss into a fresh folio
    added to the cache (larger than order 0 only for a `fault` of order K: alloc_swap_folio).
    A large folio is mapped whole if this process's entries still are its run's swap PTEs
    (always for a fresh one), else only the faulting page (#100). Writable and exclusive only
    for a PTE_SWP_EXCLUSIVE entry. The cache is then left if no swap PTE still references the
    folio's slots (folio_free_swap); a write fault that did not map the page writable goes on
    to do_wp_page. A uffd-wp swap entry comes back write-protected with the bit.

    Context: a swap PTE maps addr; a write fault happens only in a writable VMA.
    """
    pte = machine.ptep_get(mm, addr)
    check(is_swap_slot_pte(pte), "do_swap_page on a non-swap PTE")
    check(not write_fault or vma.writable, "write fault in a read-only VMA")
    slot = int(pte_swp_offset(pte))
    folio = swap_cache_get_folio(machine, slot)
    fresh = folio is None
    if folio is None:  # swapin_folio: a new folio in the swap cache, read from its slots
        folio = alloc_swap_folio(machine, mm, vma, addr, pte, order)
        if folio is None:
            return ENOMEM
        first_slot = slot - (slot % folio_nr_pages(machine, folio))
        for i in range(folio_nr_pages(machine, folio)):
            machine.frames.page_data[folio + i] = machine.swap.swap_data[first_slot + i]
        swap_cache_add_folio(machine, folio, first_slot)
    else:
        folio_get(machine, folio)  # swap_cache_get_folio's reference becomes the mapping's
    page_idx = slot - int(machine.frames.folio_swap[folio])
    page, start, nr_pages = folio + page_idx, addr, 1
    if folio_test_large(machine, folio) and swap_pte_batch_maps_folio(machine, mm, vma, addr, pte, folio):
        page, start, nr_pages = folio, addr - (page_idx << PAGE_SHIFT), folio_nr_pages(machine, folio)
    check(not fresh or nr_pages == folio_nr_pages(machine, folio), "fresh swap-in folio %s mapped in part", folio)
    check(not PageAnonExclusive(machine, folio + page_idx), "swap-cache page %s is exclusive", folio + page_idx)
    first_slot = slot - ((addr - start) >> PAGE_SHIFT)
    exclusive = bool(pte_swp_exclusive(pte))
    for i in range(nr_pages):
        check(not exclusive or int(machine.swap.swap_count[first_slot + i]) == 1,
              "PTE_SWP_EXCLUSIVE on swap slot %s referenced %s times", first_slot + i,
              machine.swap.swap_count[first_slot + i])
    entry = mk_pte(page, vma)
    if pte_swp_uffd_wp(pte):
        entry = pte_mkuffd_wp(entry)
    # folio_ref_count == 1 cannot hold: the swap cache holds a reference besides ours.
    if exclusive and vma.writable and not userfaultfd_pte_wp(vma, entry):
        entry = pte_mkwrite(entry)
        if write_fault:
            entry = pte_mkdirty(entry)
            write_fault = False  # vmf->flags &= ~FAULT_FLAG_WRITE
    folio_ref_add(machine, folio, nr_pages - 1)
    if fresh:
        folio_add_new_anon_rmap(machine, folio, mm, vma, start, exclusive=exclusive)
    for i in range(nr_pages):
        if not fresh:
            folio_add_anon_rmap_pte(machine, folio, page + i, mm, exclusive=exclusive)
        folio_put_swap(machine, folio, first_slot + i)
    set_ptes(machine, mm, start, entry, nr_pages)
    mm.rss_swap -= nr_pages
    mm.rss_anon += nr_pages
    folio_free_swap(machine, folio)  # should_try_to_free_swap: always, for SWP_SYNCHRONOUS_IO
    if write_fault:
        return do_wp_page(machine, mm, vma, addr, machine.ptep_get(mm, addr), unshare=False)
    return OK


# The fault entry points of the ops.

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
    as on a none entry (do_pte_missing) with the marker's bit on the new entry
    (vmf_orig_pte_uffd_wp), write-protected, and the retried write traps: UFFD. An anonymous
    VMA maps a fresh order-0 page (do_anonymous_page), a file VMA the page-cache page or its
    private copy (do_fault). In a VMA no longer registered the marker is dropped and the
    fault is an ordinary one.

    Context: a uffd-wp marker is at addr.
    """
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
    """FAULT_FLAG_UNSHARE for a R/O pin of a maybe-shared page: reuse or copy, never writable."""
    haddr = addr & ~(PMD_SIZE - 1)
    if pmd_trans_huge(machine.pmdp_get(mm, haddr)):
        result = huge_memory.do_huge_pmd_wp_page(machine, mm, vma, addr, unshare=True)
        if result != huge_memory.FALLBACK:
            return result
    return do_wp_page(machine, mm, vma, addr, machine.ptep_get(mm, addr), unshare=True)


# zap (zap_pte_range, zap_present_pte, zap_nonpresent_pte).

def zap_present_pte(machine: Machine, mm: MM, addr: int) -> int:
    """Unmap one present PTE and drop its folio reference (the zero page has none); returns
    the entry cleared. Context: a present PTE maps addr."""
    pte = machine.ptep_get(mm, addr)
    check(pte_present(pte), "zap_present_pte of a non-present PTE at %#x", addr)
    page = vm_normal_page(machine, pte)
    if page is None:  # the zero page
        return machine.ptep_get_and_clear(mm, addr)
    if machine.frames.folio_mapping[page_folio(machine, page)]:
        return filemap.zap_present_file_pte(machine, mm, addr)
    machine.ptep_get_and_clear(mm, addr)
    folio = page_folio(machine, page)
    mm.rss_anon -= 1
    folio_remove_rmap_pte(machine, folio, page, mm)
    free_swap_cache(machine, folio)  # free_pages_and_swap_cache, before the gathered reference goes
    folio_put(machine, folio)
    return pte


def zap_nonpresent_pte(machine: Machine, mm: MM, vma: VMA, addr: int, drop_markers: bool) -> int | None:
    """Drop one swap PTE's slot reference, or a marker: an anonymous VMA always drops its
    markers, a file VMA only with ZAP_FLAG_DROP_MARKER (zap_nonpresent_ptes). Returns the
    entry cleared, None for a marker kept. Context: a swap PTE or a marker is at addr."""
    if is_pte_marker(machine.ptep_get(mm, addr)):
        if vma.file is not None and not drop_markers:
            return None
        return machine.ptep_get_and_clear(mm, addr)
    check(is_swap_slot_pte(machine.ptep_get(mm, addr)), "zap_nonpresent_pte of a non-swap PTE at %#x", addr)
    pte = machine.ptep_get_and_clear(mm, addr)
    mm.rss_swap -= 1
    free_swap_and_cache(machine, int(pte_swp_offset(pte)))
    return pte


def zap_pte_range(machine: Machine, mm: MM, vma: VMA, start: int, end: int, drop_markers: bool) -> None:
    """Zap every PTE in [start, end), which lies inside one PMD and one VMA; in a file VMA
    registered for uffd-wp each protected entry leaves a marker unless drop_markers
    (zap_install_uffd_wp_if_needed)."""
    if mm.pte_table(start) is None:
        return  # pmd_none: nothing mapped here
    for addr in range(start, end, PAGE_SIZE):
        pte = machine.ptep_get(mm, addr)
        if pte_present(pte):
            pteval: int | None = zap_present_pte(machine, mm, addr)
        elif is_swap_pte(pte):
            pteval = zap_nonpresent_pte(machine, mm, vma, addr, drop_markers)
        else:
            continue
        if pteval is not None and not drop_markers:
            filemap.pte_install_uffd_wp_if_needed(machine, mm, vma, addr, pteval)


def pmd_ranges(machine: Machine, mm: MM, start: int, end: int) -> Iterator[tuple[int, int, bool]]:
    """Split [start, end) at PMD boundaries: (addr, next_addr, whether it is a whole PMD),
    for each PMD entry that maps something. As the kernel's walks, only the PMD tables
    present are looked into, and a pmd_none entry is skipped."""
    for pmd_table in mm.pmd_tables_in(start, end):
        addr = max(start, pmd_table.base)
        table_end = min(end, pmd_table.base + PUD_SIZE)
        while addr < table_end:
            haddr = addr & ~(PMD_SIZE - 1)
            next_addr = min(haddr + PMD_SIZE, table_end)
            if machine.pmdp_get(mm, haddr) != 0:
                yield addr, next_addr, addr == haddr and next_addr == haddr + PMD_SIZE
            addr = next_addr


def unmap_page_range(machine: Machine, mm: MM, vma: VMA, start: int, end: int, drop_markers: bool) -> None:
    """Zap [start, end) of vma: a fully covered PMD block whole, a partial one split first;
    drop_markers: ZAP_FLAG_DROP_MARKER."""
    check(vma.start <= start < end <= vma.end, "zap range leaves the VMA")
    for addr, next_addr, whole_pmd in pmd_ranges(machine, mm, start, end):
        haddr = addr & ~(PMD_SIZE - 1)
        if pmd_trans_huge(machine.pmdp_get(mm, haddr)):
            if whole_pmd:
                huge_memory.zap_huge_pmd(machine, mm, haddr)
                continue
            huge_memory.split_huge_pmd_locked(machine, mm, vma, haddr)
        zap_pte_range(machine, mm, vma, addr, next_addr, drop_markers)


# fork (copy_page_range, copy_present_pte, copy_present_page, copy_nonpresent_pte).

def copy_nonpresent_pte(machine: Machine, dst_mm: MM, dst_vma: VMA, src_mm: MM, addr: int) -> None:
    """Share a swap entry with the child; an exclusive marker is cleared in both, the
    uffd-wp bit in the child unless its VMA is uffd-wp registered.

    Context: a swap PTE maps addr in the parent; the child has nothing there.
    """
    pte = machine.ptep_get(src_mm, addr)
    check(is_swap_slot_pte(pte), "copy_nonpresent_pte of a non-swap PTE at %#x", addr)
    check(pte_none(machine.ptep_get(dst_mm, addr)), "child already maps %#x", addr)
    swap_duplicate(machine, int(pte_swp_offset(pte)))
    if pte_swp_exclusive(pte):
        pte = pte_swp_clear_exclusive(pte)
        machine.set_pte_at(src_mm, addr, pte)
    dst_mm.rss_swap += 1
    if not dst_vma.uffd_wp:  # userfaultfd_wp(dst_vma)
        pte = pte_swp_clear_uffd_wp(pte)
    machine.set_pte_at(dst_mm, addr, pte)


def copy_pte_marker(machine: Machine, dst_mm: MM, dst_vma: VMA, addr: int, pte: int) -> None:
    """The child gets a uffd-wp marker only if its VMA is registered (copy_pte_marker)."""
    if pte_marker_uffd_wp(pte) and dst_vma.uffd_wp:
        machine.set_pte_at(dst_mm, addr, make_pte_marker(PTE_MARKER_UFFD_WP))


def copy_present_page(machine: Machine, dst_mm: MM, dst_vma: VMA, addr: int, src_page: int, src_pte: int) -> str:
    """Give the child its own copy of an exclusive page of a maybe-pinned folio."""
    new_folio = folio_alloc(machine, 0)
    if new_folio is None:
        return ENOMEM
    copy_user_page(machine, new_folio, src_page)
    folio_add_new_anon_rmap(machine, new_folio, dst_mm, dst_vma, addr, exclusive=True)
    dst_mm.rss_anon += 1
    entry = maybe_mkwrite(pte_mkdirty(mk_pte(new_folio, dst_vma)), dst_vma)
    if userfaultfd_pte_wp(dst_vma, src_pte):
        entry = pte_mkuffd_wp(entry)
    machine.set_pte_at(dst_mm, addr, entry)
    return OK


def copy_present_pte(machine: Machine, dst_mm: MM, dst_vma: VMA, src_mm: MM, addr: int,
                     in_batch: bool = False) -> str:
    """Copy one present PTE to the child: share the page, or copy it if it may be pinned.
    in_batch: the entry is one of a batch the kernel copies with wrprotect_ptes and set_ptes
    (copy_present_ptes), so both entries are written raw; copy_pte_range states the blocks.

    Context: a present PTE maps addr in the parent; the child has nothing there.
    """
    pte = machine.ptep_get(src_mm, addr)
    check(pte_present(pte), "copy_present_pte of a non-present PTE at %#x", addr)
    check(pte_none(machine.ptep_get(dst_mm, addr)), "child already maps %#x", addr)
    page = vm_normal_page(machine, pte)
    if page is None:  # the zero page: the entry alone is copied, old (never writable)
        check(not pte_write(pte), "writable zero-page PTE at %#x", addr)
        entry = pte_mkold(pte)
        if not dst_vma.uffd_wp:  # __copy_present_ptes: userfaultfd_wp(dst_vma)
            entry = pte_clear_uffd_wp(entry)
        machine.set_pte_at(dst_mm, addr, entry)
        return OK
    folio = page_folio(machine, page)
    if not machine.frames.folio_anon[folio]:
        filemap.copy_present_file_pte(machine, dst_mm, dst_vma, addr, pte, in_batch)
        return OK
    folio_get(machine, folio)
    if folio_try_dup_anon_rmap_pte(machine, folio, page, dst_mm, src_mm) == EBUSY:
        folio_put(machine, folio)
        return copy_present_page(machine, dst_mm, dst_vma, addr, page, pte)
    dst_mm.rss_anon += 1
    if pte_write(pte):
        if in_batch:   # wrprotect_ptes: the batch's whole blocks stay folded
            machine.set_pte_raw(src_mm, addr, pte_wrprotect(machine.ptep_get_raw(src_mm, addr)))
        else:
            machine.ptep_set_wrprotect(src_mm, addr)
        pte = pte_wrprotect(pte)
    if not dst_vma.uffd_wp:  # userfaultfd_wp(dst_vma)
        pte = pte_clear_uffd_wp(pte)
    if in_batch:   # set_ptes writes its entries without CONT (pte_mknoncont)
        machine.set_pte_raw(dst_mm, addr, pte_mknoncont(pte_mkold(pte)))
    else:
        machine.set_pte_at(dst_mm, addr, pte_mkold(pte))
    return OK


def fork_pte_batch_bits(pte: int) -> int:
    """What fork's batch compares (FPB_RESPECT_DIRTY | FPB_MERGE_WRITE): the entry without
    young, write and pfn (__pte_batch_clear_ignored)."""
    return int(pte_mkold(pte_wrprotect(pte))) & ~PTE_ADDR_MASK


def copy_present_ptes_batch(machine: Machine, src_mm: MM, addr: int, end: int) -> tuple[int, bool]:
    """How many entries from addr the kernel copies as one batch with wrprotect_ptes and
    set_ptes (copy_present_ptes), and whether as a batch: a large folio's folio_pte_batch;
    if its dup is refused (an exclusive page of a maybe-pinned anon folio) the entries up to
    that page go one at a time (copy_pte_range's retry with a preallocated folio, which that
    page's copy consumes); the zero page and a small folio: one (copy_present_pte)."""
    pte = machine.ptep_get(src_mm, addr)
    page = vm_normal_page(machine, pte)
    if page is None:
        return 1, False
    folio = page_folio(machine, page)
    if not folio_test_large(machine, folio):
        return 1, False
    refusable = bool(machine.frames.folio_anon[folio]) and folio_needs_cow_for_dma(machine, src_mm, folio)
    if refusable and PageAnonExclusive(machine, page):
        return 1, False
    nr_pages = folio_pte_batch(machine, src_mm, folio, addr, end, fork_pte_batch_bits)
    if refusable:
        for i in range(nr_pages):
            if PageAnonExclusive(machine, page + i):
                return i + 1, False
    return nr_pages, nr_pages > 1


def copy_batch_blocks(machine: Machine, dst_mm: MM, src_mm: MM, addr: int, nr_pages: int) -> None:
    """The contpte effect of the kernel's batch of nr_pages entries from addr, written raw
    entry by entry: set_ptes into the child folds every block it covers wholly with its first
    pfn a multiple of 16 (contpte_set_ptes); wrprotect_ptes kept the parent's whole blocks folded
    and unfolded the partial ones first (copy_pte_range did that before the batch)."""
    end = addr + (nr_pages << PAGE_SHIFT)
    for block in range(-(-addr // CONT_PTE_SIZE) * CONT_PTE_SIZE, end - CONT_PTE_SIZE + 1, CONT_PTE_SIZE):
        if pte_pfn(machine.ptep_get_raw(dst_mm, block)) % CONT_PTES == 0:
            machine.contpte_mkcont_block(dst_mm, block)


def copy_pte_range(machine: Machine, dst_mm: MM, dst_vma: VMA, src_mm: MM, start: int, end: int) -> str:
    """Copy every PTE of [start, end) (one PMD, one VMA) to the child, one at a time."""
    if src_mm.pte_table(start) is None:
        return OK  # pmd_none: nothing mapped here
    batch_start = batch_end = start
    in_batch = False
    for addr in range(start, end, PAGE_SIZE):
        pte = machine.ptep_get(src_mm, addr)
        if pte_present(pte):
            if addr >= batch_end:
                batch_start = addr
                nr_pages, in_batch = copy_present_ptes_batch(machine, src_mm, addr, end)
                batch_end = addr + (nr_pages << PAGE_SHIFT)
                if in_batch and any(pte_write(machine.ptep_get(src_mm, addr + (i << PAGE_SHIFT)))
                                    for i in range(nr_pages)):
                    machine.contpte_try_unfold_partial(src_mm, addr, nr_pages)   # wrprotect_ptes' first step
            result = copy_present_pte(machine, dst_mm, dst_vma, src_mm, addr, in_batch)
            if result != OK:
                return result
            if in_batch and addr + PAGE_SIZE == batch_end:
                copy_batch_blocks(machine, dst_mm, src_mm, batch_start, (batch_end - batch_start) >> PAGE_SHIFT)
        elif is_pte_marker(pte):
            copy_pte_marker(machine, dst_mm, dst_vma, addr, pte)
        elif is_swap_pte(pte):
            copy_nonpresent_pte(machine, dst_mm, dst_vma, src_mm, addr)
    return OK


def copy_page_range(machine: Machine, dst_mm: MM, dst_vma: VMA, src_mm: MM, src_vma: VMA) -> str:
    """Copy every mapping of src_vma to the child, in ascending address order; a VMA without
    an anon_vma (no anon folio ever mapped in it: a file VMA never COWed, or only the zero
    page read) copies nothing: the child faults (vma_needs_copy)."""
    if not src_vma.anon_vma:
        return OK
    for addr, next_addr, _whole_pmd in pmd_ranges(machine, src_mm, src_vma.start, src_vma.end):
        haddr = addr & ~(PMD_SIZE - 1)
        if pmd_trans_huge(machine.pmdp_get(src_mm, haddr)):
            if huge_memory.copy_huge_pmd(machine, dst_mm, dst_vma, src_mm, src_vma, haddr) == OK:
                continue
        result = copy_pte_range(machine, dst_mm, dst_vma, src_mm, addr, next_addr)
        if result != OK:
            return result
    return OK
