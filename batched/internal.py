"""PTE batching, as mm/internal.h (folio_pte_batch_flags, swap_pte_batch), vectorised.

A batch is a run of PTEs in one PTE table and one VMA mapping consecutive pages
of one folio whose entries match once the caller's ignored bits are cleared.
Batch boundaries for a whole range are found at once: entry i continues the
batch of entry i-1 when both map the same folio with consecutive pfns and
normalise to the same value (or the arm64 hint says entry i-1 is inside a
folded contpte block), so the Python loops run over page tables, not batches.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from machine import MM, Machine, PteRuns, all_set, check
from machine.pgtable import (
    CONT_PTES,
    PAGE_SHIFT,
    PMD_SIZE,
    PTE_ADDR_MASK,
    PTRS_PER_TABLE,
    SWP_OFFSET_MASK,
    is_swap_slot_pte,
    pte_cont,
    pte_mkclean,
    pte_mkold,
    pte_mkwrite,
    pte_pfn,
    pte_present,
    pte_swp_offset,
    pte_write,
    pte_wrprotect,
)

# folio_pte_batch_flags() flags (include/linux/mm.h, 2026).
FPB_RESPECT_DIRTY = 1 << 0
FPB_RESPECT_WRITE = 1 << 2
FPB_MERGE_WRITE = 1 << 3
FPB_MERGE_YOUNG_DIRTY = 1 << 4  # only the template's young and dirty: nothing more compared

# Per caller (kernel-notes §3): zap ignores dirty, write and young; fork respects
# dirty and merges write; try_to_unmap respects write.
FPB_ZAP = 0
FPB_FORK = FPB_RESPECT_DIRTY | FPB_MERGE_WRITE
FPB_UNMAP = FPB_RESPECT_WRITE
FPB_MPROTECT = FPB_RESPECT_WRITE  # mprotect_folio_pte_batch: FPB_RESPECT_SOFT_DIRTY | FPB_RESPECT_WRITE
FPB_MADVISE = FPB_MERGE_YOUNG_DIRTY  # madvise_folio_pte_batch: dirty, write and young ignored


@dataclass(slots=True)  # built per PTE table: a frozen dataclass's __init__ costs three times more
class PteBatches:
    """Batches of one PTE table: runs of entries, and per batch its folio, first page
    (pfn) and the first entry (the template set_ptes advances; merged if asked)."""

    runs: PteRuns
    folio: np.ndarray  # int64 head pfn per batch
    page: np.ndarray   # int64 first pfn per batch
    pte: np.ndarray    # uint64 first entry per batch

    @property
    def nr_pages(self) -> np.ndarray:
        return self.runs.nr_pages

    def __len__(self) -> int:
        return len(self.page)

    def pages(self) -> np.ndarray:
        """Every page of every batch, in address order."""
        return pte_offsets_in_batches(self.runs.nr_pages) + self.page.repeat(self.runs.nr_pages)

    def folios_of_pages(self) -> np.ndarray:
        return self.folio.repeat(self.runs.nr_pages)

    def select(self, mask: np.ndarray) -> PteBatches:
        """The batches where mask holds."""
        return PteBatches(PteRuns(self.runs.addr, self.runs.index[mask], self.runs.nr_pages[mask]),
                          self.folio[mask], self.page[mask], self.pte[mask])


def add_at(array: np.ndarray, indices: np.ndarray, delta) -> None:
    """np.add.at (an index may repeat) with delta in the array's dtype: numpy's fast path
    for ufunc.at needs matching dtypes, and counts are int32."""
    np.add.at(array, indices, np.asarray(delta, array.dtype))


def strictly_ascending(values: np.ndarray) -> bool:
    return len(values) < 2 or all_set(values[1:] > values[:-1])


def distinct(values: np.ndarray) -> np.ndarray:
    """np.unique(values) without its overhead: values themselves when they already ascend."""
    if strictly_ascending(values):
        return values
    ordered = np.sort(values)
    return ordered[np.concatenate(([True], ordered[1:] != ordered[:-1]))]


def totals_by_value(values: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each distinct value once, ascending, with the int64 sum of its counts."""
    counts = np.asarray(counts, np.int64)
    if strictly_ascending(values):
        return values, counts
    order = np.argsort(values, kind="stable")
    ordered = values[order]
    starts = np.flatnonzero(np.concatenate(([True], ordered[1:] != ordered[:-1])))
    return ordered[starts], np.add.reduceat(counts[order], starts)


def pte_offsets_in_batches(nr_pages: np.ndarray) -> np.ndarray:
    """0 .. nr_pages[i]-1 for each batch i, concatenated."""
    if len(nr_pages) == 1:
        return np.arange(int(nr_pages[0]), dtype=np.int64)
    ends = nr_pages.cumsum()
    total = int(ends[-1]) if len(ends) else 0
    return np.arange(total, dtype=np.int64) - (ends - nr_pages).repeat(nr_pages)


def batch_starts(nr_pages: np.ndarray) -> np.ndarray:
    """Index of each batch's first page in the concatenated pages of all batches."""
    return nr_pages.cumsum() - nr_pages


def batches_any(per_page: np.ndarray, nr_pages: np.ndarray) -> np.ndarray:
    """Per batch: does any of its pages have the flag (a segment reduction)."""
    if len(nr_pages) == 0:
        return np.zeros(0, bool)
    return np.logical_or.reduceat(per_page, batch_starts(nr_pages))


def __pte_batch_clear_ignored(ptes: np.ndarray, flags: int) -> np.ndarray:
    """What must match between entries of a batch: dirty unless respected, write unless
    respected and young are cleared (the pfn is compared separately)."""
    if not flags & FPB_RESPECT_DIRTY:
        ptes = pte_mkclean(ptes)
    if not flags & FPB_RESPECT_WRITE:
        ptes = pte_wrprotect(ptes)
    return pte_mkold(ptes) & ~np.uint64(PTE_ADDR_MASK)


# Per entry of a PTE table: is it not the last of its contpte block?
_NOT_LAST_IN_BLOCK = (np.arange(PTRS_PER_TABLE) + 1) % CONT_PTES != 0


def pte_batch_hint(ptes: np.ndarray, first: int) -> np.ndarray:
    """arm64: an entry of a folded contpte block vouches for the rest of its block, so the
    next entry continues the batch without being compared (per entry of ptes, which start
    at entry first of their table: does the entry after it continue from it?)."""
    return pte_cont(ptes) & _NOT_LAST_IN_BLOCK[first:first + len(ptes)]


def folio_pte_batch(machine: Machine, mm: MM, addr: int, ptes: np.ndarray, flags: int,
                    candidate: np.ndarray | None = None) -> PteBatches:
    """All batches of present entries in ptes, the entries of mm's PTE table from addr as
    the caller read them, inside one VMA (so no batch crosses a table or a VMA end); a
    batch never passes its folio's last page. candidate optionally restricts which present
    entries are batched. (mm names the table, as the kernel's ptep does; the kernel's own
    C, under kernel-c, reads it in place.)
    """
    check(len(ptes) >= 1, "folio_pte_batch of no entries")
    table_addr = addr & ~(PMD_SIZE - 1)
    first = (addr - table_addr) >> PAGE_SHIFT
    check(first + len(ptes) <= 512, "folio_pte_batch range crosses a PTE table")
    present = pte_present(ptes)
    if candidate is not None:
        present &= candidate
    pfns = pte_pfn(ptes).astype(np.int64)
    frames = machine.frames
    safe_pfns = np.where(present, pfns, 0)
    folios = np.where(present, frames.page_folio[safe_pfns], -1)
    check(all_set(folios[present] >= 0), "a present PTE maps a free frame")
    expected = __pte_batch_clear_ignored(ptes, flags)
    continues = np.zeros(len(ptes), bool)
    same_folio = (folios[1:] == folios[:-1]) & present[1:] & present[:-1]
    consecutive = pfns[1:] == pfns[:-1] + 1
    matches = expected[1:] == expected[:-1]
    hinted = pte_batch_hint(ptes[:-1], first)
    continues[1:] = same_folio & consecutive & (matches | hinted)
    batch_start = present & ~continues
    starts = np.flatnonzero(batch_start)
    run_ids = batch_start.cumsum() - 1
    nr_pages = np.bincount(run_ids[present], minlength=len(starts)).astype(np.int64)
    templates = ptes[starts].copy()
    if flags & FPB_MERGE_WRITE and len(starts):
        any_writable = batches_any(pte_write(ptes[present]), nr_pages)
        templates = np.where(any_writable, pte_mkwrite(templates), templates)
    return PteBatches(PteRuns(table_addr, starts + first, nr_pages), folios[starts], pfns[starts], templates)


def split_batches_by(batches: PteBatches, per_page: np.ndarray) -> tuple[PteBatches, np.ndarray]:
    """Split batches into sub-batches where per_page (one flag per page of the batches,
    in order) changes; returns the sub-batches and each one's flag."""
    nr_pages = batches.nr_pages
    if len(nr_pages) == 0:
        return batches, np.zeros(0, bool)
    if len(nr_pages) == 1 and all_set(per_page == per_page[0]):  # one uniform batch: nothing to split
        return batches, per_page[:1].copy()
    offsets = pte_offsets_in_batches(nr_pages)
    new_start = offsets == 0
    new_start[1:] |= per_page[1:] != per_page[:-1]
    starts = np.flatnonzero(new_start)
    sub_nr_pages = np.diff(np.append(starts, len(per_page))).astype(np.int64)
    owner = np.arange(len(nr_pages)).repeat(nr_pages)[starts]
    sub_offsets = offsets[starts].astype(np.uint64)
    sub = PteBatches(PteRuns(batches.runs.addr, batches.runs.index[owner] + offsets[starts], sub_nr_pages),
                     batches.folio[owner], batches.page[owner] + offsets[starts],
                     batches.pte[owner] + (sub_offsets << np.uint64(PAGE_SHIFT)))
    return sub, per_page[starts]


@dataclass(slots=True)  # built per PTE table: a frozen dataclass's __init__ costs three times more
class SwapBatches:
    """Runs of swap PTEs with consecutive slots and identical swp bits (swap_pte_batch)."""

    runs: PteRuns
    pte: np.ndarray   # uint64 first swap PTE per batch
    slot: np.ndarray  # int64 first slot per batch

    @property
    def nr_pages(self) -> np.ndarray:
        return self.runs.nr_pages

    def slots(self) -> np.ndarray:
        return self.slot.repeat(self.runs.nr_pages) + pte_offsets_in_batches(self.runs.nr_pages)


def swap_pte_batch(addr: int, ptes: np.ndarray) -> SwapBatches:
    """All batches of swap entries in ptes (one PTE table and one VMA from addr); PTE
    markers are not swap entries (softleaf_is_swap)."""
    table_addr = addr & ~(PMD_SIZE - 1)
    first = (addr - table_addr) >> PAGE_SHIFT
    swap = is_swap_slot_pte(ptes)
    slots = pte_swp_offset(ptes).astype(np.int64)
    continues = np.zeros(len(ptes), bool)
    same_bits = (ptes[1:] & ~np.uint64(SWP_OFFSET_MASK)) == (ptes[:-1] & ~np.uint64(SWP_OFFSET_MASK))
    continues[1:] = swap[1:] & swap[:-1] & (slots[1:] == slots[:-1] + 1) & same_bits
    starts = np.flatnonzero(swap & ~continues)
    run_ids = (swap & ~continues).cumsum() - 1
    nr_pages = np.bincount(run_ids[swap], minlength=len(starts)).astype(np.int64)
    index = np.arange(first, first + len(ptes), dtype=np.int64)
    return SwapBatches(PteRuns(table_addr, index[starts], nr_pages), ptes[starts].copy(), slots[starts])


def set_pte_values(machine: Machine, mm, addr: int, index: np.ndarray, ptes: np.ndarray,
                   breaks: np.ndarray | None = None) -> None:
    """Write computed entries (ascending table indices from the table at addr) with set_ptes,
    one call per run of entries that differ only by an advancing pfn (and, where breaks is
    given, that starts no new run at an entry breaks marks: the caller's batch boundaries)."""
    if len(index) == 0:
        return
    table_addr = addr & ~(PMD_SIZE - 1)
    ptes = np.asarray(ptes, np.uint64)
    starts = np.ones(len(index), bool)
    starts[1:] = (index[1:] != index[:-1] + 1) | (ptes[1:] != ptes[:-1] + np.uint64(1 << PAGE_SHIFT))
    if breaks is not None:
        starts |= breaks
    start_at = np.flatnonzero(starts)
    nr_pages = np.diff(np.append(start_at, len(index))).astype(np.int64)
    machine.set_ptes_runs(mm, PteRuns(table_addr, index[start_at].astype(np.int64), nr_pages), ptes[start_at])


def set_pte_each(machine: Machine, mm, addr: int, index: np.ndarray, ptes: np.ndarray) -> None:
    """set_pte_at of each computed entry (ascending table indices from the table at addr): a
    kernel loop of single-entry writes, each unfolding its block and maybe folding it at its
    last entry, not one set_ptes."""
    if len(index) == 0:
        return
    machine.set_ptes_runs(mm, PteRuns(addr & ~(PMD_SIZE - 1), np.asarray(index, np.int64),
                                      np.ones(len(index), np.int64)), np.asarray(ptes, np.uint64))


__all__ = [
    "FPB_FORK", "FPB_MADVISE", "FPB_MERGE_WRITE", "FPB_MERGE_YOUNG_DIRTY",
    "FPB_RESPECT_DIRTY", "FPB_RESPECT_WRITE", "FPB_UNMAP", "FPB_ZAP",
    "PteBatches", "SwapBatches", "batch_starts", "batches_any", "folio_pte_batch",
    "pte_offsets_in_batches", "set_pte_each", "set_pte_values", "split_batches_by", "swap_pte_batch",
]
