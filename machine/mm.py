"""Processes (mm_struct), VMAs and the 4-level page-table tree.

Levels 0 and 1 are directories of the next level; level 2 (the PMD table)
holds PMD descriptors (none, a PMD block, or a table descriptor) and the PTE
tables it points to; level 3 (the PTE table) holds 512 raw descriptors.
Table pages are not frames and are not compared (SPEC §5).
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal, overload

import numpy as np

from .arrays import any_set
from .errors import MachineBug, check
from .journal import Journal
from .pgtable import (
    PAGE_SHIFT,
    PAGE_SIZE,
    PMD_SHIFT,
    PMD_TYPE_TABLE,
    PTRS_PER_TABLE,
    pmd_trans_huge,
)


@dataclass
class VMA:
    """A vm_area_struct: private anonymous, or a private or shared mapping of a file.

    pgoff == start >> PAGE_SHIFT always (the anon index of the folios COWed in it); a file
    VMA's file_pgoff is the file page index mapped at start. anon_vma is the id of the
    anon_vma attached (for an anonymous or a private file VMA from its first anon folio
    on; never for a shared one), 0 for none; anon_vma_fork_child says its anon_vma_chain
    also links a parent's anon_vma (anon_vma_fork), which no split or merge undoes.
    account is VM_ACCOUNT: the VMA's pages are charged to the commit (a private writable
    mapping's, kept when it turns read-only but for an anonymous one without an anon_vma).
    """

    start: int
    end: int
    writable: bool
    lineage: int
    file: int | None = None   # file id, None for anonymous memory
    file_pgoff: int = 0
    shared: bool = False      # VM_SHARED
    anon_vma: int = 0         # vma->anon_vma: its id (Machine.anon_vma_alloc), 0: none yet (anon_vma_prepare)
    uffd_ctx: int = 0         # the userfaultfd context registered on it (vm_userfaultfd_ctx), 0: none
    anon_vma_fork_child: bool = False   # vma_is_fork_child: !list_is_singular(&vma->anon_vma_chain)
    account: bool = False     # VM_ACCOUNT

    def copy(self) -> VMA:
        return VMA(self.start, self.end, self.writable, self.lineage, self.file, self.file_pgoff,
                   self.shared, self.anon_vma, self.uffd_ctx, self.anon_vma_fork_child, self.account)

    def linear_page_index(self, addr: int) -> int:
        """The file page index mapped at addr (linear_page_index). Context: a file VMA."""
        return self.file_pgoff + ((addr - self.start) >> PAGE_SHIFT)

    @property
    def uffd_wp(self) -> bool:
        """VM_UFFD_WP: registered for write-protect tracking (every context here is WP)."""
        return self.uffd_ctx != 0

    @property
    def pgoff(self) -> int:
        return self.start >> PAGE_SHIFT

    @property
    def prot(self) -> str:
        return "rw" if self.writable else "ro"

    def contains(self, addr: int) -> bool:
        return self.start <= addr < self.end


def page_table_page(source: np.ndarray | None = None) -> np.ndarray:
    """512 descriptors (zero, or a copy of source) in a page-aligned array, as a page-table
    page is: arm64's pte_batch_hint() reads an entry's place in its contpte block from its
    address, and kernel-c hands the kernel's C the machine's own table."""
    buffer = np.empty(2 * PTRS_PER_TABLE, np.uint64)
    skip = (-buffer.__array_interface__["data"][0] % PAGE_SIZE) // buffer.itemsize
    entries = buffer[skip:skip + PTRS_PER_TABLE]
    if source is None:
        entries.fill(0)
    else:
        entries[:] = source
    return entries


class PteTable:
    """A level-3 table: 512 page or swap descriptors starting at base, page-aligned."""

    __slots__ = ("base", "entries")

    def __init__(self, base: int) -> None:
        self.base = base
        self.entries = page_table_page()

    def clone(self) -> PteTable:
        other = PteTable.__new__(PteTable)
        other.base = self.base
        other.entries = page_table_page(self.entries)
        return other


class PmdTable:
    """A level-2 table: PMD descriptors and the PTE tables they point to."""

    __slots__ = ("base", "entries", "ptes")

    def __init__(self, base: int) -> None:
        self.base = base
        self.entries = np.zeros(PTRS_PER_TABLE, np.uint64)
        self.ptes: dict[int, PteTable] = {}

    def nonzero_entries(self) -> list[tuple[int, int]]:
        """(index, descriptor) of every non-zero entry, ascending: blocks and table descriptors."""
        indices = self.entries.nonzero()[0]
        return list(zip(indices.tolist(), self.entries[indices].tolist(), strict=True))

    def clone(self) -> PmdTable:
        other = PmdTable.__new__(PmdTable)
        other.base = self.base
        other.entries = self.entries.copy()
        other.ptes = {index: table.clone() for index, table in self.ptes.items()}
        return other


PUD_SHIFT = 30
PUD_SIZE = 1 << PUD_SHIFT


def _mergeable(before: VMA, after: VMA) -> bool:
    """Whether after, starting where before ends, can join it (vma_merge's compatibility)."""
    if before.writable != after.writable or before.account != after.account:   # vm_flags
        return False
    if before.lineage != after.lineage or before.uffd_ctx != after.uffd_ctx:
        return False
    if before.file != after.file or before.shared != after.shared or not _anon_vma_mergeable(before, after):
        return False
    return before.file is None or before.linear_page_index(before.end) == after.file_pgoff


def _anon_vma_mergeable(before: VMA, after: VMA) -> bool:
    """is_mergeable_anon_vma: both parts have the same anon_vma (or neither has one), or only one
    has one and it is not a fork child's (vma_is_fork_child: a merge would spread the parent's
    anon_vma lock over more folios)."""
    if before.anon_vma and after.anon_vma:
        return before.anon_vma == after.anon_vma
    if before.anon_vma:
        return not before.anon_vma_fork_child
    return not after.anon_vma_fork_child


def _dup_anon_vma(dst: VMA, src: VMA) -> None:
    """dup_anon_vma: a merge's result without an anon_vma takes the other part's, chain and all."""
    if not dst.anon_vma:
        dst.anon_vma, dst.anon_vma_fork_child = src.anon_vma, src.anon_vma_fork_child


def _vma_start(vma: VMA) -> int:
    return vma.start


def _vma_end(vma: VMA) -> int:
    return vma.end


def pgd_index(addr: int) -> int:
    return (addr >> 39) & (PTRS_PER_TABLE - 1)


def pud_index(addr: int) -> int:
    return (addr >> PUD_SHIFT) & (PTRS_PER_TABLE - 1)


def pmd_index(addr: int) -> int:
    return (addr >> PMD_SHIFT) & (PTRS_PER_TABLE - 1)


def pte_index(addr: int) -> int:
    return (addr >> PAGE_SHIFT) & (PTRS_PER_TABLE - 1)


class MM:
    """One process: VMAs, page tables, RSS counters and MMF_HAS_PINNED."""

    def __init__(self, pid: int, journal: Journal | None = None) -> None:
        self.pid = pid
        self.journal = journal  # the machine's undo journal, for the page-table tree's changes
        self.vmas: list[VMA] = []
        self.pgd: dict[int, dict[int, PmdTable]] = {}
        self.pte_tables: dict[int, PteTable] = {}  # by addr >> PMD_SHIFT: a flat index of the tree
        self.pmd_tables_by_addr: dict[int, PmdTable] = {}  # by addr >> PUD_SHIFT: the same for PMD tables
        self.rss_anon = 0   # MM_ANONPAGES
        self.rss_swap = 0   # MM_SWAPENTS
        self.rss_file = 0   # MM_FILEPAGES + MM_SHMEMPAGES (model: one counter)
        self.has_pinned = False  # MMF_HAS_PINNED

    def clone(self) -> MM:
        other = MM.__new__(MM)
        other.pid = self.pid
        other.journal = None
        other.vmas = [v.copy() for v in self.vmas]
        other.pgd = {i: {j: pmd.clone() for j, pmd in pud.items()} for i, pud in self.pgd.items()}
        # The flat indexes in their own order (the order tables were made in), as a copy must be.
        pmd_tables = {table.base >> PUD_SHIFT: table for pud in other.pgd.values() for table in pud.values()}
        other.pte_tables = {key: pmd_tables[key >> (PUD_SHIFT - PMD_SHIFT)].ptes[pmd_index(key << PMD_SHIFT)]
                            for key in self.pte_tables}
        other.pmd_tables_by_addr = {key: pmd_tables[key] for key in self.pmd_tables_by_addr}
        other.rss_anon = self.rss_anon
        other.rss_swap = self.rss_swap
        other.rss_file = self.rss_file
        other.has_pinned = self.has_pinned
        return other

    @property
    def mm_id(self) -> int:
        """SPEC §2.1: mm_id(Pn) = n + 1, never reused (0 is MM_ID_DUMMY)."""
        return self.pid + 1

    # VMAs.

    def find_vma(self, addr: int) -> VMA | None:
        """The VMA containing addr, or None."""
        index = bisect.bisect_right(self.vmas, addr, key=_vma_start) - 1
        if index >= 0 and self.vmas[index].contains(addr):
            return self.vmas[index]
        return None

    def vmas_intersecting(self, start: int, end: int) -> list[VMA]:
        """The VMAs overlapping [start, end), ascending (VMAs are sorted and disjoint,
        so their ends ascend too)."""
        first = bisect.bisect_right(self.vmas, start, key=_vma_end)
        last = bisect.bisect_left(self.vmas, end, lo=first, key=_vma_start)
        return self.vmas[first:last]

    def vmas_cover(self, start: int, end: int) -> bool:
        """Whether the VMAs cover [start, end) with no hole (madvise's and munmap's ENOMEM
        test)."""
        covered = start
        for vma in self.vmas_intersecting(start, end):
            if vma.start > covered:
                return False
            covered = vma.end
        return covered >= end

    def _vma_position(self, vma: VMA) -> int:
        """The index of vma itself (not of an equal VMA) in the sorted list."""
        index = bisect.bisect_left(self.vmas, vma.start, key=_vma_start)
        check(index < len(self.vmas) and self.vmas[index] is vma, "VMA %#x not in P%s", vma.start, self.pid)
        return index

    def vma_insert(self, vma: VMA) -> None:
        check(not self.vmas_intersecting(vma.start, vma.end), "vma_insert over a mapped range")
        check(vma.start < vma.end, "empty VMA")
        bisect.insort(self.vmas, vma, key=_vma_start)

    def vma_remove(self, vma: VMA) -> None:
        del self.vmas[self._vma_position(vma)]

    def vma_split(self, vma: VMA, addr: int) -> VMA:
        """Split vma at addr (strictly inside); returns the upper part."""
        check(vma.start < addr < vma.end, "vma_split outside the VMA")
        upper = vma.copy()
        upper.start = addr
        if vma.file is not None:
            upper.file_pgoff = vma.linear_page_index(addr)
        vma.end = addr
        self.vmas.insert(self._vma_position(vma) + 1, upper)
        return upper

    def vma_merge(self, vma: VMA) -> VMA:
        """Merge vma with adjacent neighbours of equal prot, VM_ACCOUNT, lineage and userfaultfd
        context (vma_merge: equal vm_flags and vm_userfaultfd_ctx) and, for a file, the same file,
        sharing and consecutive file offsets, and compatible anon_vmas (_anon_vma_mergeable);
        with both only if the two do not bring different anon_vmas together, else with the
        previous one alone (vma_merge_existing_range: can_vma_merge_left, _right). Returns
        the result, which has the anon_vma a part had (dup_anon_vma)."""
        index = self._vma_position(vma)
        before = self.vmas[index - 1] if index > 0 else None
        after = self.vmas[index + 1] if index + 1 < len(self.vmas) else None
        merge_left = before is not None and before.end == vma.start and _mergeable(before, vma)
        merge_right = after is not None and after.start == vma.end and _mergeable(vma, after)
        if merge_left and merge_right:
            assert before is not None and after is not None
            merge_right = not before.anon_vma or not after.anon_vma or before.anon_vma == after.anon_vma
        if merge_right:
            assert after is not None
            vma.end = after.end
            _dup_anon_vma(vma, after)
            del self.vmas[index + 1]
        if merge_left:
            assert before is not None
            before.end = vma.end
            _dup_anon_vma(before, vma)
            del self.vmas[index]
            return before
        return vma

    # Page-table walks (no allocation unless asked).

    @overload
    def pmd_table(self, addr: int, alloc: Literal[True]) -> PmdTable: ...
    @overload
    def pmd_table(self, addr: int, alloc: bool = False) -> PmdTable | None: ...

    def pmd_table(self, addr: int, alloc: bool = False) -> PmdTable | None:
        """The PMD table covering addr; None if absent (allocated, with its PUD, if alloc)."""
        pud = self.pgd.get(pgd_index(addr))
        if pud is None:
            if not alloc:
                return None
            self._record_key(self.pgd, pgd_index(addr))
            pud = self.pgd[pgd_index(addr)] = {}
        table = pud.get(pud_index(addr))
        if table is None and alloc:
            base = addr & ~((1 << PUD_SHIFT) - 1)
            self._record_key(pud, pud_index(addr))
            self._record_key(self.pmd_tables_by_addr, addr >> PUD_SHIFT)
            table = pud[pud_index(addr)] = PmdTable(base)
            self._new_table(table.entries)
            self.pmd_tables_by_addr[addr >> PUD_SHIFT] = table
        return table

    def _record_key(self, mapping: dict, key: int) -> None:
        """Tell an open journal that mapping[key] is about to be set or deleted."""
        if self.journal is not None and self.journal.recording:
            self.journal.record_key(mapping, key)

    def _record_entry(self, table: PmdTable, index: int) -> None:
        """Tell an open journal that table.entries[index] is about to be written."""
        if self.journal is not None and self.journal.recording:
            self.journal.record_entries(table.entries, index)

    def _new_table(self, entries: np.ndarray) -> None:
        """Tell an open journal that a page table with these entries was just made."""
        if self.journal is not None and self.journal.recording:
            self.journal.new_table(entries)

    @overload
    def pte_table(self, addr: int, alloc: Literal[True]) -> PteTable: ...
    @overload
    def pte_table(self, addr: int, alloc: bool = False) -> PteTable | None: ...

    def pte_table(self, addr: int, alloc: bool = False) -> PteTable | None:
        """The PTE table covering addr; None if absent or if a PMD block maps addr."""
        table = self.pte_tables.get(addr >> PMD_SHIFT)
        if table is not None or not alloc:
            return table
        pmd_table = self.pmd_table(addr, alloc)
        if pmd_table is None:
            return None
        index = pmd_index(addr)
        table = pmd_table.ptes.get(index)
        if table is None and alloc:
            check(pmd_table.entries[index] == 0, "PTE table requested under a PMD block")
            self._record_key(pmd_table.ptes, index)
            self._record_key(self.pte_tables, addr >> PMD_SHIFT)
            self._record_entry(pmd_table, index)
            table = pmd_table.ptes[index] = PteTable(addr & ~((1 << PMD_SHIFT) - 1))
            self._new_table(table.entries)
            self.pte_tables[addr >> PMD_SHIFT] = table
            pmd_table.entries[index] = PMD_TYPE_TABLE | (id(table) & ((1 << 36) - 1)) << PAGE_SHIFT
        return table

    def pte_table_free(self, addr: int) -> None:
        """Drop the (empty) PTE table covering addr from the tree."""
        pmd_table = self.pmd_table(addr)
        index = pmd_index(addr)
        if pmd_table is None or index not in pmd_table.ptes:
            raise MachineBug(f"no PTE table at {addr:#x}")
        check(not any_set(pmd_table.ptes[index].entries), "freeing a populated PTE table")
        self._record_key(pmd_table.ptes, index)
        self._record_key(self.pte_tables, addr >> PMD_SHIFT)
        del pmd_table.ptes[index]
        del self.pte_tables[addr >> PMD_SHIFT]

    def pmd_tables_in(self, start: int, end: int) -> list[PmdTable]:
        """The PMD tables present that cover part of [start, end), ascending. A page-table
        walk goes only where tables are (pgd_none and pud_none skip the rest), so its cost
        follows the tables present, not the length of the range."""
        first, last = start >> PUD_SHIFT, (end - 1) >> PUD_SHIFT
        tables = self.pmd_tables_by_addr
        if last - first < len(tables):
            keys = [key for key in range(first, last + 1) if key in tables]
        else:
            keys = sorted(key for key in tables if first <= key <= last)
        return [tables[key] for key in keys]

    def pmd_tables(self) -> Iterator[PmdTable]:
        for pgd_key in sorted(self.pgd):
            pud = self.pgd[pgd_key]
            for pud_key in sorted(pud):
                yield pud[pud_key]

    def leaves(self) -> Iterator[tuple[int, str, int]]:
        """Every non-zero leaf descriptor as (addr, level, descriptor), ascending."""
        for pmd_table in self.pmd_tables():
            for index, pmd in pmd_table.nonzero_entries():
                addr = pmd_table.base + (index << PMD_SHIFT)
                if pmd_trans_huge(pmd):
                    yield addr, "pmd", pmd
                    continue
                table = pmd_table.ptes[index]
                for slot in np.flatnonzero(table.entries):
                    yield addr + (int(slot) << PAGE_SHIFT), "pte", int(table.entries[slot])
