"""Swap slot references and the swap cache (mm/swapfile.c, mm/swap_state.c): one slot and
one folio at a time (docs/model.md, resolutions 80 to 86)."""

from __future__ import annotations

from machine import Machine, check
from machine.swap import NO_FOLIO

from .folio import folio_nr_pages, folio_put_refs


def swap_duplicate(machine: Machine, slot: int) -> None:
    """One more swap PTE references slot (fork)."""
    check(machine.swap.swap_count[slot] >= 1, "duplicating free swap slot %s", slot)
    machine.swap.swap_count[slot] += 1


def swap_slot_put(machine: Machine, slot: int) -> None:
    """One swap PTE less references slot; a slot neither referenced nor cached is freed (data 0)."""
    swap = machine.swap
    check(swap.swap_count[slot] >= 1, "swap slot %s count underflow", slot)
    swap.swap_count[slot] -= 1
    if swap.swap_count[slot] == 0 and swap.swap_cache[slot] == NO_FOLIO:
        swap.swap_free_slot(slot)


def folio_dup_swap(machine: Machine, slot: int) -> None:
    """try_to_unmap: a PTE of the folio becomes a swap PTE referencing slot (free or not)."""
    machine.swap.swap_count[slot] += 1


# The swap cache: slot -> folio, folio->swap, and one folio reference per page.

def folio_test_swapcache(machine: Machine, folio: int) -> bool:
    """PG_swapcache: folio->swap names its first slot (0 is never a slot's: the header)."""
    return int(machine.frames.folio_swap[folio]) != 0


def swap_cache_get_folio(machine: Machine, slot: int) -> int | None:
    """The folio the swap cache holds for slot, or None."""
    folio = int(machine.swap.swap_cache[slot])
    return None if folio == NO_FOLIO else folio


def swap_cache_add_folio(machine: Machine, folio: int, slot: int) -> None:
    """__swap_cache_do_add_folio: every slot of the folio's run names it, folio->swap = slot,
    and the cache takes one reference per page. Context: the slots are referenced, uncached."""
    nr_pages = folio_nr_pages(machine, folio)
    check(not folio_test_swapcache(machine, folio), "folio %s is already in the swap cache", folio)
    for i in range(nr_pages):
        check(machine.swap.swap_cache[slot + i] == NO_FOLIO, "swap slot %s is already cached", slot + i)
        machine.swap.swap_cache[slot + i] = folio
    machine.frames.folio_swap[folio] = slot
    machine.frames.folio_refcount[folio] += nr_pages


def swap_cache_del_folio(machine: Machine, folio: int) -> None:
    """swap_cache_del_folio: the folio leaves the swap cache; its slots that no swap PTE
    references are freed (data 0); the cache's references are put (the last frees it)."""
    nr_pages = folio_nr_pages(machine, folio)
    slot = int(machine.frames.folio_swap[folio])
    check(slot != 0, "folio %s is not in the swap cache", folio)
    machine.frames.folio_swap[folio] = 0
    for i in range(nr_pages):
        check(machine.swap.swap_cache[slot + i] == folio, "swap slot %s does not cache folio %s", slot + i, folio)
        machine.swap.swap_cache[slot + i] = NO_FOLIO
        if machine.swap.swap_count[slot + i] == 0:
            machine.swap.swap_free_slot(slot + i)
    folio_put_refs(machine, folio, nr_pages)


def folio_swapped(machine: Machine, folio: int) -> bool:
    """Some slot of the swap-cache folio is still referenced by a swap PTE."""
    slot = int(machine.frames.folio_swap[folio])
    return any(int(machine.swap.swap_count[slot + i]) > 0 for i in range(folio_nr_pages(machine, folio)))


def folio_free_swap(machine: Machine, folio: int) -> bool:
    """folio_free_swap: a swap-cache folio no swap PTE references any more leaves the cache
    and is marked dirty (its data now lives only in memory); False if it cannot."""
    if not folio_test_swapcache(machine, folio) or folio_swapped(machine, folio):
        return False
    machine.frames.folio_dirty[folio] = True  # folio_set_dirty (set first: the put may free it)
    swap_cache_del_folio(machine, folio)
    return True


def folio_put_swap(machine: Machine, folio: int, slot: int) -> None:
    """do_swap_page: the mapped swap PTE's reference on slot is dropped; the swap cache still
    holds the slot. Context: folio caches slot."""
    check(machine.swap.swap_cache[slot] == folio, "folio_put_swap: slot %s does not cache folio %s", slot, folio)
    check(machine.swap.swap_count[slot] >= 1, "swap slot %s count underflow", slot)
    machine.swap.swap_count[slot] -= 1


def free_swap_and_cache(machine: Machine, slot: int) -> None:
    """free_swap_and_cache_nr for one zapped swap PTE: drop its reference; when that was the
    last, a swap-cache folio nothing maps is reclaimed (__try_to_reclaim_swap, TTRS_UNMAPPED),
    a mapped one stays cached."""
    folio = swap_cache_get_folio(machine, slot)
    swap_slot_put(machine, slot)
    if folio is not None and machine.swap.swap_count[slot] == 0 and not folio_mapped(machine, folio):
        folio_free_swap(machine, folio)


def free_swap_cache(machine: Machine, folio: int) -> None:
    """free_swap_cache (zap's free_pages_and_swap_cache): a swap-cache folio no longer mapped
    leaves the cache if no swap PTE references it."""
    if folio_test_swapcache(machine, folio) and not folio_mapped(machine, folio):
        folio_free_swap(machine, folio)


def folio_mapped(machine: Machine, folio: int) -> bool:
    """Some page of the folio is mapped by a PTE, or the folio by a PMD."""
    frames = machine.frames
    return int(frames.folio_entire_mapcount[folio]) > 0 or any(
        int(frames.page_mapcount[page]) > 0 for page in range(folio, folio + folio_nr_pages(machine, folio)))
