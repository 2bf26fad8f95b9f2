"""The states worth acting on, read off the reference machine (issue 16: generation that
reaches rich states by itself).

The decoder draws the pages of a process that a folio operation is worth aiming at
(folio_addresses_of_note: large folios whose pages differ where batching must split or
gather, pinned, shared, lazyfree, page-cache folios, PMD mappings, zero-page entries,
pages COWed from a private file mapping), every page of a large folio when there is no
such one (large_folio_addresses), the span of the folio behind a page (folio_span): the
range an act on "the folio" covers, in the process's own addresses; and what makes that
folio hazardous to batch over (folio_hazards), so that an act that adds a hazard to a
folio is followed by one that batches over it.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from machine import Machine
from machine.mm import MM, PUD_SHIFT
from machine.pgtable import (
    PAGE_SHIFT,
    PAGE_SIZE,
    PMD_SHIFT,
    PMD_SIZE,
    PTRS_PER_TABLE,
    pmd_trans_huge,
    pte_cont,
    pte_dirty,
    pte_pfn,
    pte_present,
    pte_special,
    pte_uffd_wp,
    pte_write,
)

# The hazards of a folio for batching, one bit each (folio_hazards): mapped by a PMD, maybe
# pinned, mapped by several processes, lazyfree, in the page cache, mapped in part; the
# pages one process maps differing in PageAnonExclusive, being all zero, the uffd-wp bit,
# the dirty bit or the write bit (where a batch must split, or gather what differs); every
# entry read-only while they differ in PageAnonExclusive, uffd-wp or dirty (FPB_RESPECT_WRITE
# no longer splits a batch there: only those bits do); mapped across a VMA edge (a batch
# stops at each VMA's end: fork, zap and try_to_unmap walk VMA by VMA); a folded contpte
# block among its entries (a write to one entry, or a range covering part of the block,
# must unfold it; a copy of part of it must not keep PTE_CONT); a clean page-cache folio
# mapped writable (no write-notify: the dirty bits of its entries are all that will record
# a write, until a zap or an unmap gathers them into PG_dirty).
HAZARDS = ("pmd", "pinned", "shared", "lazyfree", "cache", "part_mapped", "mixed_exclusive", "mixed_zero",
           "mixed_uffd_wp", "mixed_dirty", "mixed_write", "mixed_read_only", "vmas", "cont", "clean_writable")
_PMD, _PINNED, _SHARED, _LAZYFREE, _CACHE, _PART_MAPPED, _MIXED = (1 << bit for bit in range(7))
_MIXED_READ_ONLY, _VMAS, _CONT, _CLEAN_WRITABLE = (
    1 << HAZARDS.index(name) for name in ("mixed_read_only", "vmas", "cont", "clean_writable"))
# The differences a batch that respects the write bit sees only where the write bit agrees.
_MIXED_BESIDE_WRITE = sum(1 << HAZARDS.index(name) for name in ("mixed_exclusive", "mixed_uffd_wp", "mixed_dirty"))


class FolioSpan(NamedTuple):
    """A folio as a process sees it at one page: the address its first page has (or would
    have, for a page-cache folio a private mapping COWed a page of) and its size; file and
    file_index name its page-cache home (file None for anon memory and the zero page)."""

    start: int
    nr_pages: int
    file: int | None
    file_index: int

    @property
    def end(self) -> int:
        return self.start + (self.nr_pages << PAGE_SHIFT)

    @property
    def order(self) -> int:
        return self.nr_pages.bit_length() - 1


def folio_addresses_of_note(machine: Machine, pid: int) -> list[int]:
    """Where pid maps a page of a folio worth acting on, ascending: a large folio (PTE-mapped)
    that is maybe pinned, mapped by more than one process, lazyfree (MADV_FREE), in the page
    cache, or whose pages pid maps differ in PageAnonExclusive, the uffd-wp bit, the dirty bit,
    in being all zero or in the VMA that maps them (where batches must split, or gather what
    differs); every PMD mapping (the head's address); every zero-page entry; and every page a
    private file mapping COWed."""
    mm = machine.processes[pid]
    frames = machine.frames
    private_file = [(vma.start, vma.end) for vma in mm.vmas if vma.file is not None and not vma.shared]
    vma_starts = np.array([vma.start for vma in mm.vmas], np.int64)
    noted: list[int] = []
    for key in sorted(mm.pte_tables):
        entries = mm.pte_tables[key].entries
        index = np.flatnonzero(pte_present(entries))
        if len(index) == 0:
            continue
        special = pte_special(entries[index])
        noted.extend(((key << PMD_SHIFT) + (index[special] << PAGE_SHIFT)).tolist())
        index = index[~special]
        if len(index) == 0:
            continue
        heads = frames.page_folio[pte_pfn(entries[index]).astype(np.int64)]
        if private_file:
            addrs = (key << PMD_SHIFT) + (index << PAGE_SHIFT)
            in_file = np.zeros(len(index), bool)
            for start, end in private_file:
                in_file |= (addrs >= start) & (addrs < end)
            noted.extend(addrs[in_file & frames.folio_anon[heads]].tolist())
        large = frames.folio_order[heads] > 0
        index, heads = index[large], heads[large]
        if len(index) == 0:
            continue
        present = entries[index]
        pages = pte_pfn(present).astype(np.int64)
        folios, first, per_page = np.unique(heads, return_index=True, return_inverse=True)
        mapped = np.bincount(per_page)
        of_note = ((frames.folio_pincount[folios] > 0) | (frames.folio_mm_ids_shared[folios] != 0)
                   | (frames.folio_anon[folios] & ~frames.folio_swapbacked[folios])
                   | (frames.folio_mapping[folios] != 0))
        vma = np.searchsorted(vma_starts, (key << PMD_SHIFT) + (index << PAGE_SHIFT), side="right")
        for differs in (frames.page_anon_exclusive[pages], frames.page_data[pages] == 0, pte_uffd_wp(present),
                        pte_dirty(present), vma != vma[first][per_page]):
            count = np.bincount(per_page, weights=differs.astype(np.int64), minlength=len(folios))
            of_note |= (count > 0) & (count < mapped)
        noted.extend(((key << PMD_SHIFT) + (index[of_note[per_page]] << PAGE_SHIFT)).tolist())
    noted.extend(pmd_mapping_addresses(machine, pid))
    return sorted(set(noted))


def large_folio_addresses(machine: Machine, pid: int) -> list[int]:
    """Every page pid maps of a large folio by a PTE, and the head of every PMD mapping, ascending."""
    mm = machine.processes[pid]
    frames = machine.frames
    found: list[int] = []
    for key in sorted(mm.pte_tables):
        entries = mm.pte_tables[key].entries
        index = np.flatnonzero(pte_present(entries) & ~pte_special(entries))
        heads = frames.page_folio[pte_pfn(entries[index]).astype(np.int64)]
        found.extend(((key << PMD_SHIFT) + (index[frames.folio_order[heads] > 0] << PAGE_SHIFT)).tolist())
    found.extend(pmd_mapping_addresses(machine, pid))
    return sorted(found)


def pmd_mapping_addresses(machine: Machine, pid: int) -> list[int]:
    """The address of every PMD-mapped THP pid maps."""
    mm = machine.processes[pid]
    return [(key << PUD_SHIFT) + (slot << PMD_SHIFT) for key in sorted(mm.pmd_tables_by_addr)
            for slot, pmd in mm.pmd_tables_by_addr[key].nonzero_entries() if pmd_trans_huge(pmd)]


def folio_span(machine: Machine, pid: int, addr: int) -> FolioSpan:
    """The folio behind pid's page at addr: a PMD mapping's THP, a PTE-mapped folio, the
    page-cache folio an anon page of a private file mapping was COWed from, else the page alone."""
    mm = machine.processes[pid]
    frames = machine.frames
    level, desc = machine.lookup(mm, addr)
    if level == "pmd":
        head = int(pte_pfn(desc))
        return FolioSpan(addr & ~(PMD_SIZE - 1), PMD_SIZE >> PAGE_SHIFT, _file_of(machine, head),
                         int(frames.folio_index[head]))
    page = addr - addr % PAGE_SIZE
    if not pte_present(desc) or pte_special(desc):
        return FolioSpan(page, 1, None, 0)
    pfn = int(pte_pfn(desc))
    head = int(frames.page_folio[pfn])
    file = _file_of(machine, head)
    if file is not None or not frames.folio_anon[head]:
        return FolioSpan(page - ((pfn - head) << PAGE_SHIFT), int(frames.folio_nr_pages(head)), file,
                         int(frames.folio_index[head]))
    vma = mm.find_vma(addr)
    if vma is not None and vma.file is not None and vma.file in machine.files:   # a page COWed from the file
        index = vma.linear_page_index(page)
        cached = machine.files[vma.file].cache.get(index)
        if cached is not None:
            first = int(frames.folio_index[cached])
            return FolioSpan(page - ((index - first) << PAGE_SHIFT), int(frames.folio_nr_pages(cached)),
                             vma.file, first)
    return FolioSpan(page - ((pfn - head) << PAGE_SHIFT), int(frames.folio_nr_pages(head)), None, 0)


def _file_of(machine: Machine, folio: int) -> int | None:
    mapping = int(machine.frames.folio_mapping[folio])
    return mapping - 1 if mapping else None


def folio_hazards(machine: Machine, pid: int, addr: int) -> int:
    """The HAZARDS bits of the folio pid maps at addr (0 where it maps none, or the zero page)."""
    mm = machine.processes[pid]
    frames = machine.frames
    level, desc = machine.lookup(mm, addr)
    if level == "pmd":
        return _PMD | _folio_bits(machine, int(pte_pfn(desc)))
    if not pte_present(desc) or pte_special(desc):
        return 0
    pfn = int(pte_pfn(desc))
    head = int(frames.page_folio[pfn])
    nr_pages = int(frames.folio_nr_pages(head))
    bits = _folio_bits(machine, head)
    if nr_pages == 1:
        return bits
    page = addr - addr % PAGE_SIZE
    start = page - ((pfn - head) << PAGE_SHIFT)
    entries = _ptes(mm, start, start + (nr_pages << PAGE_SHIFT))
    entries = entries[pte_present(entries) & ~pte_special(entries)]
    pages = pte_pfn(entries).astype(np.int64)
    mine = (pages >= head) & (pages < head + nr_pages)
    entries, pages = entries[mine], pages[mine]
    if len(pages) < nr_pages:
        bits |= _PART_MAPPED
    for bit, differs in enumerate((frames.page_anon_exclusive[pages], frames.page_data[pages] == 0,
                                   pte_uffd_wp(entries), pte_dirty(entries), pte_write(entries))):
        if differs.any() and not differs.all():
            bits |= _MIXED << bit
    if bits & _MIXED_BESIDE_WRITE and not pte_write(entries).any():
        bits |= _MIXED_READ_ONLY
    if pte_cont(entries).any():
        bits |= _CONT
    if bits & _CACHE and not frames.folio_dirty[head] and pte_write(entries).any():
        bits |= _CLEAN_WRITABLE
    if len(mm.vmas_intersecting(start, start + (nr_pages << PAGE_SHIFT))) > 1:
        bits |= _VMAS
    return bits


def _folio_bits(machine: Machine, folio: int) -> int:
    frames = machine.frames
    return ((_PINNED if frames.folio_pincount[folio] > 0 else 0)
            | (_SHARED if frames.folio_mm_ids_shared[folio] else 0)
            | (_LAZYFREE if frames.folio_anon[folio] and not frames.folio_swapbacked[folio] else 0)
            | (_CACHE if frames.folio_mapping[folio] != 0 else 0))


def _ptes(mm: MM, start: int, end: int) -> np.ndarray:
    """mm's entries from start to end (none where it has no PTE table), start clipped at 0."""
    start = max(start, 0)
    parts = []
    for key in range(start >> PMD_SHIFT, ((end - 1) >> PMD_SHIFT) + 1):
        low, high = max(start, key << PMD_SHIFT), min(end, (key + 1) << PMD_SHIFT)
        first, last = (low >> PAGE_SHIFT) % PTRS_PER_TABLE, ((high - 1) >> PAGE_SHIFT) % PTRS_PER_TABLE + 1
        table = mm.pte_tables.get(key)
        parts.append(np.zeros(last - first, np.uint64) if table is None else table.entries[first:last])
    return np.concatenate(parts) if parts else np.zeros(0, np.uint64)
