"""Reclaim to swap (mm/vmscan.c shrink_folio_list) and the rmap walk that unmaps a folio
(mm/rmap.c try_to_unmap, try_to_unmap_one): one PTE and one page at a time."""

from __future__ import annotations

from machine import MM, VMA, Machine, check
from machine.errors import EAGAIN, EBUSY, ENOMEM, OK
from machine.pgtable import (
    HPAGE_PMD_NR, PAGE_SHIFT, PAGE_SIZE, PMD_SIZE, PTE_ADDR_MASK, pmd_trans_huge, pte_dirty,
    pte_mkclean, pte_mkdirty, pte_mkold, pte_mkyoung, pte_pfn, pte_present, pte_swp_mkexclusive, pte_swp_mkuffd_wp,
    pte_uffd_wp, pte_young, swp_entry_to_pte,
)

from .folio import (
    PageAnonExclusive, folio_mark_dirty, folio_maybe_dma_pinned, folio_mapcount, folio_nr_pages, folio_pte_batch,
    folio_put,
    folio_set_swapbacked, folio_test_dirty, folio_test_large, folio_test_lazyfree, page_mapcount,
)
from .huge_memory import split_huge_pmd_locked, split_huge_page_to_list_to_order
from .pgtable import get_and_clear_ptes, set_ptes
from .rmap import folio_remove_rmap_pmd, folio_remove_rmap_pte, folio_try_share_anon_rmap_pte, rmap_walk_vmas
from .swap import (
    folio_dup_swap, folio_mapped, folio_test_swapcache, swap_cache_add_folio, swap_cache_del_folio, swap_slot_put,
)


def try_to_unmap_one(machine: Machine, folio: int, mm: MM, vma: VMA, start: int, end: int,
                     slot: int) -> str:
    """Turn every mapping of folio in [start, end) of vma into a swap PTE, one page at a time.

    A PMD block is split when reached. EBUSY, with that PTE restored, when an exclusive
    page cannot be shared because the folio may be pinned.
    """
    nr_pages = folio_nr_pages(machine, folio)
    addr = start
    while addr < end:
        haddr = addr & ~(PMD_SIZE - 1)
        pmd = machine.pmdp_get(mm, haddr)
        if pmd_trans_huge(pmd):
            if int(pte_pfn(pmd)) != folio:
                addr = haddr + PMD_SIZE
                continue
            split_huge_pmd_locked(machine, mm, vma, haddr)
        pte = machine.ptep_get(mm, addr)
        page = int(pte_pfn(pte))
        if pte_present(pte) and folio <= page < folio + nr_pages:
            result = try_to_unmap_pte(machine, folio, page, mm, addr, slot + page - folio)
            if result != OK:
                return result
        addr += PAGE_SIZE
    return OK


def try_to_unmap_pte(machine: Machine, folio: int, page: int, mm: MM, addr: int, slot: int) -> str:
    """Replace the PTE mapping page at addr by a swap PTE for slot.

    Context: a present PTE maps page at addr; page belongs to folio.
    """
    check(int(pte_pfn(machine.ptep_get(mm, addr))) == page and pte_present(machine.ptep_get(mm, addr)),
          f"try_to_unmap_pte: page {page} is not mapped at {addr:#x}")
    anon_exclusive = PageAnonExclusive(machine, page)
    pteval = machine.ptep_get_and_clear(mm, addr)
    folio_dup_swap(machine, slot)
    if anon_exclusive and folio_try_share_anon_rmap_pte(machine, folio, page) == EBUSY:
        swap_slot_put(machine, slot)
        machine.set_pte_at(mm, addr, pteval)
        return EBUSY
    machine.swap.swap_data[slot] = machine.frames.page_data[page]
    mm.rss_anon -= 1
    mm.rss_swap += 1
    swp_pte = swp_entry_to_pte(slot)
    if anon_exclusive:
        swp_pte = pte_swp_mkexclusive(swp_pte)
    if pte_uffd_wp(pteval):
        swp_pte = pte_swp_mkuffd_wp(swp_pte)
    machine.set_pte_at(mm, addr, swp_pte)
    folio_remove_rmap_pte(machine, folio, page, mm)
    folio_put(machine, folio)
    return OK


# The lazyfree branch of try_to_unmap_one: a clean folio MADV_FREE made lazyfree is discarded.

def folio_unmap_pte_batch(machine: Machine, folio: int, mm: MM, vma: VMA, addr: int) -> int:
    """How many PTEs from addr try_to_unmap_one clears at once: 1 for a small or swap-backed
    folio or in a VMA registered for uffd-wp; else those that map consecutive pages of folio
    in this VMA and PTE table and match but for dirty and young (FPB_RESPECT_WRITE), looked
    at one at a time."""
    if not folio_test_large(machine, folio) or not folio_test_lazyfree(machine, folio):
        return 1
    if vma.uffd_wp:  # userfaultfd_wp(vma)
        return 1
    end_addr = min((addr & ~(PMD_SIZE - 1)) + PMD_SIZE, vma.end)
    return folio_pte_batch(machine, mm, folio, addr, end_addr, pte_unmap_batch_bits)


def pte_unmap_batch_bits(pte: int) -> int:
    """What folio_unmap_pte_batch compares: the entry without dirty, young and pfn (write kept)."""
    return int(pte_mkold(pte_mkclean(pte))) & ~PTE_ADDR_MASK


def try_to_unmap_lazyfree_ptes(machine: Machine, folio: int, mm: MM, addr: int, nr_pages: int) -> str:
    """Clear nr_pages PTEs of a lazyfree folio from addr (get_and_clear_ptes, one entry at a
    time), gathering dirty and young; discard them if the folio is still clean and nothing but mappings holds it.
    A dirty folio has every entry restored from the gathered value (set_ptes) and becomes
    swap-backed again: EAGAIN. An extra reference restores them too: EBUSY."""
    cleared = get_and_clear_ptes(machine, mm, addr, nr_pages)
    pteval = cleared[0]
    for pte in cleared[1:]:
        if pte_dirty(pte):
            pteval = pte_mkdirty(pteval)
        if pte_young(pte):
            pteval = pte_mkyoung(pteval)
    if pte_dirty(pteval):
        folio_mark_dirty(machine, folio)
    result = OK
    if folio_test_dirty(machine, folio):
        folio_set_swapbacked(machine, folio)
        result = EAGAIN
    elif int(machine.frames.folio_refcount[folio]) != folio_mapcount(machine, folio):
        result = EBUSY  # model: no isolation reference, so the kernel's 1 + map_count is map_count
    if result != OK:
        set_ptes(machine, mm, addr, pteval, nr_pages)
        return result
    mm.rss_anon -= nr_pages
    page = int(pte_pfn(pteval))
    for i in range(nr_pages):
        folio_remove_rmap_pte(machine, folio, page + i, mm)
        folio_put(machine, folio)
    return OK


def unmap_huge_pmd_locked(machine: Machine, mm: MM, haddr: int, folio: int) -> str:
    """__discard_anon_folio_pmd_locked: a lazyfree PMD-mapped THP discarded whole if clean
    and not referenced beyond its mappings; EAGAIN (made swap-backed) if dirty, EBUSY (PMD
    restored) if referenced."""
    pmd = machine.pmdp_get(mm, haddr)
    if pte_dirty(pmd):
        folio_mark_dirty(machine, folio)
    if folio_test_dirty(machine, folio):
        folio_set_swapbacked(machine, folio)
        return EAGAIN
    machine.pmdp_get_and_clear(mm, haddr)
    if int(machine.frames.folio_refcount[folio]) != folio_mapcount(machine, folio):
        machine.set_pmd_at(mm, haddr, pmd)
        return EBUSY
    folio_remove_rmap_pmd(machine, folio, mm)
    mm.rss_anon -= HPAGE_PMD_NR
    folio_put(machine, folio)
    return OK


def try_to_unmap_one_lazyfree(machine: Machine, folio: int, mm: MM, vma: VMA, start: int, end: int) -> str:
    """try_to_unmap_one for a lazyfree folio in [start, end) of vma: its PMD block or its PTEs
    batch by batch (folio_unmap_pte_batch) discarded, until a batch is kept (EAGAIN, EBUSY)."""
    nr_pages = folio_nr_pages(machine, folio)
    addr = start
    while addr < end:
        haddr = addr & ~(PMD_SIZE - 1)
        pmd = machine.pmdp_get(mm, haddr)
        if pmd_trans_huge(pmd):
            if int(pte_pfn(pmd)) == folio:
                return unmap_huge_pmd_locked(machine, mm, haddr, folio)
            addr = haddr + PMD_SIZE
            continue
        pte = machine.ptep_get(mm, addr)
        page = int(pte_pfn(pte))
        if pte_present(pte) and folio <= page < folio + nr_pages:
            batch = folio_unmap_pte_batch(machine, folio, mm, vma, addr)
            result = try_to_unmap_lazyfree_ptes(machine, folio, mm, addr, batch)
            if result != OK:
                return result
            addr += batch << PAGE_SHIFT
            continue
        addr += PAGE_SIZE
    return OK


def try_to_unmap_lazyfree(machine: Machine, folio: int) -> str:
    """try_to_unmap of a lazyfree folio: no swap slots, each mapping discarded in walk order
    until one is kept; the folio is freed when the last goes."""
    for mm, vma, start, end in rmap_walk_vmas(machine, folio):
        result = try_to_unmap_one_lazyfree(machine, folio, mm, vma, start, end)
        if result != OK:
            return result
    return OK


def try_to_unmap(machine: Machine, folio: int) -> str:
    """Unmap folio everywhere into its swap slots, walking its lineage (a lazyfree folio is
    discarded instead). A folio not yet in the swap cache is added with one aligned run of
    slots and marked dirty (add_to_swap); unmapped everywhere, it leaves the cache and is
    freed (pageout and __remove_mapping); on failure a folio the cache held before stays
    there, one added here leaves it again (model: try_to_unmap takes the slots itself).

    Context: folio is an allocated anon folio.
    """
    check(int(machine.frames.page_folio[folio]) == folio and machine.frames.folio_anon[folio],
          f"try_to_unmap of non-folio {folio}")
    if folio_test_lazyfree(machine, folio):
        check(not folio_test_swapcache(machine, folio), "lazyfree folio %s in the swap cache", folio)
        return try_to_unmap_lazyfree(machine, folio)
    cached = folio_test_swapcache(machine, folio)
    if cached:
        slot = int(machine.frames.folio_swap[folio])  # shrink_folio_list: the slots it has
    else:
        found = machine.swap.find_free_slots(int(machine.frames.folio_order[folio]))
        if found is None:
            return ENOMEM
        slot = found
        swap_cache_add_folio(machine, folio, slot)
        machine.frames.folio_dirty[folio] = True  # shrink_folio_list marks it dirty once it has swap
        swap_zeromap_folio_set(machine, folio, slot)
    result = OK
    for mm, vma, start, end in rmap_walk_vmas(machine, folio):
        result = try_to_unmap_one(machine, folio, mm, vma, start, end, slot)
        if result != OK:
            break
    if result == OK or not cached:
        swap_cache_del_folio(machine, folio)  # frees the folio once unmapped everywhere
    return result


def swap_zeromap_folio_set(machine: Machine, folio: int, slot: int) -> None:
    """swap_writeout: a folio whose pages are all zero is not written, its slots marked in the
    zeromap; any other clears their bits (is_folio_zero_filled, one page at a time)."""
    nr_pages = folio_nr_pages(machine, folio)
    zero_filled = all(int(machine.frames.page_data[page]) == 0 for page in range(folio, folio + nr_pages))
    for i in range(nr_pages):
        machine.swap.swap_zeromap[slot + i] = zero_filled


def folio_partially_mapped(machine: Machine, folio: int) -> bool:
    """Some page of a large folio is mapped by nothing (model: no partially_mapped flag)."""
    return any(page_mapcount(machine, page) == 0
               for page in range(folio, folio + folio_nr_pages(machine, folio)))


def shrink_folio_list(machine: Machine, folio: int) -> str:
    """Reclaim the folio to swap: refuse pinned or extra-referenced ones; split a large one
    that is partially mapped, or for which swap has no aligned run of slots (the kernel's
    THP_SWPOUT_FALLBACK), and reclaim its mapped pieces one by one. A lazyfree folio skips
    all of these (they belong to the swap-backed branch) and is discarded."""
    frames = machine.frames
    if folio_test_lazyfree(machine, folio):
        return try_to_unmap(machine, folio)
    if folio_maybe_dma_pinned(machine, folio):
        return EBUSY
    cache_refs = folio_nr_pages(machine, folio) if folio_test_swapcache(machine, folio) else 0
    expected_refs = folio_mapcount(machine, folio) + cache_refs  # folio_expected_ref_count
    if folio_test_large(machine, folio) and int(frames.folio_refcount[folio]) > expected_refs:
        return EBUSY
    if folio_test_large(machine, folio) and (folio_partially_mapped(machine, folio)
                                             or (not cache_refs and folio_alloc_swap_fails(machine, folio))):
        nr_pages = folio_nr_pages(machine, folio)
        result = split_huge_page_to_list_to_order(machine, folio, 0)
        check(result == OK, "reclaim could not split folio %s: %s", folio, result)
        for page in range(folio, folio + nr_pages):
            if frames.is_free(page) or not folio_mapped(machine, page):
                continue  # freed, or an unmapped piece the swap cache keeps: not in the walk
            result = reclaim_mapped_folio(machine, page)
            if result != OK:
                return result
        return OK
    return reclaim_mapped_folio(machine, folio)


def folio_alloc_swap_fails(machine: Machine, folio: int) -> bool:
    """No naturally aligned run of free slots for the whole folio (folio_alloc_swap)."""
    return machine.swap.find_free_slots(int(machine.frames.folio_order[folio])) is None


def reclaim_mapped_folio(machine: Machine, folio: int) -> str:
    """try_to_unmap; a folio unmapped everywhere is freed."""
    result = try_to_unmap(machine, folio)
    if result == OK:
        check(machine.frames.is_free(folio), "reclaimed folio %s still referenced", folio)
    return result
