"""MADV_FREE (mm/madvise.c madvise_free_single_vma, madvise_free_pte_range; mm/huge_memory.c
madvise_free_huge_pmd) and MADV_PAGEOUT's walk of a PTE-mapped large anon folio
(madvise_cold_or_pageout_pte_range), batched: the PTEs of a table are batched at once with
folio_pte_batch (FPB_MERGE_YOUNG_DIRTY ignores dirty, write and young), and the folios
done are made old, clean and lazyfree together; the batches are found again only after a
large folio the range covers in part was split."""

from __future__ import annotations

import numpy as np

from machine import MM, VMA, Machine, any_set, check
from machine.errors import EINVAL, ENOMEM, OK
from machine.pgtable import (
    PAGE_SHIFT,
    PMD_SIZE,
    is_swap_slot_pte,
    pmd_trans_huge,
    pte_dirty,
    pte_mkclean,
    pte_mkold,
    pte_pfn,
    pte_present,
    pte_young,
)

from .folio import (
    folio_maybe_mapped_shared,
    folio_test_lazyfree,
    folios_mark_lazyfree,
    is_huge_zero_pmd,
    vm_normal_pages,
)
from .huge_memory import split_huge_page_to_list_to_order
from .internal import FPB_MADVISE, FPB_ZAP, PteBatches, folio_pte_batch, swap_pte_batch
from .memory import pmd_ranges
from .rmap import rmap_walk_vmas
from .swap import folios_free_swap, folios_mapped, free_swap_and_cache_nr
from .vmscan import reclaim_split_folio, shrink_folio_list


def madvise_free(machine: Machine, mm: MM, start: int, length: int) -> str:
    """MADV_FREE of [start, start + length), VMA by VMA; ENOMEM if the range had a hole (the
    VMAs in it are still done, as madvise_walk_vmas goes on after a hole)."""
    end = start + length
    covered = mm.vmas_cover(start, end)
    for vma in mm.vmas_intersecting(start, end):
        if vma.file is not None:
            return EINVAL  # madvise_free_single_vma: !vma_is_anonymous; the walk stops there
        madvise_free_single_vma(machine, mm, vma, max(vma.start, start), min(vma.end, end))
    return OK if covered else ENOMEM


def madvise_free_single_vma(machine: Machine, mm: MM, vma: VMA, start: int, end: int) -> None:
    """Walk [start, end) of vma PMD by PMD: a PMD block through madvise_free_huge_pmd, PTE
    tables through madvise_free_pte_range."""
    check(vma.start <= start < end <= vma.end, "MADV_FREE range leaves the VMA")
    for addr, next_addr, whole_pmd in pmd_ranges(mm, start, end):
        haddr = addr & ~(PMD_SIZE - 1)
        if pmd_trans_huge(machine.pmdp_get(mm, haddr)):
            if madvise_free_huge_pmd(machine, mm, haddr, whole_pmd):
                continue
            if pmd_trans_huge(machine.pmdp_get(mm, haddr)):
                continue  # shared, or the split failed: pte_offset_map_lock finds no PTE table
        madvise_free_pte_range(machine, mm, addr, next_addr)


def madvise_free_huge_pmd(machine: Machine, mm: MM, haddr: int, whole_pmd: bool) -> bool:
    """A PMD-mapped THP: skipped if maybe mapped shared; split (to order 0) if the range covers
    only part of it; else its PMD made old and clean and the folio lazyfree. Returns whether
    the PMD was handled (False: the caller walks the PTEs the split left, if any)."""
    pmd = machine.pmdp_get(mm, haddr)
    check(pmd_trans_huge(pmd), "madvise_free_huge_pmd without a PMD block at %#x", haddr)
    if is_huge_zero_pmd(machine, pmd):
        return False  # whole or in part, the huge zero PMD is left as it is
    folio = int(pte_pfn(pmd))
    if folio_maybe_mapped_shared(machine, folio):
        return False
    if not whole_pmd:
        split_huge_page_to_list_to_order(machine, folio, 0)  # a pinned folio stays whole
        return False
    machine.frames.folio_dirty[folio] = False
    if pte_young(pmd) or pte_dirty(pmd):
        machine.set_pmd_at(mm, haddr, pte_mkclean(pte_mkold(pmd)))
    folios_mark_lazyfree(machine, np.array([folio]))
    return True


def folios_maybe_mapped_shared(machine: Machine, folios: np.ndarray) -> np.ndarray:
    """folio_maybe_mapped_shared per folio: mapcount > 1 for a small one; mapped more than
    once and the MM_ID shared bit for a large one."""
    frames = machine.frames
    large = frames.folio_order[folios] > 0
    mapcount = np.where(large, frames.folio_large_mapcount[folios], frames.page_mapcount[folios])
    return (mapcount > 1) & (~large | frames.folio_mm_ids_shared[folios])


def lazyfree_folio_batches(machine: Machine, mm: MM, batches: PteBatches) -> None:
    """Make each batch's folio lazyfree, its entries old and clean (clear_young_dirty_ptes);
    a dirty or swap-cache folio only if mapped exactly once per page (its dirty flag is then
    cleared), a swap-cache one only if it can leave the cache (folio_free_swap).

    Context: each batch maps the whole of its folio (or an order-0 folio).
    """
    if len(batches) == 0:
        return
    frames = machine.frames
    folios = batches.folio
    large = frames.folio_order[folios] > 0
    mapcount = np.where(large, frames.folio_large_mapcount[folios], frames.page_mapcount[folios])
    cached = frames.folio_swap[folios] != 0
    done = ~(frames.folio_dirty[folios] | cached) | (mapcount == batches.nr_pages)
    if any_set(cached & done):  # a swap-cache folio must leave the cache first (folio_free_swap)
        done[cached & done] = folios_free_swap(machine, folios[cached & done])
    chosen = batches.select(done)
    if len(chosen) == 0:
        return
    frames.folio_dirty[chosen.folio] = False
    machine.clear_young_dirty_ptes_runs(mm, chosen.runs)
    folios_mark_lazyfree(machine, chosen.folio)


def madvise_free_pte_range(machine: Machine, mm: MM, start: int, end: int) -> None:
    """MADV_FREE of the PTEs in [start, end), inside one PMD and one VMA: swap entries are
    freed; a large folio the range covers only part of is split (unless maybe mapped shared,
    or pinned); every other folio goes through lazyfree_folio_batches."""
    if mm.pte_table(start) is None:
        return
    ptes = machine.ptes_get(mm, start, (end - start) >> PAGE_SHIFT)
    if any_set(is_swap_slot_pte(ptes)):  # a uffd-wp marker stays (madvise_free_pte_range skips it)
        swaps = swap_pte_batch(start, ptes)
        machine.clear_full_ptes_runs(mm, swaps.runs)
        mm.rss_swap -= int(swaps.nr_pages.sum())
        free_swap_and_cache_nr(machine, swaps.slots())
    frames = machine.frames
    addr = start
    while addr < end:
        ptes = machine.ptes_get(mm, addr, (end - addr) >> PAGE_SHIFT)
        normal = pte_present(ptes) & vm_normal_pages(machine, ptes)  # the zero page is skipped
        if not any_set(normal):
            return
        batches = folio_pte_batch(machine, mm, addr, ptes, FPB_ZAP, candidate=normal)
        partial = batches.nr_pages < (1 << frames.folio_order[batches.folio].astype(np.int64))
        shared = np.zeros(len(batches), bool)
        if any_set(partial):
            shared[partial] = folios_maybe_mapped_shared(machine, batches.folio[partial])
        to_split = np.flatnonzero(partial & ~shared)
        if len(to_split) == 0:
            lazyfree_folio_batches(machine, mm, batches.select(~partial))
            return
        first = int(to_split[0])
        lazyfree_folio_batches(machine, mm, batches.select(~partial & (np.arange(len(batches)) < first)))
        batch_addr = batches.runs.addr + (int(batches.runs.index[first]) << PAGE_SHIFT)
        if split_huge_page_to_list_to_order(machine, int(batches.folio[first]), 0) == OK:
            addr = batch_addr  # the same entries again, now mapping order-0 folios
        else:
            addr = batch_addr + (int(batches.nr_pages[first]) << PAGE_SHIFT)


def madvise_folio_pte_batch(machine: Machine, mm: MM, start: int, ptes: np.ndarray,
                            of_folio: np.ndarray) -> PteBatches:
    """The batches of the entries of_folio selects among ptes (from start, one VMA and PMD), as
    MADV_PAGEOUT's walk takes them (folio_pte_batch_flags with FPB_MERGE_YOUNG_DIRTY: dirty,
    write and young ignored; uffd-wp and every other bit compared)."""
    return folio_pte_batch(machine, mm, start, ptes, FPB_MADVISE, candidate=of_folio)


def madvise_pageout_folio(machine: Machine, mm: MM, folio: int) -> str:
    """MADV_PAGEOUT of the entries where mm maps pages of a PTE-mapped large anon folio
    (madvise_cold_or_pageout_pte_range): one batch covering the folio reclaims it as it is;
    a shorter batch skips it if maybe mapped shared, else splits it to order 0 (a refused
    split: its result) and reclaims every piece still mapped (the all-zero ones went to the
    zero page), in address order. ENOMEM (no slot for a piece) asks the caller to roll back.

    Context: folio is a large anon folio mm maps with PTEs.
    """
    frames = machine.frames
    nr_pages = frames.folio_nr_pages(folio)
    walk = [(walk_mm, vma, start, end) for walk_mm, vma, start, end in rmap_walk_vmas(machine, folio)
            if walk_mm is mm]
    short = False
    for _mm, _vma, start, end in walk:
        ptes = machine.ptes_get(mm, start, (end - start) >> PAGE_SHIFT)
        pfns = pte_pfn(ptes).astype(np.int64)
        of_folio = pte_present(ptes) & (pfns >= folio) & (pfns < folio + nr_pages)
        if any_set(of_folio):
            short |= any_set(madvise_folio_pte_batch(machine, mm, start, ptes, of_folio).nr_pages < nr_pages)
    if not short:
        return shrink_folio_list(machine, folio)
    if folio_maybe_mapped_shared(machine, folio):
        return OK
    lazyfree = folio_test_lazyfree(machine, folio)
    cached = frames.folio_swap.item(folio) != 0
    result = split_huge_page_to_list_to_order(machine, folio, 0)
    if result != OK:
        return result
    pieces = np.arange(folio, folio + nr_pages)
    # The split freed unmapped and all-zero pieces, but for those the swap cache keeps (#104).
    mapped = pieces[folios_mapped(machine, pieces)]
    if not lazyfree and not cached:
        slots = machine.swap.find_free_slots_order0(len(mapped))
        if slots is None:
            return ENOMEM
        reclaim_split_folio(machine, folio, nr_pages, slots, walk)
        return OK
    for piece in mapped.tolist():
        piece_result = shrink_folio_list(machine, piece)
        if result == OK:
            result = piece_result
    return result
