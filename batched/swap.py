"""Swap slot references (swap_duplicate, free_swap_and_cache_nr), for many slots at once."""

from __future__ import annotations

import numpy as np

from machine import Machine, all_set, check

from .internal import add_at


def swap_duplicate_nr(machine: Machine, slots: np.ndarray) -> None:
    """One more swap PTE references each slot (fork)."""
    swap = machine.swap
    check(all_set(swap.swap_count[slots] >= 1), "duplicating free swap slots")
    add_at(swap.swap_count, slots, 1)


def free_swap_and_cache_nr(machine: Machine, slots: np.ndarray) -> None:
    """One swap PTE less references each slot; slots left unreferenced are freed (data 0)."""
    swap = machine.swap
    add_at(swap.swap_count, slots, -1)
    check(all_set(swap.swap_count[slots] >= 0), "swap count underflow")
    freed = slots[swap.swap_count[slots] == 0]
    swap.swap_data[freed] = 0


def swap_free(machine: Machine, slot: int) -> None:
    """One swap PTE less references slot (swap-in); the last one frees it."""
    swap = machine.swap
    check(swap.swap_count[slot] >= 1, "swap slot %s count underflow", slot)
    swap.swap_count[slot] -= 1
    if swap.swap_count[slot] == 0:
        swap.swap_free_slot(slot)


def folio_dup_swap(machine: Machine, slots: np.ndarray) -> None:
    """try_to_unmap: PTEs of the folio become swap PTEs referencing slots (free or not)."""
    add_at(machine.swap.swap_count, slots, 1)


def swap_free_unused(machine: Machine, slot: int, nr_slots: int) -> None:
    """Free the slots of a run that no swap PTE ended up referencing (data 0)."""
    span = slice(slot, slot + nr_slots)
    unused = machine.swap.swap_count[span] == 0
    machine.swap.swap_data[span][unused] = 0
