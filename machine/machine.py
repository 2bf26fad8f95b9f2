"""The simulated arm64 machine both implementations run on (SPEC §2).

It holds state and mechanism only: frames, swap, processes, pins, the
single-entry and batched page-table primitives with arm64's contpte folding
and unfolding, and the hardware's access/dirty updates. What the kernel decides lives in
reference/ and batched/.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import reduce
from operator import or_
from typing import Literal, overload

import numpy as np

from .arrays import all_set, any_set
from .errors import MachineBug, check
from .files import File
from .frames import FrameTable
from .journal import Journal, journaled
from .mm import MM, PUD_SHIFT, VMA, PmdTable, PteTable, pmd_index, pte_index
from .pgtable import (
    CONT_PTE_SIZE,
    CONT_PTES,
    CONTPTE_NORMALISE_IGNORED,
    MASK64,
    PAGE_SHIFT,
    PAGE_SIZE,
    PMD_SHIFT,
    PMD_SIZE,
    PTE_ADDR_MASK,
    PTE_AF,
    PTE_CONT,
    PTE_DIRTY,
    PTE_RDONLY,
    PTE_SPECIAL,
    PTE_TYPE_MASK,
    PTE_TYPE_PAGE,
    PTE_VALID,
    PTE_WRITE,
    PTRS_PER_TABLE,
    contpte_normalise,
    pmd_pte,
    pmd_trans_huge,
    pte_cont,
    pte_dirty,
    pte_mkclean,
    pte_mkdirty,
    pte_mkold,
    pte_pfn,
    pte_pmd,
    pte_present,
    pte_write,
    pte_wrprotect,
    pte_young,
)
from .swap import SwapSpace

DEFAULT_NR_FRAMES = 4096
# A transaction on a machine of at most this many frames copies it whole (tens of
# microseconds, less than journaling the thousands of writes of a fork); a larger one
# journals, so that an op's rollback costs what it wrote, not the machine's size.
TRANSACTION_COPY_MAX_FRAMES = 16384
_BLOCKS_PER_TABLE = PTRS_PER_TABLE // CONT_PTES
_CONT_OFFSETS = np.arange(CONT_PTES, dtype=np.int64)


@dataclass(frozen=True)
class Pin:
    """One FOLL_PIN|FOLL_LONGTERM pin: lives until unpin, also after its process exits."""

    pin_id: int
    pid: int
    addr: int
    mode: str  # "ro" or "rw"
    pages: tuple[int, ...]  # the pfn pinned at each page of the range

    @property
    def nr_pages(self) -> int:
        return len(self.pages)


@dataclass(slots=True)  # built per PTE table: a frozen dataclass's __init__ costs three times more
class PteRuns:
    """Disjoint runs of entries in one PTE table, ascending: run i is the nr_pages[i]
    entries from index[i]. The batched primitives below apply to every run at once."""

    addr: int            # VA of the table's first entry (2 MiB aligned)
    index: np.ndarray    # int64, first entry of each run
    nr_pages: np.ndarray  # int64, entries in each run (>= 1)

    def __post_init__(self) -> None:
        check(self.addr % PMD_SIZE == 0, "PTE table address %#x not 2 MiB aligned", self.addr)
        check(len(self.index) == len(self.nr_pages), "runs need one length each")
        if len(self.index) == 1:
            first, nr_pages = self.index.item(0), self.nr_pages.item(0)
            check(nr_pages >= 1, "nr_pages must be positive")
            check(first >= 0 and first + nr_pages <= PTRS_PER_TABLE, "run crosses a PTE table")
        elif len(self.index):
            check(all_set(self.nr_pages >= 1), "nr_pages must be positive")
            check(self.index[0] >= 0 and self.index[-1] + self.nr_pages[-1] <= PTRS_PER_TABLE,
                  "run crosses a PTE table")
            check(all_set(self.index[1:] >= self.index[:-1] + self.nr_pages[:-1]),
                  "runs overlap or are not ascending")

    def first_addr(self) -> int:
        """The VA of the first run's first entry."""
        return self.addr + (self.index.item(0) << PAGE_SHIFT)

    def entry_indices(self) -> np.ndarray:
        """Every entry of every run, ascending."""
        if len(self.index) == 1:
            return np.arange(self.index.item(0), int(self.index[0] + self.nr_pages[0]), dtype=np.int64)
        ends = self.nr_pages.cumsum()
        return self.index.repeat(self.nr_pages) + np.arange(ends[-1] if len(ends) else 0) \
            - (ends - self.nr_pages).repeat(self.nr_pages)


# An entry is hardware-dirty when, of these, it has WRITE alone (pte_hw_dirty).
_HW_DIRTY_MASK = PTE_WRITE | PTE_RDONLY
# The bits __ptep_set_access_flags takes from its entry.
_ACCESS_FLAGS = PTE_RDONLY | PTE_AF | PTE_WRITE | PTE_DIRTY


def _access_flags_applied(pte: int, entry: int) -> int:
    """__ptep_set_access_flags: pte with entry's AF, DIRTY and WRITE added and RDONLY
    cleared if entry has it clear (the more permissive of the two)."""
    flags = (entry & _ACCESS_FLAGS) ^ PTE_RDONLY
    return ((pte ^ PTE_RDONLY) | flags) ^ PTE_RDONLY


def _contpte_gather(entries: np.ndarray, index: int, pte: int) -> int:
    """contpte_ptep_get: pte (entry index, of a folded block) made dirty if any of its block's
    16 entries is dirty, young if any is young."""
    first = index - index % CONT_PTES
    values = entries[first:first + CONT_PTES].tolist()
    any_bits = reduce(or_, values)
    if any_bits & PTE_DIRTY or (any_bits & PTE_WRITE and any(value & _HW_DIRTY_MASK == PTE_WRITE
                                                              for value in values)):
        pte = pte_mkdirty(pte)
    return pte | (any_bits & PTE_AF)


def _contpte_gather_array(entries: np.ndarray, first: int, values: np.ndarray) -> np.ndarray:
    """contpte_ptep_get for each of values, the entries from index first of a table's entries:
    the valid CONT ones gathered over their blocks."""
    cont = (values & np.uint64(PTE_CONT | PTE_VALID)) == np.uint64(PTE_CONT | PTE_VALID)
    if not any_set(cont):
        return values
    start = first - first % CONT_PTES
    stop = -(-(first + len(values)) // CONT_PTES) * CONT_PTES
    blocks = entries[start:stop].reshape(-1, CONT_PTES)
    dirty = pte_dirty(blocks).any(axis=1).repeat(CONT_PTES)[first - start:first - start + len(values)]
    young = pte_young(blocks).any(axis=1).repeat(CONT_PTES)[first - start:first - start + len(values)]
    values = np.where(cont & dirty, pte_mkdirty(values), values)
    return np.where(cont & young, values | np.uint64(PTE_AF), values)


# Each entry of a run set_ptes writes: the template with the pfn advanced by its offset.
_PFN_STEPS = np.arange(PTRS_PER_TABLE, dtype=np.uint64) << np.uint64(PAGE_SHIFT)


def _contpte_set_ptes_cont(entries: np.ndarray, starts: np.ndarray | int, ends: np.ndarray | int,
                           pfn_minus_index: np.ndarray | int) -> np.ndarray:
    """contpte_set_ptes: which entries (indices in a table, each in the run [start, end)) get
    CONT: those of a block the run covers wholly whose pfns start at a multiple of 16."""
    block = entries - entries % CONT_PTES
    return (block >= starts) & (block + CONT_PTES <= ends) & (np.asarray(pfn_minus_index) % CONT_PTES == 0)


def _pmd_entry_of(mm: MM, addr: int) -> tuple[PmdTable | None, int]:
    """The PMD table covering addr (None if absent) and the index of addr's entry in it."""
    return mm.pmd_tables_by_addr.get(addr >> PUD_SHIFT), (addr >> PMD_SHIFT) & (PTRS_PER_TABLE - 1)


def _pte_entry_of(mm: MM, addr: int) -> tuple[PteTable | None, int]:
    """The PTE table covering addr (None if absent) and the index of addr's entry in it."""
    return mm.pte_tables.get(addr >> PMD_SHIFT), (addr >> PAGE_SHIFT) & (PTRS_PER_TABLE - 1)


@dataclass(frozen=True)
class _SavedState:
    """What journal_begin saves whole rather than journaling writes: the scalars and the small
    containers (the process table, each process's counters and VMAs), whose size follows
    the script, not the machine. Pins are journaled as they are added and removed."""

    nr_free_frames: int
    first_free_block: int
    nr_processes: int
    nr_mmaps: int
    nr_anon_vmas: int
    nr_uffd_ctxs: int
    nr_pins: int
    processes: dict[int, MM]
    mm_counters: dict[int, tuple[int, int, int, bool]]     # pid: rss_anon, rss_swap, rss_file, has_pinned
    vmas: dict[int, list[tuple[VMA, VMA]]]                 # pid: each VMA and a copy of its fields
    files: dict[int, File]                                 # copies: a script's files are few

    @staticmethod
    def of(machine: Machine) -> _SavedState:
        processes = machine.processes
        return _SavedState(
            machine.frames.nr_free_frames, machine.frames.first_free_block,
            machine.nr_processes, machine.nr_mmaps, machine.nr_anon_vmas, machine.nr_uffd_ctxs, machine.nr_pins,
            dict(processes),
            {pid: (mm.rss_anon, mm.rss_swap, mm.rss_file, mm.has_pinned) for pid, mm in processes.items()},
            {pid: [(vma, vma.copy()) for vma in mm.vmas] for pid, mm in processes.items()},
            {file_id: file.clone() for file_id, file in machine.files.items()})

    def restore(self, machine: Machine) -> None:
        machine.frames.nr_free_frames = self.nr_free_frames
        machine.frames.first_free_block = self.first_free_block
        machine.nr_processes = self.nr_processes
        machine.nr_mmaps = self.nr_mmaps
        machine.nr_anon_vmas = self.nr_anon_vmas
        machine.nr_uffd_ctxs = self.nr_uffd_ctxs
        machine.nr_pins = self.nr_pins
        machine.processes = self.processes
        for pid, mm in self.processes.items():
            mm.rss_anon, mm.rss_swap, mm.rss_file, mm.has_pinned = self.mm_counters[pid]
            mm.vmas = [vma for vma, _fields in self.vmas[pid]]
            for vma, fields in self.vmas[pid]:
                vma.__dict__.update(fields.__dict__)
        machine.files = self.files


class Machine:
    """All state of one simulated machine."""

    def __init__(self, nr_frames: int = DEFAULT_NR_FRAMES) -> None:
        self.frames = FrameTable(nr_frames)
        self.swap = SwapSpace(nr_frames)
        self.journal = Journal()
        self._saved: list[_SavedState] = []  # what each open journal_begin saved whole
        self._transactions: list[Machine | None] = []  # per open transaction: its copy, or None: journaled
        self._plain_arrays: list[np.ndarray] = []  # the arrays a journal's views stand in for
        self.processes: dict[int, MM] = {0: MM(0, self.journal)}
        self.nr_processes = 1  # process numbers ever used
        self.nr_mmaps = 0      # successful mmaps: the next lineage id
        self.nr_anon_vmas = 0  # anon_vmas ever made: the last id given (0 is none)
        self.nr_uffd_ctxs = 0  # successful `uffd` registrations: each opened its own context
        self.pins: dict[int, Pin] = {}
        self.nr_pins = 0       # successful pins: the next pin id
        self.files: dict[int, File] = {}  # Fn: the files the script made, with their page caches

    # Snapshots, for the transactional failure model (SPEC §1).

    def snapshot(self) -> Machine:
        """A deep copy of the whole state."""
        check(not self.journal.recording, "snapshot while a journal is open")
        other = Machine.__new__(Machine)
        other.frames = self.frames.clone()
        other.swap = self.swap.clone()
        other.journal = Journal()
        other._saved = []
        other._transactions = []
        other._plain_arrays = []
        other.processes = {pid: mm.clone() for pid, mm in self.processes.items()}
        for mm in other.processes.values():
            mm.journal = other.journal
        other.nr_processes = self.nr_processes
        other.nr_mmaps = self.nr_mmaps
        other.nr_anon_vmas = self.nr_anon_vmas
        other.nr_uffd_ctxs = self.nr_uffd_ctxs
        other.pins = dict(self.pins)
        other.nr_pins = self.nr_pins
        other.files = {file_id: file.clone() for file_id, file in self.files.items()}
        return other

    def restore(self, snapshot: Machine) -> None:
        """Put the state back to a snapshot taken before the op.

        The snapshot's objects are taken over, not copied: a snapshot restores once.
        """
        check(not self.journal.recording, "restore while a journal is open")
        self.frames = snapshot.frames
        self.swap = snapshot.swap
        self.processes = snapshot.processes
        for mm in self.processes.values():
            mm.journal = self.journal
        self.nr_processes = snapshot.nr_processes
        self.nr_mmaps = snapshot.nr_mmaps
        self.nr_anon_vmas = snapshot.nr_anon_vmas
        self.nr_uffd_ctxs = snapshot.nr_uffd_ctxs
        self.pins = snapshot.pins
        self.nr_pins = snapshot.nr_pins
        self.files = snapshot.files

    # Transactions, for the transactional failure model (SPEC §1): an op that may fail
    # half-way runs between transaction_begin and transaction_commit or _rollback.

    def transaction_begin(self) -> None:
        """Start an op that may have to be undone exactly: a small machine is copied whole,
        a large one (or one whose journal is already open) journaled."""
        if self.frames.nr_frames > TRANSACTION_COPY_MAX_FRAMES or self.journal.depth:
            self.journal_begin()
            self._transactions.append(None)
        else:
            self._transactions.append(self.snapshot())

    def transaction_commit(self) -> None:
        """Keep everything the op wrote."""
        if self._transactions.pop() is None:
            self.journal_commit()

    def transaction_rollback(self) -> None:
        """Put the machine back exactly as it was at transaction_begin."""
        snapshot = self._transactions.pop()
        if snapshot is None:
            self.journal_rollback()
        else:
            self.restore(snapshot)

    # The undo journal: rollback at the cost of what an op writes (journal.py).

    def journal_begin(self) -> None:
        """Start recording the old value of everything written, until commit or rollback.
        Journals nest: an inner rollback undoes only what was written since its begin."""
        self._saved.append(_SavedState.of(self))
        if self.journal.depth == 0:
            self._plain_arrays = [getattr(owner, name) for owner, name in self._journaled_arrays()]
            for owner, name in self._journaled_arrays():
                setattr(owner, name, journaled(getattr(owner, name), self.journal))
        self.journal.open()

    def journal_commit(self) -> None:
        """Keep everything written since the last journal_begin."""
        check(self.journal.depth >= 1, "no journal open")
        self._saved.pop()
        self.journal.close()
        self._journal_end()

    def journal_rollback(self) -> None:
        """Put the machine back exactly as it was at the last journal_begin."""
        check(self.journal.depth >= 1, "no journal open")
        self.journal.roll_back()
        self._saved.pop().restore(self)
        self._journal_end()

    def _journal_end(self) -> None:
        """Once the outermost journal ends, the plain arrays come back."""
        if self.journal.depth == 0:
            for (owner, name), array in zip(self._journaled_arrays(), self._plain_arrays, strict=True):
                setattr(owner, name, array)
            self._plain_arrays = []

    def _journaled_arrays(self) -> list[tuple[object, str]]:
        """The arrays swapped for journaled views while a journal is open: every frame
        and swap array (the kernels write them directly)."""
        names = [(self.frames, name) for name in (*FrameTable.ARRAYS, "block_nr_free")]
        return names + [(self.swap, "swap_data"), (self.swap, "swap_count"), (self.swap, "swap_cache"),
                        (self.swap, "swap_zeromap")]

    def _record_key(self, mapping: dict, key: int) -> None:
        """Tell an open journal that mapping[key] is about to be set or deleted."""
        if self.journal.recording:
            self.journal.record_key(mapping, key)

    def _record_entries(self, entries: np.ndarray, key: object) -> None:
        """Tell an open journal that entries[key] of a page table is about to be written."""
        if self.journal.recording:
            self.journal.record_entries(entries, key)

    # Processes, lineages and pins.

    def mm_alloc(self) -> MM:
        """A new empty process with the lowest number never used."""
        mm = MM(self.nr_processes, self.journal)
        self.nr_processes += 1
        self.processes[mm.pid] = mm
        return mm

    def mm_destroy(self, mm: MM) -> None:
        """Remove a process whose page tables and counters are already empty."""
        check(next(mm.leaves(), None) is None, "P%s destroyed with mappings", mm.pid)
        check(mm.rss_anon == 0 and mm.rss_swap == 0 and mm.rss_file == 0, "P%s destroyed with RSS", mm.pid)
        del self.processes[mm.pid]

    def lineage_alloc(self) -> int:
        """The lineage id of a new mmap: the number of successful mmaps before it."""
        lineage = self.nr_mmaps
        self.nr_mmaps += 1
        return lineage

    def anon_vma_alloc(self) -> int:
        """The id of a new anon_vma (anon_vma_alloc): 1 for the first, never reused (0 is none)."""
        self.nr_anon_vmas += 1
        return self.nr_anon_vmas

    def uffd_ctx_alloc(self) -> int:
        """A new userfaultfd context's id (from 1): one more than the registrations before."""
        self.nr_uffd_ctxs += 1
        return self.nr_uffd_ctxs

    def pin_add(self, pid: int, addr: int, mode: str, pages: tuple[int, ...]) -> int:
        check(len(pages) >= 1, "a pin holds at least one page")
        pin_id = self.nr_pins
        self.nr_pins += 1
        self._record_key(self.pins, pin_id)
        self.pins[pin_id] = Pin(pin_id, pid, addr, mode, pages)
        return pin_id

    def pin_remove(self, pin_id: int) -> Pin:
        self._record_key(self.pins, pin_id)
        return self.pins.pop(pin_id)

    # Single-entry PTE primitives.

    @overload
    def _pte_slot(self, mm: MM, addr: int, alloc: Literal[True]) -> tuple[PteTable, int]: ...
    @overload
    def _pte_slot(self, mm: MM, addr: int, alloc: bool) -> tuple[PteTable | None, int]: ...

    def _pte_slot(self, mm: MM, addr: int, alloc: bool) -> tuple[PteTable | None, int]:
        """The PTE table covering addr (allocated if alloc) and addr's index in it."""
        if addr % PAGE_SIZE:
            check(False, "unaligned address %#x", addr)
        table = mm.pte_tables.get(addr >> PMD_SHIFT)   # mm.pte_table's lookup first: most tables exist
        if table is None and alloc:
            table = mm.pte_table(addr, alloc)
        return table, (addr >> PAGE_SHIFT) & (PTRS_PER_TABLE - 1)

    def ptep_get(self, mm: MM, addr: int) -> int:
        """ptep_get: the PTE at addr (0 if no PTE table covers it); an entry of a folded
        contpte block with the young and dirty of its 16 gathered (contpte_ptep_get)."""
        if addr % PAGE_SIZE:
            check(False, "unaligned address %#x", addr)
        table = mm.pte_tables.get(addr >> PMD_SHIFT)   # _pte_entry_of, inlined: the hottest read
        if table is None:
            return 0
        index = (addr >> PAGE_SHIFT) & (PTRS_PER_TABLE - 1)
        pte = table.entries.item(index)
        if pte & PTE_CONT and pte & PTE_VALID:
            return _contpte_gather(table.entries, index, pte)
        return pte

    def ptep_get_raw(self, mm: MM, addr: int) -> int:
        """__ptep_get: the raw PTE at addr, nothing gathered (0 if no PTE table covers it)."""
        if addr % PAGE_SIZE:
            check(False, "unaligned address %#x", addr)
        table = mm.pte_tables.get(addr >> PMD_SHIFT)
        return 0 if table is None else table.entries.item((addr >> PAGE_SHIFT) & (PTRS_PER_TABLE - 1))

    def set_pte_at(self, mm: MM, addr: int, pte: int) -> None:
        """set_ptes with nr 1: unfold the entry's block, write pte without CONT, then
        contpte_try_fold at the block's last entry."""
        table, index = self._pte_slot(mm, addr, alloc=True)
        self._record_block(table, index)
        if table.entries.item(index) & PTE_CONT:
            self._contpte_try_unfold(table, index)
        pte &= MASK64 ^ PTE_CONT
        table.entries[index] = pte
        if index % CONT_PTES == CONT_PTES - 1:
            self._contpte_try_fold(table, index, pte)

    def set_pte_raw(self, mm: MM, addr: int, pte: int) -> None:
        """__set_pte: write pte as it is (CONT included), neither unfolding nor folding: one
        entry of a range writer whose effect on the blocks the caller states (contpte_*_block)."""
        table, index = self._pte_slot(mm, addr, alloc=True)
        self._record_entries(table.entries, index)
        table.entries[index] = pte

    def ptep_get_and_clear(self, mm: MM, addr: int) -> int:
        """Unfold the entry's block (contpte_try_unfold), then clear the entry; returns it."""
        table, index = self._pte_slot(mm, addr, alloc=True)
        self._record_block(table, index)
        if table.entries.item(index) & PTE_CONT:
            self._contpte_try_unfold(table, index)
        pte = table.entries.item(index)
        table.entries[index] = 0
        return pte

    def ptep_get_and_clear_raw(self, mm: MM, addr: int) -> int:
        """__ptep_get_and_clear: clear the raw entry (CONT and all), returning it."""
        table, index = self._pte_slot(mm, addr, alloc=True)
        self._record_entries(table.entries, index)
        pte = table.entries.item(index)
        table.entries[index] = 0
        return pte

    def ptep_set_wrprotect(self, mm: MM, addr: int) -> None:
        """Unfold the entry's block (contpte_try_unfold), then write-protect the entry."""
        table, index = self._pte_slot(mm, addr, alloc=True)
        self._record_block(table, index)
        if table.entries.item(index) & PTE_CONT:
            self._contpte_try_unfold(table, index)
        table.entries[index] = pte_wrprotect(table.entries.item(index))

    def ptep_set_access_flags(self, mm: MM, addr: int, entry: int) -> bool:
        """ptep_set_access_flags: make the entry at addr as permissive as entry in AF, DIRTY,
        WRITE and RDONLY (__ptep_set_access_flags). In a folded block (contpte_ptep_set_access_flags):
        nothing if all 16 already match; all 16 if WRITE stays; else unfold, then the one entry.
        Returns whether anything changed."""
        table, index = self._pte_slot(mm, addr, alloc=True)
        self._record_block(table, index)
        entry &= MASK64 ^ PTE_CONT
        orig = table.entries.item(index)
        if not (orig & PTE_CONT and orig & PTE_VALID):
            if orig == entry:
                return False
            table.entries[index] = _access_flags_applied(orig, entry)
            return True
        first = index - index % CONT_PTES
        span = slice(first, first + CONT_PTES)
        if all((value ^ entry) & _ACCESS_FLAGS == 0 for value in table.entries[span].tolist()):
            return False
        if (orig ^ entry) & PTE_WRITE == 0:
            for i in range(first, first + CONT_PTES):
                table.entries[i] = _access_flags_applied(table.entries.item(i), entry)
            return True
        self._contpte_try_unfold(table, index)
        value = table.entries.item(index)
        if value != entry:
            table.entries[index] = _access_flags_applied(value, entry)
        return True

    # contpte blocks (arch/arm64/mm/contpte.c): folded and unfolded only where the kernel's
    # arch code does it (docs/model.md #91-#99).

    def _record_block(self, table: PteTable, index: int) -> None:
        """Tell an open journal that the block of entry index may be written."""
        if self.journal.recording:
            first = index - index % CONT_PTES
            self.journal.record_entries(table.entries, slice(first, first + CONT_PTES))

    def _contpte_convert(self, table: PteTable, index: int, pte: int) -> None:
        """contpte_convert: rewrite the block of entry index from pte's attributes (CONT set
        or clear as pte has it), each entry its own pfn, young and dirty gathered from all 16."""
        first = index - index % CONT_PTES
        values = table.entries[first:first + CONT_PTES].tolist()
        pte = (pte & (MASK64 ^ PTE_ADDR_MASK)) | ((pte_pfn(pte) & ~(CONT_PTES - 1)) << PAGE_SHIFT)
        if any(pte_dirty(value) for value in values):
            pte = pte_mkdirty(pte)
        if any(value & PTE_AF for value in values):
            pte |= PTE_AF
        np.add(_PFN_STEPS[:CONT_PTES], np.uint64(pte), out=table.entries[first:first + CONT_PTES])

    def _contpte_try_unfold(self, table: PteTable, index: int) -> None:
        """contpte_try_unfold: a valid CONT entry's block is unfolded (contpte_convert)."""
        pte = table.entries.item(index)
        if pte & PTE_CONT and pte & PTE_VALID:
            self._contpte_convert(table, index, pte & (MASK64 ^ PTE_CONT))

    def _contpte_try_fold(self, table: PteTable, index: int, pte: int) -> None:
        """contpte_try_fold after writing pte at the last entry of its block: fold the block
        if pte's pfn is the last of an aligned 16, valid, not special, and the block is
        eligible (__contpte_try_fold: one folio, consecutive pfns, equal but young and dirty)."""
        if pte_pfn(pte) % CONT_PTES != CONT_PTES - 1 or not pte & PTE_VALID or pte & (PTE_CONT | PTE_SPECIAL):
            return
        first = index - index % CONT_PTES
        if self._contpte_block_eligible(table.entries[first:first + CONT_PTES].tolist()):
            self._contpte_convert(table, index, pte | PTE_CONT)

    def contpte_try_unfold_partial(self, mm: MM, addr: int, nr_pages: int) -> None:
        """contpte_try_unfold_partial: a range writer's first step, unfolding the blocks the
        nr_pages entries from addr cover only partly (at either end); whole blocks stay folded."""
        table, index = self._pte_slot(mm, addr, alloc=True)
        check(nr_pages >= 1 and index + nr_pages <= PTRS_PER_TABLE, "range crosses a PTE table")
        self._unfold_partial(table, index, index + nr_pages)

    def _unfold_partial(self, table: PteTable, first: int, end: int) -> None:
        if first % CONT_PTES or end - first < CONT_PTES:
            self._record_block(table, first)
            self._contpte_try_unfold(table, first)
        if end % CONT_PTES:
            self._record_block(table, end - 1)
            self._contpte_try_unfold(table, end - 1)

    def contpte_mkcont_block(self, mm: MM, addr: int) -> None:
        """contpte_set_ptes on a block its run covers wholly, VA and pfn aligned: CONT on
        each of the 16 entries just written (which must make a valid folded block)."""
        check(addr % CONT_PTE_SIZE == 0, "contpte block at %#x not 64 KiB aligned", addr)
        table, index = self._pte_slot(mm, addr, alloc=True)
        span = slice(index, index + CONT_PTES)
        self._record_entries(table.entries, span)
        values = table.entries[span].tolist()
        check(self._contpte_block_eligible(values), "contpte block at %#x cannot be folded", addr)
        table.entries[span] |= np.uint64(PTE_CONT)

    def contpte_block_range(self, mm: MM, addr: int, nr_pages: int) -> tuple[int, int]:
        """contpte_align_addr_ptep: the range of nr_pages entries from addr widened to whole
        blocks at an end whose entry is CONT; (addr, nr_pages) of the result."""
        start, end = addr, addr + (nr_pages << PAGE_SHIFT)
        if self.ptep_get_raw(mm, end - PAGE_SIZE) & PTE_CONT:
            end = -(-end // CONT_PTE_SIZE) * CONT_PTE_SIZE
        if self.ptep_get_raw(mm, start) & PTE_CONT:
            start -= start % CONT_PTE_SIZE
        return start, (end - start) >> PAGE_SHIFT

    # Batched PTE primitives: nr_pages entries inside one PTE table.

    def _pte_run(self, mm: MM, addr: int, nr_pages: int) -> tuple[PteTable, slice]:
        check(nr_pages >= 1, "nr_pages must be positive")
        table, index = self._pte_slot(mm, addr, alloc=True)
        check(index + nr_pages <= PTRS_PER_TABLE, "batch crosses a PTE table")
        if self.journal.recording:
            self.journal.record_entries(table.entries, slice(index, index + nr_pages))
        return table, slice(index, index + nr_pages)

    def _ptes_view(self, mm: MM, addr: int, nr_pages: int) -> np.ndarray | None:
        """The nr_pages entries from addr inside one PTE table, as a view; None if no table."""
        check(addr % PAGE_SIZE == 0, "unaligned address %#x", addr)
        check(nr_pages >= 1 and pte_index(addr) + nr_pages <= PTRS_PER_TABLE,
              "range crosses a PTE table")
        table = mm.pte_table(addr)
        if table is None:
            return None
        index = pte_index(addr)
        return table.entries[index:index + nr_pages]

    def ptes_get(self, mm: MM, addr: int, nr_pages: int) -> np.ndarray:
        """ptep_get of nr_pages PTEs from addr (zeros where no table exists): the entries of
        folded blocks with their block's young and dirty gathered."""
        entries = self._ptes_view(mm, addr, nr_pages)
        if entries is None:
            return np.zeros(nr_pages, np.uint64)
        table = mm.pte_table(addr)
        assert table is not None
        return _contpte_gather_array(table.entries, pte_index(addr), entries.copy())

    def ptes_none(self, mm: MM, addr: int, nr_pages: int) -> bool:
        """Every one of nr_pages PTEs from addr is none (or no table covers them)."""
        entries = self._ptes_view(mm, addr, nr_pages)
        return entries is None or not any_set(entries)

    def set_ptes(self, mm: MM, addr: int, pte: int, nr_pages: int) -> None:
        """set_ptes: one entry as set_pte_at; more (all none before) as contpte_set_ptes,
        pte then the same with the pfn advanced, CONT on each block the run covers wholly
        with its first pfn a multiple of 16 (a valid pte only: a swap PTE has no pfn)."""
        if nr_pages == 1:
            self.set_pte_at(mm, addr, pte)
            return
        table, run = self._pte_run(mm, addr, nr_pages)
        self._check_no_partial_fold(table, run.start, run.stop)
        entries = table.entries[run]
        np.add(_PFN_STEPS[:nr_pages], np.uint64(pte & (MASK64 ^ PTE_CONT)), out=entries)
        if pte & PTE_VALID and nr_pages >= CONT_PTES:
            cont = _contpte_set_ptes_cont(np.arange(run.start, run.stop, dtype=np.int64), run.start,
                                          run.stop, pte_pfn(pte) - run.start)
            entries[cont] |= np.uint64(PTE_CONT)

    def _check_no_partial_fold(self, table: PteTable, first: int, end: int) -> None:
        """set_ptes' precondition for nr > 1 (its targets are none): no folded block is
        covered only partly, which contpte_set_ptes would leave half folded."""
        for index in (first, end - 1):
            block = index - index % CONT_PTES
            if table.entries.item(block) & PTE_CONT:
                check(block >= first and block + CONT_PTES <= end,
                      "set_ptes over part of a folded contpte block at entry %s", block)

    def get_and_clear_full_ptes(self, mm: MM, addr: int, nr_pages: int) -> int:
        """Clear nr_pages entries (one: unfolding its block; more: contpte_try_unfold_partial,
        whole blocks cleared folded); returns the first, made dirty or young if any entry after
        it is (the first raw otherwise, as the kernel's loop gathers from the second on)."""
        table, run = self._pte_run(mm, addr, nr_pages)
        self._unfold_partial(table, run.start, run.stop)
        entries = table.entries[run]
        pte = int(entries[0])
        if any_set(pte_dirty(entries[1:])):
            pte = pte_mkdirty(pte)
        if any_set(pte_young(entries[1:])):
            pte |= PTE_AF
        table.entries[run] = 0
        return pte

    def clear_full_ptes(self, mm: MM, addr: int, nr_pages: int) -> None:
        """Clear nr_pages entries, unfolding the blocks they cover partly (contpte_clear_full_ptes)."""
        table, run = self._pte_run(mm, addr, nr_pages)
        self._unfold_partial(table, run.start, run.stop)
        table.entries[run] = 0

    def wrprotect_ptes(self, mm: MM, addr: int, nr_pages: int) -> None:
        """Write-protect nr_pages entries, unfolding the blocks they cover partly; whole blocks
        stay folded (contpte_wrprotect_ptes; one entry: ptep_set_wrprotect)."""
        table, run = self._pte_run(mm, addr, nr_pages)
        self._unfold_partial(table, run.start, run.stop)
        table.entries[run] = pte_wrprotect(table.entries[run])

    def clear_young_dirty_ptes(self, mm: MM, addr: int, nr_pages: int) -> None:
        """clear_young_dirty_ptes(CYDP_CLEAR_YOUNG | CYDP_CLEAR_DIRTY): each entry
        pte_mkold(pte_mkclean(entry)), the range widened to whole blocks at an end whose entry
        is CONT (contpte_clear_young_dirty_ptes: no unfold)."""
        addr, nr_pages = self.contpte_block_range(mm, addr, nr_pages)
        table, run = self._pte_run(mm, addr, nr_pages)
        table.entries[run] = pte_mkold(pte_mkclean(table.entries[run]))

    # The batched primitives applied to many runs of one PTE table in one call: each run as
    # the single-run primitive (a run is one kernel call; runs are disjoint and ascending).

    def _pte_table_for_runs(self, mm: MM, runs: PteRuns) -> PteTable:
        table = mm.pte_table(runs.addr, alloc=True)
        if len(runs.index):
            first, end = int(runs.index[0]), int(runs.index[-1] + runs.nr_pages[-1])
            first -= first % CONT_PTES
            end = min(PTRS_PER_TABLE, -(-end // CONT_PTES) * CONT_PTES)
            if self.journal.recording:
                self.journal.record_entries(table.entries, slice(first, end))
        return table

    def _unfold_partial_runs(self, table: PteTable, runs: PteRuns) -> None:
        """contpte_try_unfold_partial for every run (before any run writes: a run writes only
        its own entries, so the unfolds it would see are the same)."""
        first, end = int(runs.index[0]), int(runs.index[-1] + runs.nr_pages[-1])
        if not any_set(table.entries[first:end] & np.uint64(PTE_CONT)):
            return
        for start, nr_pages in zip(runs.index.tolist(), runs.nr_pages.tolist(), strict=True):
            self._unfold_partial(table, start, start + nr_pages)

    def set_ptes_runs(self, mm: MM, runs: PteRuns, ptes: np.ndarray) -> None:
        """set_ptes for each run: ptes[i], then the same with the pfn advanced."""
        if len(runs.index) == 1:
            self.set_ptes(mm, runs.first_addr(), int(ptes[0]), int(runs.nr_pages[0]))
            return
        if not len(runs.index):
            return
        table = self._pte_table_for_runs(mm, runs)
        ptes = np.asarray(ptes, np.uint64) & ~np.uint64(PTE_CONT)
        single = runs.nr_pages == 1
        first, end = int(runs.index[0]), int(runs.index[-1] + runs.nr_pages[-1])
        if any_set(table.entries[first:end] & np.uint64(PTE_CONT)):
            for index in runs.index[single].tolist():      # set_pte_at unfolds its target's block
                self._contpte_try_unfold(table, index)
            for start, nr_pages in zip(runs.index[~single].tolist(), runs.nr_pages[~single].tolist(), strict=True):
                self._check_no_partial_fold(table, start, start + nr_pages)
        entries = runs.entry_indices()
        starts = runs.index.repeat(runs.nr_pages)
        offsets = entries - starts
        values = ptes.repeat(runs.nr_pages) + (offsets.astype(np.uint64) << np.uint64(PAGE_SHIFT))
        valid = (values & np.uint64(PTE_VALID)) != 0
        if any_set(runs.nr_pages >= CONT_PTES):
            ends = starts + runs.nr_pages.repeat(runs.nr_pages)
            cont = _contpte_set_ptes_cont(entries, starts, ends, pte_pfn(values).astype(np.int64) - entries)
            values = np.where(cont & valid, values | np.uint64(PTE_CONT), values)
        table.entries[entries] = values
        last = runs.index[single & (runs.index % CONT_PTES == CONT_PTES - 1)]
        for index in last.tolist():                          # contpte_try_fold, in address order
            self._contpte_try_fold(table, index, table.entries.item(index))

    def get_and_clear_full_ptes_runs(self, mm: MM, runs: PteRuns) -> np.ndarray:
        """get_and_clear_full_ptes for each run: clears them; per run the first entry with
        dirty and young gathered from the whole run."""
        if len(runs.index) == 1:
            pte = self.get_and_clear_full_ptes(mm, runs.first_addr(), int(runs.nr_pages[0]))
            return np.array([pte], np.uint64)
        table = self._pte_table_for_runs(mm, runs)
        if not len(runs.index):
            return np.zeros(0, np.uint64)
        self._unfold_partial_runs(table, runs)
        entries = runs.entry_indices()
        values = table.entries[entries]
        ptes = table.entries[runs.index].copy()
        starts = runs.nr_pages.cumsum() - runs.nr_pages
        after_first = np.ones(len(values), bool)   # the kernel's loop gathers from the second entry on
        after_first[starts] = False
        any_dirty = np.logical_or.reduceat(pte_dirty(values) & after_first, starts)
        any_young = np.logical_or.reduceat(pte_young(values) & after_first, starts)
        ptes = np.where(any_dirty, pte_mkdirty(ptes), ptes)
        ptes = np.where(any_young, ptes | np.uint64(PTE_AF), ptes)
        table.entries[entries] = 0
        return ptes

    def clear_full_ptes_runs(self, mm: MM, runs: PteRuns) -> None:
        if len(runs.index) == 1:
            self.clear_full_ptes(mm, runs.first_addr(), int(runs.nr_pages[0]))
            return
        if not len(runs.index):
            return
        table = self._pte_table_for_runs(mm, runs)
        self._unfold_partial_runs(table, runs)
        table.entries[runs.entry_indices()] = 0

    def wrprotect_ptes_runs(self, mm: MM, runs: PteRuns) -> None:
        if len(runs.index) == 1:
            self.wrprotect_ptes(mm, runs.first_addr(), int(runs.nr_pages[0]))
            return
        if not len(runs.index):
            return
        table = self._pte_table_for_runs(mm, runs)
        self._unfold_partial_runs(table, runs)
        entries = runs.entry_indices()
        table.entries[entries] = pte_wrprotect(table.entries[entries])

    def clear_young_dirty_ptes_runs(self, mm: MM, runs: PteRuns) -> None:
        if len(runs.index) == 1:
            self.clear_young_dirty_ptes(mm, runs.first_addr(), int(runs.nr_pages[0]))
            return
        if not len(runs.index):
            return
        table = self._pte_table_for_runs(mm, runs)
        entries = runs.entry_indices()
        cont = (table.entries[entries] & np.uint64(PTE_CONT)) != 0
        if any_set(cont):   # contpte_clear_young_dirty_ptes: each run widened to whole blocks
            blocks = np.unique(entries[cont] // CONT_PTES)
            entries = np.union1d(entries, (blocks[:, None] * CONT_PTES + _CONT_OFFSETS).reshape(-1))
        table.entries[entries] = pte_mkold(pte_mkclean(table.entries[entries]))

    # PMD primitives.

    @overload
    def _pmd_slot(self, mm: MM, addr: int, alloc: Literal[True]) -> tuple[PmdTable, int]: ...
    @overload
    def _pmd_slot(self, mm: MM, addr: int, alloc: bool) -> tuple[PmdTable | None, int]: ...

    def _pmd_slot(self, mm: MM, addr: int, alloc: bool) -> tuple[PmdTable | None, int]:
        """The PMD table covering addr (allocated if alloc) and addr's index in it."""
        check(addr % PMD_SIZE == 0, "PMD address %#x not 2 MiB aligned", addr)
        return mm.pmd_table(addr, alloc), pmd_index(addr)

    def pmdp_get(self, mm: MM, addr: int) -> int:
        """The raw PMD entry (none, block or table descriptor) covering addr."""
        if addr % PMD_SIZE:
            check(False, "PMD address %#x not 2 MiB aligned", addr)
        table = mm.pmd_tables_by_addr.get(addr >> PUD_SHIFT)
        return 0 if table is None else table.entries.item((addr >> PMD_SHIFT) & (PTRS_PER_TABLE - 1))

    def set_pmd_at(self, mm: MM, addr: int, pmd: int) -> None:
        """Install a PMD block; an empty PTE table in its place is freed."""
        check(pmd_trans_huge(pmd), "set_pmd_at takes a PMD block")
        table, index = self._pmd_slot(mm, addr, alloc=True)
        pte_table = table.ptes.get(index)
        if pte_table is not None:
            check(not any_set(pte_table.entries), "PMD block installed over a populated PTE table")
            mm.pte_table_free(addr)
        else:
            check(table.entries[index] == 0 or pmd_trans_huge(int(table.entries[index])),
                  "PMD slot holds an unknown descriptor")
        if self.journal.recording:
            self.journal.record_entries(table.entries, index)
        table.entries[index] = pmd

    def pmdp_get_and_clear(self, mm: MM, addr: int) -> int:
        table, index = self._pmd_slot(mm, addr, alloc=False)
        if table is None or not pmd_trans_huge(int(table.entries[index])):
            raise MachineBug("no PMD block to clear")
        pmd = int(table.entries[index])
        if self.journal.recording:
            self.journal.record_entries(table.entries, index)
        table.entries[index] = 0
        return pmd

    def pmdp_set_wrprotect(self, mm: MM, addr: int) -> None:
        table, index = self._pmd_slot(mm, addr, alloc=False)
        pmd = 0 if table is None else int(table.entries[index])
        if table is None or not pmd_trans_huge(pmd):
            raise MachineBug("no PMD block to write-protect")
        if self.journal.recording:
            self.journal.record_entries(table.entries, index)
        table.entries[index] = pte_pmd(pte_wrprotect(pmd_pte(pmd)))

    # Lookups for oracles, expects and the user's accesses.

    def lookup(self, mm: MM, addr: int) -> tuple[str, int]:
        """(level, descriptor) of the leaf mapping addr: a PMD block, else the PTE (0: none)."""
        pmd = self.pmdp_get(mm, addr & ~(PMD_SIZE - 1))
        if pmd_trans_huge(pmd):
            return "pmd", pmd
        return "pte", self.ptep_get(mm, addr & ~(PAGE_SIZE - 1))

    def page_at(self, mm: MM, addr: int) -> int | None:
        """The pfn of the page mapped at addr, or None if nothing is present there."""
        level, desc = self.lookup(mm, addr)
        if not pte_present(desc):
            return None
        if level == "pmd":
            return int(pte_pfn(desc)) + ((addr % PMD_SIZE) >> PAGE_SHIFT)
        return int(pte_pfn(desc))

    # The hardware: access and dirty bits on a user access, then the data word.

    def _mark_accessed(self, mm: MM, addr: int, write: bool) -> int:
        """Set AF (and for a write clear RDONLY) as the MMU does; returns the pfn."""
        update_set = PTE_AF
        update_clear = PTE_RDONLY if write else 0
        pmd_table, pmd_index_in_table = _pmd_entry_of(mm, addr)
        desc = 0 if pmd_table is None else pmd_table.entries.item(pmd_index_in_table)
        if pmd_table is not None and pmd_trans_huge(desc):  # the MMU's walk ends at a PMD block
            check(not write or pte_write(desc), "user write to a read-only entry at %#x", addr)
            self._record_entries(pmd_table.entries, pmd_index_in_table)
            pmd_table.entries[pmd_index_in_table] = (desc | update_set) & ~update_clear
            return pte_pfn(desc) + ((addr % PMD_SIZE) >> PAGE_SHIFT)
        table, index = _pte_entry_of(mm, addr)
        desc = 0 if table is None else table.entries.item(index)
        if table is None or not pte_present(desc):
            raise MachineBug(f"user access to an unmapped address {addr:#x}")
        check(not write or pte_write(desc), "user write to a read-only entry at %#x", addr)
        # The MMU sets AF (and DBM's dirty) on the entry it walked, also in a folded block.
        if self.journal.recording:
            self.journal.record_entries(table.entries, index)
        table.entries[index] = (desc | update_set) & ~update_clear
        return pte_pfn(desc)

    def user_read(self, mm: MM, addr: int) -> int:
        """A user load from a present mapping: sets the access flag, returns the data word."""
        page = self._mark_accessed(mm, addr, write=False)
        return self.frames.page_data.item(page)

    def user_write(self, mm: MM, addr: int, value: int) -> None:
        """A user store to a writable mapping: hardware marks it young and dirty."""
        page = self._mark_accessed(mm, addr, write=True)
        self.frames.page_data[page] = value

    # contpte fold validity (oracle 7).

    def _contpte_eligible(self, blocks: np.ndarray) -> np.ndarray:
        """Per block of shape (n, 16): all valid pages of one folio, pfns consecutive
        from a multiple of 16, equal N(e) once the pfn is set aside."""
        pages = (blocks & np.uint64(PTE_TYPE_MASK)) == np.uint64(PTE_TYPE_PAGE)
        pfns = pte_pfn(blocks).astype(np.int64)
        in_range = pages & (pfns < self.frames.nr_frames)
        folios = np.where(in_range, self.frames.page_folio[np.where(in_range, pfns, 0)], -1)
        normalised = contpte_normalise(blocks)
        return (
            in_range.all(axis=1)
            & (pfns[:, 0] % CONT_PTES == 0)
            & (pfns == pfns[:, :1] + _CONT_OFFSETS).all(axis=1)
            & (folios[:, 0] >= 0)
            & (folios == folios[:, :1]).all(axis=1)
            & (normalised == normalised[:, :1]).all(axis=1)
        )

    def _contpte_block_eligible(self, values: list[int]) -> bool:
        """_contpte_eligible for one block given as 16 ints (oracle 7 checks the two agree)."""
        first = values[0]
        if first & PTE_TYPE_MASK != PTE_TYPE_PAGE:
            return False
        pfn = pte_pfn(first)
        if pfn % CONT_PTES or pfn + CONT_PTES > self.frames.nr_frames:
            return False
        folio = self.frames.page_folio.item(pfn)
        if folio < 0 or self.frames.folio_order[folio] < 4:
            return False  # not inside a folio of 16 pages or more
        for offset, value in enumerate(values):  # same N(e) and the pfn advanced by offset
            if (value ^ (first + (offset << PAGE_SHIFT))) & ~CONTPTE_NORMALISE_IGNORED:
                return False
        return self.frames.page_folio.item(pfn + CONT_PTES - 1) == folio  # aligned runs: first and last decide

    def _contpte_may_be_eligible(self, first_entries: np.ndarray) -> np.ndarray:
        """A quick necessary condition per block, from its first entry: a page whose pfn is
        a multiple of 16 in a folio of at least 16 pages."""
        pfns = pte_pfn(first_entries).astype(np.int64)
        candidate = (((first_entries & np.uint64(PTE_TYPE_MASK)) == np.uint64(PTE_TYPE_PAGE))
                     & (pfns % CONT_PTES == 0) & (pfns < self.frames.nr_frames))
        folios = self.frames.page_folio[np.where(candidate, pfns, 0)]
        return candidate & (folios >= 0) & (self.frames.folio_order[np.maximum(folios, 0)] >= 4)

    def contpte_blocks_valid(self, entries: np.ndarray) -> np.ndarray:
        """Per block of a PTE table, oracle 7: no entry has CONT, or all 16 have it and the
        block could be folded (__contpte_try_fold's conditions: valid pages of one folio, pfns
        consecutive from a multiple of 16, equal but for AF, dirty and the pfn)."""
        blocks = entries.reshape(_BLOCKS_PER_TABLE, CONT_PTES)
        cont = pte_cont(blocks)
        folded = cont.all(axis=1)
        return ~cont.any(axis=1) | (folded & self._contpte_eligible(blocks))


__all__ = ["Machine", "Pin", "PteRuns", "DEFAULT_NR_FRAMES", "TRANSACTION_COPY_MAX_FRAMES"]
