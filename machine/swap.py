"""One synchronous swap device and its swap cache (SPEC §1, §2.1; docs/model.md, resolution 80)."""

from __future__ import annotations

import numpy as np

from .errors import check

SCAN_CHUNK_SLOTS = 8192
NO_FOLIO = -1  # swap_cache of a slot no folio caches


class SwapSpace:
    """nr_slots swap slots, each with a data word, a count of swap PTEs, the folio the
    swap cache holds for it (its head pfn, NO_FOLIO for none) and the zeromap bit (the
    slot was written as part of an all-zero folio, so the device stores nothing for it).
    A slot is in use while a swap PTE or the swap cache holds it (the kernel's swap count
    and SWAP_HAS_CACHE)."""

    def __init__(self, nr_slots: int) -> None:
        self.nr_slots = nr_slots
        self.swap_data = np.zeros(nr_slots, np.uint64)
        self.swap_count = np.zeros(nr_slots, np.int32)
        self.swap_cache = np.full(nr_slots, NO_FOLIO, np.int64)
        self.swap_zeromap = np.zeros(nr_slots, np.bool_)

    def clone(self) -> SwapSpace:
        other = SwapSpace.__new__(SwapSpace)
        other.nr_slots = self.nr_slots
        other.swap_data = self.swap_data.copy()
        other.swap_count = self.swap_count.copy()
        other.swap_cache = self.swap_cache.copy()
        other.swap_zeromap = self.swap_zeromap.copy()
        return other

    def slots_free(self, start: int = 0, end: int | None = None) -> np.ndarray:
        """Whether each slot in [start, end) is free: no swap PTE and no swap-cache folio."""
        span = slice(start, end)
        return (self.swap_count[span] == 0) & (self.swap_cache[span] == NO_FOLIO)

    def find_free_slots(self, order: int) -> int | None:
        """The lowest naturally aligned run of 2**order free slots (slots_free).

        Slot 0 is never handed out (the kernel keeps the swap header there), so
        a swap PTE is never the all-zero pte_none. Slots carry no reservation: the caller
        must reference them (count > 0 or the swap cache) or leave them free before it asks
        for another run.
        The slots are looked at in chunks from the lowest, so the cost follows the answer.
        """
        nr_slots = 1 << order
        usable = self.nr_slots - self.nr_slots % nr_slots
        chunk = max(SCAN_CHUNK_SLOTS, nr_slots)
        for start in range(0, usable, chunk):
            end = min(start + chunk, usable)
            free_runs: np.ndarray = self.slots_free(start, end)
            if nr_slots > 1:
                free_runs = np.asarray(free_runs.reshape(-1, nr_slots).all(axis=1))
            if start == 0:
                free_runs[0] = False  # slot 0 is the swap header: its swap PTE would read as pte_none
            run = int(free_runs.argmax())
            if free_runs[run]:
                return start + run * nr_slots
        return None

    def find_free_slots_order0(self, nr_slots: int) -> np.ndarray | None:
        """The nr_slots lowest free slots (slot 0 never), ascending: what nr_slots order-0
        requests in a row return when each is referenced before the next; None if too few."""
        free = np.flatnonzero(self.slots_free(1))[:nr_slots] + 1
        return free if len(free) == nr_slots else None

    def swap_free_slot(self, slot: int) -> None:
        """Clear an unreferenced slot's data and zeromap bit (a freed slot's are 0)."""
        check(self.swap_count[slot] == 0, "freeing swap slot %s that is referenced", slot)
        check(self.swap_cache[slot] == NO_FOLIO, "freeing swap slot %s that the swap cache holds", slot)
        self.swap_data[slot] = 0
        self.swap_zeromap[slot] = False
