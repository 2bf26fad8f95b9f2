"""try_to_unmap_one for a small folio, as batched/vmscan.py has it, with the exclusive page
shared by the kernel's folio_try_share_anon_rmap_pte (batched/ does it inline)."""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType

from machine import MM, Machine
from machine.pgtable import pte_pfn, pte_present, pte_swp_mkexclusive, swp_entry_to_pte

from . import bridge
from .bridge import EBUSY, HelperLibrary


def try_to_unmap_pte_for(library: HelperLibrary, vmscan: ModuleType) -> Callable[[Machine, int, MM, int, int], bool]:
    """batched's try_to_unmap_pte for the copy whose vmscan module is vmscan, sharing in C."""

    def try_to_unmap_pte(machine: Machine, folio: int, mm: MM, addr: int, slot: int) -> bool:
        """Its one PTE at addr, if it maps folio, becomes a swap PTE for slot. False (EBUSY),
        changing nothing, if the page is exclusive and the folio maybe pinned."""
        pte = machine.ptep_get(mm, addr)
        if not pte_present(pte) or int(pte_pfn(pte)) != folio:
            return True
        frames = machine.frames
        exclusive = bool(frames.page_anon_exclusive[folio])
        if exclusive and bridge.try_share_anon_rmap_ptes(library, machine, folio, folio, 1) == EBUSY:
            return False
        machine.ptep_get_and_clear(mm, addr)
        machine.swap.swap_count[slot] += 1  # folio_dup_swap
        machine.swap.swap_data[slot] = frames.page_data[folio]
        mm.rss_anon -= 1
        mm.rss_swap += 1
        swp_pte = swp_entry_to_pte(slot)
        machine.set_pte_at(mm, addr, pte_swp_mkexclusive(swp_pte) if exclusive else swp_pte)
        vmscan.folio_remove_rmap_pte(machine, folio, folio, mm)
        vmscan.folio_put(machine, folio)
        return True

    return try_to_unmap_pte
