"""Reclaim to swap (mm/vmscan.c shrink_folio_list) and the rmap walk that unmaps a folio
(mm/rmap.c try_to_unmap, try_to_unmap_one): one PTE and one page at a time."""

from __future__ import annotations

from machine import MM, VMA, Machine, check
from machine.errors import EBUSY, ENOMEM, OK
from machine.pgtable import (
    PAGE_SIZE, PMD_SIZE, pmd_trans_huge, pte_pfn, pte_present, pte_swp_mkexclusive,
    swp_entry_to_pte,
)

from .folio import (
    PageAnonExclusive, folio_maybe_dma_pinned, folio_mapcount, folio_nr_pages, folio_put,
    folio_test_large, page_mapcount,
)
from .huge_memory import split_huge_pmd_locked, split_huge_page_to_list_to_order
from .rmap import folio_remove_rmap_pte, folio_try_share_anon_rmap_pte, rmap_walk_vmas
from .swap import folio_dup_swap, swap_free


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
        swap_free(machine, slot)
        machine.set_pte_at(mm, addr, pteval)
        return EBUSY
    machine.swap.swap_data[slot] = machine.frames.page_data[page]
    mm.rss_anon -= 1
    mm.rss_swap += 1
    swp_pte = swp_entry_to_pte(slot)
    if anon_exclusive:
        swp_pte = pte_swp_mkexclusive(swp_pte)
    machine.set_pte_at(mm, addr, swp_pte)
    folio_remove_rmap_pte(machine, folio, page, mm)
    folio_put(machine, folio)
    return OK


def try_to_unmap(machine: Machine, folio: int) -> str:
    """Unmap folio everywhere into one aligned run of swap slots, walking its lineage.

    Context: folio is an allocated anon folio.
    """
    check(int(machine.frames.page_folio[folio]) == folio and machine.frames.folio_anon[folio],
          f"try_to_unmap of non-folio {folio}")
    order = int(machine.frames.folio_order[folio])
    slot = machine.swap.find_free_slots(order)
    if slot is None:
        return ENOMEM
    result = OK
    for mm, vma, start, end in rmap_walk_vmas(machine, folio):
        result = try_to_unmap_one(machine, folio, mm, vma, start, end, slot)
        if result != OK:
            break
    for unused in range(slot, slot + (1 << order)):
        if machine.swap.swap_count[unused] == 0:
            machine.swap.swap_free_slot(unused)
    return result


def folio_partially_mapped(machine: Machine, folio: int) -> bool:
    """Some page of a large folio is mapped by nothing (model: no partially_mapped flag)."""
    return any(page_mapcount(machine, page) == 0
               for page in range(folio, folio + folio_nr_pages(machine, folio)))


def shrink_folio_list(machine: Machine, folio: int) -> str:
    """Reclaim the folio to swap: refuse pinned or extra-referenced ones; split a large one
    that is partially mapped, or for which swap has no aligned run of slots (the kernel's
    THP_SWPOUT_FALLBACK), and reclaim its mapped pieces one by one."""
    frames = machine.frames
    if folio_maybe_dma_pinned(machine, folio):
        return EBUSY
    if folio_test_large(machine, folio) and int(frames.folio_refcount[folio]) > folio_mapcount(machine, folio):
        return EBUSY
    if folio_test_large(machine, folio) and (folio_partially_mapped(machine, folio)
                                             or folio_alloc_swap_fails(machine, folio)):
        nr_pages = folio_nr_pages(machine, folio)
        result = split_huge_page_to_list_to_order(machine, folio, 0)
        check(result == OK, "reclaim could not split folio %s: %s", folio, result)
        for page in range(folio, folio + nr_pages):
            if frames.is_free(page):
                continue
            result = reclaim_mapped_folio(machine, page)
            if result != OK:
                return result
        return OK
    return reclaim_mapped_folio(machine, folio)


def folio_alloc_swap_fails(machine: Machine, folio: int) -> bool:
    """No naturally aligned run of free slots for the whole folio (folio_alloc_swap)."""
    return machine.swap.find_free_slots(int(machine.frames.folio_order[folio])) is None


def reclaim_mapped_folio(machine: Machine, folio: int) -> str:
    result = try_to_unmap(machine, folio)
    if result == OK:
        check(machine.frames.is_free(folio), "reclaimed folio %s still referenced", folio)
    return result
