"""Swap slot references (swap_duplicate, swap_free): one slot at a time."""

from __future__ import annotations

from machine import Machine, check


def swap_duplicate(machine: Machine, slot: int) -> None:
    """One more swap PTE references slot."""
    check(machine.swap.swap_count[slot] >= 1, "duplicating free swap slot %s", slot)
    machine.swap.swap_count[slot] += 1


def swap_free(machine: Machine, slot: int) -> None:
    """One swap PTE less references slot; the last one frees it (data 0)."""
    check(machine.swap.swap_count[slot] >= 1, "swap slot %s count underflow", slot)
    machine.swap.swap_count[slot] -= 1
    if machine.swap.swap_count[slot] == 0:
        machine.swap.swap_free_slot(slot)


def folio_dup_swap(machine: Machine, slot: int) -> None:
    """try_to_unmap: a PTE of the folio becomes a swap PTE referencing slot (free or not)."""
    machine.swap.swap_count[slot] += 1
