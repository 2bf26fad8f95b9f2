"""Swap slot references (swap_duplicate, free_swap_and_cache_nr) and the swap cache
(mm/swap_state.c), for many slots and folios at once (docs/model.md, resolutions 80 to 86)."""

from __future__ import annotations

import numpy as np

from machine import Machine, all_set, any_set, check
from machine.swap import NO_FOLIO

from .folio import folios_put_refs
from .internal import add_at, distinct


def swap_duplicate_nr(machine: Machine, slots: np.ndarray) -> None:
    """One more swap PTE references each slot (fork)."""
    swap = machine.swap
    check(all_set(swap.swap_count[slots] >= 1), "duplicating free swap slots")
    add_at(swap.swap_count, slots, 1)


def free_swap_and_cache_nr(machine: Machine, slots: np.ndarray) -> None:
    """One swap PTE less references each slot; an unreferenced slot without a swap-cache folio
    is freed (data 0); a swap-cache folio whose slots are all unreferenced and which nothing
    maps is reclaimed (__try_to_reclaim_swap, TTRS_UNMAPPED)."""
    swap = machine.swap
    add_at(swap.swap_count, slots, -1)
    check(all_set(swap.swap_count[slots] >= 0), "swap count underflow")
    unreferenced = slots[swap.swap_count[slots] == 0]
    cached = swap.swap_cache[unreferenced]
    freed = unreferenced[cached == NO_FOLIO]
    swap.swap_data[freed] = 0
    swap.swap_zeromap[freed] = False
    if any_set(cached != NO_FOLIO):
        folios = distinct(cached[cached != NO_FOLIO])
        folios_free_swap(machine, folios[~folios_mapped(machine, folios)])


def folio_dup_swap(machine: Machine, slots: np.ndarray) -> None:
    """try_to_unmap: PTEs of the folio become swap PTEs referencing slots (free or not)."""
    add_at(machine.swap.swap_count, slots, 1)


def folio_put_swap(machine: Machine, folio: int, page_idx: int | None = None) -> None:
    """do_swap_page mapped the swap-cache folio whole (page_idx None) or its page page_idx
    alone: each slot mapped loses the reference of the swap PTE it replaced; the cache still
    holds them."""
    swap = machine.swap
    first = machine.frames.folio_swap.item(folio)
    nr_pages = machine.frames.folio_nr_pages(folio)
    span = slice(first, first + nr_pages) if page_idx is None else slice(first + page_idx, first + page_idx + 1)
    check(first != 0 and all_set(swap.swap_cache[span] == folio), "folio_put_swap: folio %s is not cached", folio)
    check(all_set(swap.swap_count[span] >= 1), "swap slots from %s count underflow", first)
    swap.swap_count[span] -= 1


def slot_put(machine: Machine, slot: int) -> None:
    """try_to_unmap_one's failure: the swap PTE it made is undone (the cache keeps slot)."""
    swap = machine.swap
    check(swap.swap_count[slot] >= 1, "swap slot %s count underflow", slot)
    swap.swap_count[slot] -= 1


# The swap cache.

def swap_cache_add_folio(machine: Machine, folio: int, slot: int) -> None:
    """The folio's run of slots from slot names it, folio->swap = slot, one reference per page."""
    frames, swap = machine.frames, machine.swap
    nr_pages = frames.folio_nr_pages(folio)
    span = slice(slot, slot + nr_pages)
    check(frames.folio_swap[folio] == 0, "folio %s is already in the swap cache", folio)
    check(all_set(swap.swap_cache[span] == NO_FOLIO), "swap slots from %s are already cached", slot)
    swap.swap_cache[span] = folio
    frames.folio_swap[folio] = slot
    frames.folio_refcount[folio] += nr_pages


def folios_del_from_swap_cache(machine: Machine, folios: np.ndarray) -> None:
    """Each folio leaves the swap cache: its unreferenced slots are freed (data 0), the cache's
    references put (a folio whose last goes is freed)."""
    frames, swap = machine.frames, machine.swap
    if len(folios) == 0:
        return
    first = frames.folio_swap[folios]
    check(all_set(first != 0), "folios not in the swap cache")
    nr_pages = np.left_shift(1, frames.folio_order[folios].astype(np.int64))
    slots = np.repeat(first, nr_pages) + np.arange(int(nr_pages.sum())) - np.repeat(np.cumsum(nr_pages) - nr_pages,
                                                                                     nr_pages)
    check(all_set(swap.swap_cache[slots] == np.repeat(folios, nr_pages)), "swap cache and folio->swap disagree")
    swap.swap_cache[slots] = NO_FOLIO
    freed = slots[swap.swap_count[slots] == 0]
    swap.swap_data[freed] = 0
    swap.swap_zeromap[freed] = False
    frames.folio_swap[folios] = 0
    folios_put_refs(machine, folios, nr_pages)


def folios_swapped(machine: Machine, folios: np.ndarray) -> np.ndarray:
    """Per swap-cache folio: does a swap PTE still reference one of its slots?"""
    frames, swap = machine.frames, machine.swap
    first = frames.folio_swap[folios]
    nr_pages = np.left_shift(1, frames.folio_order[folios].astype(np.int64))
    return np.array([any_set(swap.swap_count[s:s + n] > 0) for s, n in zip(first.tolist(), nr_pages.tolist(),
                                                                             strict=True)], bool)


def folios_free_swap(machine: Machine, folios: np.ndarray) -> np.ndarray:
    """folio_free_swap of each folio: one in the swap cache whose slots no swap PTE references
    leaves it, marked dirty. Returns per folio whether it left."""
    folios = np.asarray(folios, np.int64)
    leaves = machine.frames.folio_swap[folios] != 0
    if any_set(leaves):
        leaves[leaves] = ~folios_swapped(machine, folios[leaves])
        machine.frames.folio_dirty[folios[leaves]] = True  # folio_set_dirty (first: the put may free it)
        folios_del_from_swap_cache(machine, folios[leaves])
    return leaves


def folio_free_swap(machine: Machine, folio: int) -> bool:
    return bool(folios_free_swap(machine, np.array([folio], np.int64))[0])


def free_swap_cache(machine: Machine, folios: np.ndarray) -> None:
    """free_pages_and_swap_cache: the swap-cache folios among folios that nothing maps any more
    leave the cache if no swap PTE references them."""
    cached = folios[machine.frames.folio_swap[folios] != 0]
    if len(cached):
        cached = distinct(cached)
        folios_free_swap(machine, cached[~folios_mapped(machine, cached)])


def folios_mapped(machine: Machine, folios: np.ndarray) -> np.ndarray:
    """folio_mapped of each folio: an entire (PMD) mapping, a large mapcount or a mapped page."""
    frames = machine.frames
    small = frames.folio_order[folios] == 0
    mapped = (frames.folio_entire_mapcount[folios] > 0) | (frames.folio_large_mapcount[folios] > 0)
    return np.where(small, frames.page_mapcount[folios] > 0, mapped)
