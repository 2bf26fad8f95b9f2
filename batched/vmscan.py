"""Reclaim to swap (mm/vmscan.c shrink_folio_list) and the rmap walk that unmaps a folio
(mm/rmap.c try_to_unmap, try_to_unmap_one), batched: each process VMA's PTEs of the
folio are unmapped as batches split into sub-batches of uniform PageAnonExclusive."""

from __future__ import annotations

import numpy as np

from machine import MM, VMA, Machine, all_set, any_set, check
from machine.errors import EAGAIN, EBUSY, ENOMEM, OK
from machine.pgtable import (
    HPAGE_PMD_NR,
    PAGE_SHIFT,
    PMD_SIZE,
    pmd_trans_huge,
    pte_dirty,
    pte_pfn,
    pte_present,
    pte_swp_mkexclusive,
    pte_swp_mkuffd_wp,
    pte_uffd_wp,
    swp_entry_to_pte,
)

from .folio import (
    PageAnonExclusive,
    folio_mapcount,
    folio_maybe_dma_pinned,
    folio_put,
    folio_test_lazyfree,
    folios_put_refs,
    page_mapcount,
)
from .huge_memory import split_huge_page_to_list_to_order, split_huge_pmd_locked
from .internal import FPB_UNMAP, PteBatches, batches_any, folio_pte_batch, split_batches_by
from .memory import zap_anon_ptes
from .rmap import (
    folio_remove_rmap_pmd,
    folio_remove_rmap_pte,
    folio_try_share_anon_rmap_pte,
    folios_remove_rmap_ptes,
    folios_try_share_anon_rmap_ptes,
    rmap_walk_vmas,
)
from .swap import folio_dup_swap, folios_del_from_swap_cache, folios_mapped, swap_cache_add_folio


def unmap_ptes_to_swap(machine: Machine, mm: MM, batches: PteBatches, slot: np.ndarray,
                       exclusive: np.ndarray) -> None:
    """Replace each batch's PTEs by swap PTEs from slot[i] on (PTE_SWP_EXCLUSIVE where
    exclusive[i], PTE_SWP_UFFD_WP where the batch is uffd-wp: folio_pte_batch never batches
    across a change of that bit), copying the data, and drop their rmap and references.

    Context: exclusive batches were already shared by folios_try_share_anon_rmap_ptes.
    """
    if len(batches) == 0:
        return
    machine.get_and_clear_full_ptes_runs(mm, batches.runs)
    pages = batches.pages()
    slots = slot.repeat(batches.nr_pages) + (pages - batches.page.repeat(batches.nr_pages))
    folio_dup_swap(machine, slots)
    machine.swap.swap_data[slots] = machine.frames.page_data[pages]
    nr_pages = int(batches.nr_pages.sum())
    mm.rss_anon -= nr_pages
    mm.rss_swap += nr_pages
    swp_ptes = swp_entry_to_pte(slot.astype(np.uint64))
    swp_ptes = np.where(exclusive, pte_swp_mkexclusive(swp_ptes), swp_ptes)
    swp_ptes = np.where(pte_uffd_wp(batches.pte), pte_swp_mkuffd_wp(swp_ptes), swp_ptes)
    machine.set_ptes_runs(mm, batches.runs, swp_ptes)
    folios_remove_rmap_ptes(machine, batches.folio, batches.page, batches.nr_pages, mm)
    folios_put_refs(machine, batches.folio, batches.nr_pages)


def try_to_unmap_pte(machine: Machine, folio: int, page: int, mm: MM, addr: int, slot: int) -> str:
    """Replace the PTE mapping page at addr by a swap PTE for slot (the small-folio path of
    try_to_unmap_one). EBUSY, changing nothing, if page is exclusive and the folio maybe
    pinned; else OK.

    Context: a present PTE maps page at addr; page belongs to folio.
    """
    pte = machine.ptep_get(mm, addr)
    check(pte_present(pte) and int(pte_pfn(pte)) == page, "try_to_unmap_pte: page %s is not mapped at %#x",
          page, addr)
    frames = machine.frames
    exclusive = PageAnonExclusive(machine, page)
    if exclusive and folio_try_share_anon_rmap_pte(machine, folio, page) == EBUSY:
        return EBUSY
    machine.ptep_get_and_clear(mm, addr)
    machine.swap.swap_count[slot] += 1  # folio_dup_swap
    machine.swap.swap_data[slot] = frames.page_data[page]
    mm.rss_anon -= 1
    mm.rss_swap += 1
    swp_pte = swp_entry_to_pte(slot)
    if exclusive:
        swp_pte = pte_swp_mkexclusive(swp_pte)
    if pte_uffd_wp(pte):
        swp_pte = pte_swp_mkuffd_wp(swp_pte)
    machine.set_pte_at(mm, addr, swp_pte)
    folio_remove_rmap_pte(machine, folio, page, mm)
    folio_put(machine, folio)
    return OK


def folio_unmap_pte_batches(machine: Machine, mm: MM, folio: int, start: int,
                            end: int) -> tuple[np.ndarray, PteBatches] | None:
    """folio's present entries among the PTEs of [start, end) (one table, one VMA), and their
    batches as try_to_unmap_one takes them (folio_unmap_pte_batch: FPB_RESPECT_WRITE);
    None if no entry there maps folio."""
    ptes = machine.ptes_get(mm, start, (end - start) >> PAGE_SHIFT)
    pfns = pte_pfn(ptes).astype(np.int64)
    of_folio = pte_present(ptes) & (pfns >= folio) & (pfns < folio + machine.frames.folio_nr_pages(folio))
    if not any_set(of_folio):
        return None
    return ptes[of_folio], folio_pte_batch(machine, mm, start, ptes, FPB_UNMAP, candidate=of_folio)


def try_to_unmap_one(machine: Machine, folio: int, mm: MM, vma: VMA, start: int, end: int, slot: int) -> str:
    """Turn every mapping of folio in [start, end) of vma into swap PTEs; a PMD block is
    split first. EBUSY when an exclusive sub-batch cannot be shared because the folio may
    be pinned: the sub-batches before it stay converted, it stays as it was. Else OK."""
    haddr = start & ~(PMD_SIZE - 1)
    check(end <= haddr + PMD_SIZE, "a folio's range crosses a PMD")
    pmd = machine.pmdp_get(mm, haddr)
    if pmd_trans_huge(pmd):
        if int(pte_pfn(pmd)) != folio:
            return OK
        split_huge_pmd_locked(machine, mm, vma, haddr)
    nr_pages = machine.frames.folio_nr_pages(folio)
    if nr_pages == 1:
        pte = machine.ptep_get(mm, start)
        if not pte_present(pte) or int(pte_pfn(pte)) != folio:
            return OK
        return try_to_unmap_pte(machine, folio, folio, mm, start, slot)
    found = folio_unmap_pte_batches(machine, mm, folio, start, end)
    if found is None:
        return OK
    batches = found[1]
    sub_batches, exclusive = split_batches_by(batches, machine.frames.page_anon_exclusive[batches.pages()])
    if any_set(exclusive):
        shared = sub_batches.select(exclusive)
        if any_set(folios_try_share_anon_rmap_ptes(machine, shared.folio, shared.page, shared.nr_pages)):
            refused = int(np.argmax(exclusive))
            before = np.arange(len(exclusive)) < refused
            unmap_ptes_to_swap(machine, mm, sub_batches.select(before),
                               slot + (sub_batches.page[before] - folio), exclusive[before])
            # ptep_clear_flush of the page it could not share, then set_pte_at restoring it:
            # its contpte block unfolds (and refolds if the page is the block's last)
            addr = sub_batches.runs.addr + (int(sub_batches.runs.index[refused]) << PAGE_SHIFT)
            machine.set_pte_at(mm, addr, machine.ptep_get_and_clear(mm, addr))
            return EBUSY
    unmap_ptes_to_swap(machine, mm, sub_batches, slot + (sub_batches.page - folio), exclusive)
    return OK


# The lazyfree branch of try_to_unmap_one: a clean folio MADV_FREE made lazyfree is discarded.

def restore_lazyfree_ptes(machine: Machine, mm: MM, batch: PteBatches) -> int:
    """Clear one batch and write it back from the value get_and_clear_ptes gathered
    (set_ptes), as try_to_unmap_one does for a batch it keeps; returns that value."""
    pteval = int(machine.get_and_clear_full_ptes_runs(mm, batch.runs)[0])
    machine.set_ptes_runs(mm, batch.runs, np.array([pteval], np.uint64))
    return pteval


def unmap_huge_pmd_locked(machine: Machine, mm: MM, haddr: int, folio: int) -> str:
    """__discard_anon_folio_pmd_locked: a lazyfree PMD-mapped THP discarded whole if clean
    and not referenced beyond its mappings; EAGAIN (made swap-backed) if dirty, EBUSY (PMD
    restored) if referenced."""
    frames = machine.frames
    pmd = machine.pmdp_get(mm, haddr)
    if pte_dirty(pmd):
        frames.folio_dirty[folio] = True  # folio_set_dirty
    if frames.folio_dirty.item(folio):
        frames.folio_swapbacked[folio] = True
        return EAGAIN
    machine.pmdp_get_and_clear(mm, haddr)
    if frames.folio_refcount.item(folio) != folio_mapcount(machine, folio):
        machine.set_pmd_at(mm, haddr, pmd)
        return EBUSY
    folio_remove_rmap_pmd(machine, folio, mm)
    mm.rss_anon -= HPAGE_PMD_NR
    folio_put(machine, folio)
    return OK


def try_to_unmap_one_lazyfree(machine: Machine, folio: int, mm: MM, vma: VMA, start: int, end: int) -> str:
    """try_to_unmap_one for a lazyfree folio in [start, end) of vma: its PMD block, or its
    PTEs in folio_unmap_pte_batch batches (FPB_RESPECT_WRITE; single entries in a uffd-wp
    VMA), discarded up to the first batch kept: a dirty one (or any, if the folio is dirty)
    is restored and the folio made swap-backed (EAGAIN); with references beyond the
    mappings the first is restored (EBUSY)."""
    haddr = start & ~(PMD_SIZE - 1)
    check(end <= haddr + PMD_SIZE, "a folio's range crosses a PMD")
    pmd = machine.pmdp_get(mm, haddr)
    frames = machine.frames
    if pmd_trans_huge(pmd):
        if int(pte_pfn(pmd)) != folio:
            return OK
        return unmap_huge_pmd_locked(machine, mm, haddr, folio)
    found = folio_unmap_pte_batches(machine, mm, folio, start, end)
    if found is None:
        return OK
    folio_ptes, batches = found
    if vma.uffd_wp:  # userfaultfd_wp(vma): folio_unmap_pte_batch takes one entry at a time
        batches, _ = split_batches_by(batches, np.arange(len(folio_ptes)))
    batch_dirty = batches_any(pte_dirty(folio_ptes), batches.nr_pages)
    if frames.folio_dirty.item(folio):
        batch_dirty[:] = True
    extra_refs = frames.folio_refcount.item(folio) != folio_mapcount(machine, folio)
    stop = 0 if extra_refs or any_set(batch_dirty) else len(batches)
    if not extra_refs and any_set(batch_dirty):
        stop = int(np.argmax(batch_dirty))
    zap_anon_ptes(machine, mm, batches.select(np.arange(len(batches)) < stop))  # discard
    if stop == len(batches):
        return OK
    kept = batches.select(np.arange(len(batches)) == stop)
    if pte_dirty(restore_lazyfree_ptes(machine, mm, kept)):
        frames.folio_dirty[folio] = True  # folio_mark_dirty
    if frames.folio_dirty.item(folio):
        frames.folio_swapbacked[folio] = True
        return EAGAIN
    return EBUSY


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
    discarded instead): a folio outside the swap cache enters it with one aligned run of
    slots, marked dirty (add_to_swap); unmapped everywhere it leaves the cache and is freed;
    on failure only a folio cached before stays cached.

    Context: folio is an allocated anon folio.
    """
    frames = machine.frames
    check(frames.page_folio.item(folio) == folio and frames.folio_anon[folio], "try_to_unmap of non-folio %s", folio)
    if folio_test_lazyfree(machine, folio):
        return try_to_unmap_lazyfree(machine, folio)
    slot = frames.folio_swap.item(folio)
    cached = slot != 0
    if not cached:
        found = machine.swap.find_free_slots(frames.folio_order.item(folio))
        if found is None:
            return ENOMEM
        slot = found
        swap_cache_add_folio(machine, folio, slot)
        frames.folio_dirty[folio] = True  # shrink_folio_list marks it dirty once it has swap
        nr_pages = frames.folio_nr_pages(folio)  # swap_writeout: an all-zero folio goes to the zeromap
        machine.swap.swap_zeromap[slot:slot + nr_pages] = not any_set(frames.page_data[folio:folio + nr_pages])
    result = OK
    for mm, vma, start, end in rmap_walk_vmas(machine, folio):
        result = try_to_unmap_one(machine, folio, mm, vma, start, end, slot)
        if result != OK:
            break
    if result == OK or not cached:
        folios_del_from_swap_cache(machine, np.array([folio], np.int64))
    return result


def folio_partially_mapped(machine: Machine, folio: int) -> bool:
    """Some page of a large folio is mapped by nothing (model: no partially_mapped flag)."""
    pages = np.arange(folio, folio + machine.frames.folio_nr_pages(folio))
    return any_set(page_mapcount(machine, pages) == 0)


def reclaim_split_folio(machine: Machine, folio: int, nr_pages: int, slots: np.ndarray,
                        walk: list[tuple[MM, VMA, int, int]]) -> None:
    """Reclaim the mapped order-0 pieces of a just-split folio, each into its own slot
    (slots[i] for the i-th mapped piece in ascending order), across every mapping of the
    walk taken before the split."""
    pieces = np.arange(folio, folio + nr_pages)
    mapped = pieces[machine.frames.page_folio[pieces] >= 0]  # the split freed unmapped pieces
    machine.swap.swap_zeromap[slots] = machine.frames.page_data[mapped] == 0  # swap_writeout, per piece
    slot_of_piece = np.zeros(nr_pages, np.int64)
    slot_of_piece[mapped - folio] = slots
    for mm, _vma, start, end in walk:
        ptes = machine.ptes_get(mm, start, (end - start) >> PAGE_SHIFT)
        pfns = pte_pfn(ptes).astype(np.int64)
        of_pieces = pte_present(ptes) & (pfns >= folio) & (pfns < folio + nr_pages)
        if not any_set(of_pieces):
            continue
        batches = folio_pte_batch(machine, mm, start, ptes, FPB_UNMAP, candidate=of_pieces)
        check(all_set(batches.nr_pages == 1), "order-0 pieces batched together")
        exclusive = machine.frames.page_anon_exclusive[batches.page]
        busy = folios_try_share_anon_rmap_ptes(machine, batches.folio[exclusive], batches.page[exclusive],
                                               batches.nr_pages[exclusive])
        check(not any_set(busy), "reclaimed piece of an unpinned folio refused sharing")
        unmap_ptes_to_swap(machine, mm, batches, slot_of_piece[batches.page - folio], exclusive)
    check(all_set(machine.frames.page_folio[mapped] < 0), "reclaimed pieces still referenced")


def reclaim_split_swapcache_folio(machine: Machine, folio: int) -> str:
    """A partially mapped swap-cache folio is split (MADV_PAGEOUT's split_folio); each mapped
    piece, keeping its slot, is then unmapped into it and freed, in ascending order (#104)."""
    nr_pages = machine.frames.folio_nr_pages(folio)
    result = split_huge_page_to_list_to_order(machine, folio, 0)
    check(result == OK, "reclaim could not split folio %s: %s", folio, result)
    pieces = np.arange(folio, folio + nr_pages)
    for piece in pieces[folios_mapped(machine, pieces)].tolist():
        result = try_to_unmap(machine, piece)
        check(result == OK and machine.frames.page_folio[piece] < 0, "reclaimed piece %s still referenced", piece)
    return OK


def shrink_folio_list(machine: Machine, folio: int) -> str:
    """Reclaim the folio to swap: refuse pinned or extra-referenced ones; split a large one
    that is partially mapped, or for which swap has no aligned run of slots (the kernel's
    THP_SWPOUT_FALLBACK), and reclaim its mapped pieces, each into its own slot. A lazyfree
    folio skips all of these (they belong to the swap-backed branch) and is discarded."""
    frames = machine.frames
    if folio_test_lazyfree(machine, folio):
        return try_to_unmap(machine, folio)
    order = frames.folio_order.item(folio)
    if folio_maybe_dma_pinned(machine, folio):
        return EBUSY
    cache_refs = frames.folio_nr_pages(folio) if frames.folio_swap.item(folio) else 0
    if order and frames.folio_refcount.item(folio) > folio_mapcount(machine, folio) + cache_refs:
        return EBUSY
    if order and cache_refs and folio_partially_mapped(machine, folio):
        return reclaim_split_swapcache_folio(machine, folio)
    if order and (folio_partially_mapped(machine, folio) or machine.swap.find_free_slots(order) is None):
        nr_pages = frames.folio_nr_pages(folio)
        pages = np.arange(folio, folio + nr_pages)
        # The split maps an all-zero piece to the zero page and frees it: no slot for it.
        mapped_pieces = int(((page_mapcount(machine, pages) > 0) & (frames.page_data[pages] != 0)).sum())
        slots = machine.swap.find_free_slots_order0(mapped_pieces)
        if slots is None:
            return ENOMEM  # the pieces before the one without a slot would be rolled back
        walk = rmap_walk_vmas(machine, folio)
        result = split_huge_page_to_list_to_order(machine, folio, 0)
        check(result == OK, "reclaim could not split folio %s: %s", folio, result)
        reclaim_split_folio(machine, folio, nr_pages, slots, walk)
        return OK
    result = try_to_unmap(machine, folio)
    check(result != EBUSY, "reclaim of an unpinned folio failed to share a page")
    if result == OK:
        check(frames.page_folio[folio] < 0, "reclaimed folio %s still referenced", folio)
    return result
