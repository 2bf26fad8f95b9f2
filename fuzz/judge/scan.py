"""The whole-array scans the oracles read: one walk of every live process's page tables,
gathered into numpy arrays, and the counts derived from them.

`PageTableScan` gathers every leaf (present PTEs, PMD blocks, swap PTEs) with
the counts the oracles compare against: PTE mappings per pfn, PTE and PMD
mappings per folio, mappings per (folio, process), swap PTEs per slot, RSS per
process, what each pinned page's address maps now, what every mapped page
reads, and which folded contpte blocks are not valid. The rules
themselves are in fuzz.judge.oracles.

Every count is a plain count (the kernel's accessor values, machine/frames.py).
A page's mappings are the present PTEs mapping it; a folio's mappings are the
PTEs mapping any of its pages plus the PMD blocks mapping it.

Speed: the fuzzer runs the oracles after every op, or once per input, on
machines small enough that the number of numpy calls, not their size, is the
cost. Work is done on arrays the size of what is mapped (leaves, allocated
frames, folio heads, pins) rather than the size of the machine wherever
possible; derived counts are computed on first use, so an oracle pays only for
what it reads; what several oracles read (the frame fields' non-zero counts,
the heads, the large ones) is computed once, on the scan.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cached_property
from typing import TYPE_CHECKING, SupportsInt

import numpy as np

from machine.errors import check
from machine.frames import FREE_FOLIO, FrameTable
from machine.pgtable import (
    CONT_PTES,
    HPAGE_PMD_NR,
    PAGE_SHIFT,
    PAGE_SIZE,
    PMD_SHIFT,
    PMD_SIZE,
    PTE_CONT,
    PTE_VALID,
    PTRS_PER_TABLE,
    is_pte_marker,
    pmd_table,
    pmd_trans_huge,
    pte_pfn,
    pte_special,
    pte_swp_offset,
)

if TYPE_CHECKING:
    from machine import Machine

PID_SHIFT = 48            # a leaf's key: pid << 48 | addr (addresses are below 2**48)
ADDR_MASK = (1 << PID_SHIFT) - 1
FOLIO_FIELDS = tuple(name for name in FrameTable.ARRAYS if name.startswith("folio_"))
PAGE_FIELDS = ("page_mapcount", "page_anon_exclusive", "page_data")
EMPTY = np.zeros(0, np.int64)
EMPTY_DESC = np.zeros(0, np.uint64)
_PID_LIMIT = 1 << 14
_TABLE_SHIFT = PTRS_PER_TABLE.bit_length() - 1   # position in a stack of tables >> this: the table
_FOLIO_SHIFT = 16         # a (folio, process) key: folio << 16 | pid
_PAGE_OFFSETS = np.arange(HPAGE_PMD_NR, dtype=np.int64)
_BLOCKS_PER_TABLE = PTRS_PER_TABLE // CONT_PTES
_NOT_A_FRAME = -2         # the "folio" of a pfn beyond the machine, in contpte verdict keys
CONTPTE_VERDICTS_LIMIT = 1 << 16


class ContpteVerdicts:
    """machine.contpte_blocks_valid's verdicts, remembered by block content: a block's
    verdict depends only on its 16 entries and the folios of their pfns, which form the key.

    A scan reads the verdicts it is handed; one kept across scans (the runner's, for a
    fuzzing process) asks the machine only about blocks it has not seen.
    """

    def __init__(self, limit: int = CONTPTE_VERDICTS_LIMIT) -> None:
        self.limit = limit
        self.verdicts: dict[bytes, bool] = {}

    def lookup(self, keys: list[bytes], blocks: np.ndarray,
               judge: Callable[[np.ndarray], np.ndarray]) -> list[bool]:
        """The verdict on each block (keys[i] is blocks[i]'s key): remembered, or judge's, asked
        a table's worth (32 blocks) at a time, since its verdict is per block."""
        unknown = [i for i, key in enumerate(keys) if key not in self.verdicts]
        if len(self.verdicts) + len(unknown) > self.limit:
            self.verdicts.clear()
        for first in range(0, len(unknown), _BLOCKS_PER_TABLE):
            chunk = unknown[first:first + _BLOCKS_PER_TABLE]
            packed = np.zeros((_BLOCKS_PER_TABLE, CONT_PTES), np.uint64)
            packed[:len(chunk)] = blocks[chunk]
            valid = judge(packed.reshape(-1))
            for i, verdict in zip(chunk, valid.tolist(), strict=False):   # packed is padded
                self.verdicts[keys[i]] = verdict
        return [self.verdicts[key] for key in keys]


def where(pid: SupportsInt, addr: SupportsInt) -> str:
    """A detail's subject: "P<pid> <addr>"."""
    return f"P{pid} {addr:#x}"


def key_where(key: SupportsInt) -> str:
    """where() of a packed (pid, addr) key."""
    key = int(key)
    return where(key >> PID_SHIFT, key & ADDR_MASK)


def indices_of(mask: np.ndarray) -> np.ndarray:
    """Where a 1-D mask is true (np.flatnonzero without its wrappers)."""
    return mask.nonzero()[0]


def ints(array: np.ndarray) -> list[int]:
    """array's values as Python ints (for a detail)."""
    return [int(value) for value in array]


def pack_keys(pids: np.ndarray, addrs: np.ndarray) -> np.ndarray:
    """One sortable key per leaf: pid << PID_SHIFT | addr."""
    return (pids.astype(np.int64) << PID_SHIFT) | addrs.astype(np.int64)


def unpack_keys(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The pids and addresses pack_keys packed."""
    if len(keys) == 0:
        return EMPTY, EMPTY
    return keys >> PID_SHIFT, keys & ADDR_MASK


def lookup_keys(sorted_keys: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """The index of each key in sorted_keys, -1 where it is absent."""
    if len(sorted_keys) == 0 or len(keys) == 0:
        return np.full(len(keys), -1, np.int64)
    index = np.minimum(np.searchsorted(sorted_keys, keys), len(sorted_keys) - 1)
    return np.where(sorted_keys[index] == keys, index, -1)


def values_at(values: np.ndarray, index: np.ndarray) -> np.ndarray:
    """values[index] where index >= 0 (a lookup_keys result), -1 elsewhere."""
    if len(values) == 0:
        return np.full(len(index), -1, np.int64)
    return np.where(index >= 0, values[np.maximum(index, 0)], -1)


def joined(arrays: list[np.ndarray], empty: np.ndarray) -> np.ndarray:
    """np.concatenate(arrays), without a copy for one array; empty for none."""
    if len(arrays) == 1:
        return arrays[0]
    return np.concatenate(arrays) if arrays else empty


def occurrences(indices: np.ndarray, length: int) -> np.ndarray:
    """How often each of 0..length-1 occurs in indices (other values ignored)."""
    if len(indices) == 0:
        return np.zeros(length, np.int64)
    inside = (indices >= 0) & (indices < length)
    return np.bincount(indices[inside], minlength=length)


# nr_frames -> each field's values on the reserved frames as FrameTable made them
_RESERVED_TAILS: dict[int, list[tuple[str, np.dtype, tuple[int, ...], bytes]]] = {}


def reserved_frames_pristine(frames: FrameTable) -> bool:
    """Whether every field of every frame from nr_frames on is as FrameTable made it: a
    comparison of bytes per field against a new FrameTable of that size (kept), the cheap
    question to ask before frames.reserved_frames_changed() looks for what changed."""
    nr_frames = frames.nr_frames
    pristine = _RESERVED_TAILS.get(nr_frames)
    if pristine is None:
        made = FrameTable(nr_frames)
        pristine = _RESERVED_TAILS[nr_frames] = [
            (name, tail.dtype, tail.shape, tail.tobytes())
            for name in FrameTable.ARRAYS for tail in (getattr(made, name)[nr_frames:],)]
    for name, dtype, shape, data in pristine:
        tail = getattr(frames, name)[nr_frames:]
        if tail.dtype != dtype or tail.shape != shape or tail.tobytes() != data:
            return False
    return True


class PageTableScan:
    """Every leaf of every live process, gathered into arrays, and the counts derived from them.

    Leaves are in ascending (process, address) order, as `MM.leaves()` yields
    them; the walk is the same one, done per table with numpy. Derived counts
    are computed on first use, so a single oracle pays only for what it reads.
    """

    def __init__(self, machine: Machine, contpte_verdicts: ContpteVerdicts | None = None) -> None:
        self.machine = machine
        self.contpte_verdicts = contpte_verdicts if contpte_verdicts is not None else ContpteVerdicts()
        self.frames = machine.frames
        self.nr_frames = machine.frames.nr_frames
        self._nr_nonzero: dict[str, int] = {}   # nr_nonzero's counts so far
        self.bad_pmds: list[str] = []          # PMD descriptors that are neither block nor table
        self.pte_tables: list[tuple[int, int, np.ndarray]] = []   # (pid, base, entries)
        pmd_leaves: list[tuple[int, int, int]] = []
        for pid in sorted(machine.processes):
            check(0 <= pid < _PID_LIMIT, f"process number {pid} too large for the scan")
            for table in machine.processes[pid].pmd_tables():
                for index, pmd in table.nonzero_entries():
                    addr = table.base + (index << PMD_SHIFT)
                    if pmd_trans_huge(pmd):
                        pmd_leaves.append((pid, addr, pmd))
                    elif pmd_table(pmd) and index in table.ptes:
                        self.pte_tables.append((pid, addr, table.ptes[index].entries))
                    else:
                        self.bad_pmds.append(f"{where(pid, addr)}: PMD descriptor {pmd:#x} "
                                             "is neither a block nor a table with a PTE table")
        self._gather_pmds(pmd_leaves)
        self._gather_ptes()
        self._gather_zero_pages()

    def _gather_pmds(self, pmd_leaves: list[tuple[int, int, int]]) -> None:
        if not pmd_leaves:
            self.pmd_pid = self.pmd_addr = self.pmd_pfn = self.pmd_key = EMPTY
            self.pmd_desc = EMPTY_DESC
            return
        self.pmd_pid = np.array([leaf[0] for leaf in pmd_leaves], np.int64)
        self.pmd_addr = np.array([leaf[1] for leaf in pmd_leaves], np.int64)
        self.pmd_desc = np.array([leaf[2] for leaf in pmd_leaves], np.uint64)
        self.pmd_pfn = pte_pfn(self.pmd_desc).astype(np.int64)
        self.pmd_key = pack_keys(self.pmd_pid, self.pmd_addr)

    def _gather_ptes(self) -> None:
        """Split the non-zero entries of every PTE table into present PTEs, swap PTEs and PTE markers."""
        if not self.pte_tables:
            self.pte_entries = np.zeros((0, PTRS_PER_TABLE), np.uint64)
            self._set_ptes(EMPTY, EMPTY_DESC)
            self._set_swap_ptes(EMPTY, EMPTY_DESC)
            self._set_markers(EMPTY, EMPTY_DESC)
            return
        entries = np.array([table[2] for table in self.pte_tables])
        table_keys = np.array([(pid << PID_SHIFT) | base for pid, base, _ in self.pte_tables], np.int64)
        self.pte_entries = entries                 # (tables, 512), in pte_tables order
        flat = entries.reshape(-1)
        positions = (flat != 0).nonzero()[0]       # table * 512 + index of every non-zero entry
        desc = flat[positions]
        keys = table_keys[positions >> _TABLE_SHIFT] | ((positions & (PTRS_PER_TABLE - 1)) << PAGE_SHIFT)
        present = (desc & np.uint64(PTE_VALID)) != 0
        if np.count_nonzero(present) == len(desc):
            self._set_ptes(keys, desc)
            self._set_swap_ptes(EMPTY, EMPTY_DESC)
            self._set_markers(EMPTY, EMPTY_DESC)
        else:
            marker = ~present & is_pte_marker(desc)
            swap = ~present & ~marker
            self._set_ptes(keys[present], desc[present])
            self._set_swap_ptes(keys[swap], desc[swap])
            self._set_markers(keys[marker], desc[marker])

    def _set_ptes(self, keys: np.ndarray, desc: np.ndarray) -> None:
        """The present PTEs: keys and descriptors, and from them pid, addr and pfn."""
        self.pte_key, self.pte_desc = keys, desc
        self.pte_pid, self.pte_addr = unpack_keys(keys)
        self.pte_pfn = pte_pfn(desc).astype(np.int64) if len(keys) else EMPTY

    def _set_swap_ptes(self, keys: np.ndarray, desc: np.ndarray) -> None:
        """The swap PTEs: keys and descriptors, and from them pid, addr and slot."""
        self.swp_key, self.swp_desc = keys, desc
        self.swp_pid, self.swp_addr = unpack_keys(keys)
        self.swp_slot = pte_swp_offset(desc).astype(np.int64) if len(keys) else EMPTY

    def _gather_zero_pages(self) -> None:
        """Take the zero-page leaves out of the present ones: a special PTE of the zero page
        and a special PMD block of the huge zero folio map no folio (vm_normal_page() is NULL),
        so they count in no mapcount, refcount or RSS. Any other leaf naming a reserved frame
        stays present, where the oracles report it as taken for a folio."""
        frames = self.frames
        zero = (pte_special(self.pte_desc) & (self.pte_pfn == frames.zero_pfn) if len(self.pte_desc)
                else EMPTY.astype(bool))
        self.zero_key, self.zero_desc = self.pte_key[zero], self.pte_desc[zero]
        if np.count_nonzero(zero):
            keep = ~zero
            self.pte_key, self.pte_desc, self.pte_pid = self.pte_key[keep], self.pte_desc[keep], self.pte_pid[keep]
            self.pte_addr, self.pte_pfn = self.pte_addr[keep], self.pte_pfn[keep]
        self.zero_pid, self.zero_addr = unpack_keys(self.zero_key)
        huge_zero = (pte_special(self.pmd_desc) & (self.pmd_pfn == frames.huge_zero_pfn) if len(self.pmd_desc)
                     else EMPTY.astype(bool))
        self.zero_pmd_key, self.zero_pmd_desc = self.pmd_key[huge_zero], self.pmd_desc[huge_zero]
        if np.count_nonzero(huge_zero):
            keep = ~huge_zero
            self.pmd_key, self.pmd_desc, self.pmd_pid = self.pmd_key[keep], self.pmd_desc[keep], self.pmd_pid[keep]
            self.pmd_addr, self.pmd_pfn = self.pmd_addr[keep], self.pmd_pfn[keep]
        self.zero_pmd_pid, self.zero_pmd_addr = unpack_keys(self.zero_pmd_key)

    def _set_markers(self, keys: np.ndarray, desc: np.ndarray) -> None:
        """The PTE markers (swap type SWP_PTE_MARKER): keys and descriptors."""
        self.marker_key, self.marker_desc = keys, desc

    # Frames.

    @cached_property
    def allocated(self) -> np.ndarray:
        """Every pfn that belongs to a folio (page_folio != -1), ascending; the reserved frames
        after nr_frames (the zero page, the huge zero folio) are not the allocator's."""
        return indices_of(self.frames.page_folio[:self.nr_frames] != FREE_FOLIO)

    @cached_property
    def heads(self) -> np.ndarray:
        """Head pfns of every allocated folio (page_folio[f] == f), ascending."""
        allocated = self.allocated
        return allocated[self.frames.page_folio[allocated] == allocated]

    @cached_property
    def large(self) -> np.ndarray:
        """Per head, in heads order: whether its folio is large (order > 0)."""
        return self.frames.folio_order[self.heads] > 0

    @cached_property
    def large_heads(self) -> np.ndarray:
        """Head pfns of every large folio, ascending."""
        return self.heads[self.large]

    def nr_nonzero(self, name: str) -> int:
        """How many of frame field name's values are non-zero (counted once per field asked)."""
        counts = self._nr_nonzero
        count = counts.get(name)
        if count is None:
            count = counts[name] = int(np.count_nonzero(getattr(self.frames, name)[:self.nr_frames]))
        return count

    def zero_outside(self, name: str, pfns: np.ndarray) -> bool:
        """Whether frame field name is zero at every pfn but pfns (ascending, distinct): a count,
        the cheap question to ask before looking for the pfns where it is not."""
        nr_nonzero = self.nr_nonzero(name)
        return nr_nonzero == 0 or np.count_nonzero(getattr(self.frames, name)[pfns]) == nr_nonzero

    def folio_of(self, pfns: np.ndarray) -> np.ndarray:
        """page_folio of each pfn: its head, -1 if free or beyond the machine."""
        if len(pfns) == 0:
            return EMPTY
        in_range = pfns < self.nr_frames
        return np.where(in_range, self.frames.page_folio[np.where(in_range, pfns, 0)], FREE_FOLIO)

    @cached_property
    def pte_folio(self) -> np.ndarray:
        return self.folio_of(self.pte_pfn)

    @cached_property
    def pmd_folio(self) -> np.ndarray:
        return self.folio_of(self.pmd_pfn)

    # Mapping counts, each indexed by pfn (a folio's at its head).

    @cached_property
    def page_pte_mappings(self) -> np.ndarray:
        """Per pfn: present PTEs mapping it (all processes)."""
        return occurrences(self.pte_pfn, self.nr_frames)

    @cached_property
    def folio_pmd_mappings(self) -> np.ndarray:
        """Per head: PMD blocks mapping the folio."""
        return occurrences(self.pmd_folio, self.nr_frames)

    @cached_property
    def folio_mappings(self) -> np.ndarray:
        """Per head: present PTEs mapping any page of the folio plus PMD blocks mapping it."""
        return occurrences(np.concatenate([self.pte_folio, self.pmd_folio]), self.nr_frames)

    @cached_property
    def _folio_mm_keys(self) -> np.ndarray:
        """The (folio << 16 | pid) key of every mapping of a folio, sorted."""
        folios = np.concatenate([self.pte_folio, self.pmd_folio])
        pids = np.concatenate([self.pte_pid, self.pmd_pid])
        mapped = folios >= 0
        return np.sort((folios[mapped] << _FOLIO_SHIFT) | pids[mapped])

    def folio_mm_mappings(self, folios: np.ndarray, pids: np.ndarray) -> np.ndarray:
        """Mappings of each folio by each process (0 for a process that does not exist)."""
        keys = self._folio_mm_keys
        wanted = (folios.astype(np.int64) << _FOLIO_SHIFT) | pids.astype(np.int64)
        return np.searchsorted(keys, wanted, side="right") - np.searchsorted(keys, wanted, side="left")

    @cached_property
    def folio_nr_mms(self) -> np.ndarray:
        """Per head: how many processes map the folio."""
        keys = self._folio_mm_keys
        first = np.ones(len(keys), bool)           # the first mapping of each (folio, process)
        first[1:] = keys[1:] != keys[:-1]
        return occurrences(keys[first] >> _FOLIO_SHIFT, self.nr_frames)

    @cached_property
    def swap_pte_count(self) -> np.ndarray:
        """Per swap slot: swap PTEs referencing it."""
        return occurrences(self.swp_slot, self.machine.swap.nr_slots)

    @cached_property
    def rss(self) -> dict[int, tuple[int, int, int]]:
        """Per live process: (present PTEs of anon pages + 512 x PMD blocks, swap PTEs, present
        PTEs of page-cache pages)."""
        length = max(self.machine.processes, default=0) + 1
        file_pte = self.folio_is_file(self.pte_folio)
        anon = np.bincount(self.pte_pid[~file_pte], minlength=length)
        file = np.bincount(self.pte_pid[file_pte], minlength=length).tolist()
        if len(self.pmd_pid):
            anon += HPAGE_PMD_NR * np.bincount(self.pmd_pid, minlength=length)
        anon, swap = anon.tolist(), np.bincount(self.swp_pid, minlength=length).tolist()
        return {pid: (anon[pid], swap[pid], file[pid]) for pid in self.machine.processes}

    def folio_is_file(self, folios: np.ndarray) -> np.ndarray:
        """Per folio (-1: none): is it a page-cache folio (folio->mapping set)?"""
        ok = (folios >= 0) & (folios < self.nr_frames)   # a corrupt page_folio is the refcount oracle's
        return ok & (self.frames.folio_mapping[np.where(ok, folios, 0)] != 0)

    @cached_property
    def cache_refs(self) -> np.ndarray:
        """Per head: the references the page caches hold (one per page a file's cache maps to
        the folio)."""
        heads = [folio for file in self.machine.files.values() for folio in file.cache.values()]
        return occurrences(np.array(heads, np.int64), self.nr_frames)

    @cached_property
    def swap_cache_refs(self) -> np.ndarray:
        """Per frame: the references the swap cache holds (one per slot naming it as its folio)."""
        cached = self.machine.swap.swap_cache
        return occurrences(cached[cached >= 0], self.nr_frames)

    @cached_property
    def cache_swap_count(self) -> np.ndarray:
        """Per swap slot: shmem page-cache entries holding it."""
        slots = [slot for file in self.machine.files.values() for slot in file.swap.values()]
        return occurrences(np.array(slots, np.int64), self.machine.swap.nr_slots)

    # Pins: every (pin, page) pair, and what its address maps now.

    @cached_property
    def pin_pages(self) -> dict[str, np.ndarray]:
        """Arrays over every (live pin, page index) pair, pins in id order.

        id, index, pid, addr, page (the pinned pfn), live (its process exists),
        mapped (the pfn present at addr in pid now, -1 if none) and
        exclusive_page (the pfn whose PageAnonExclusive §4 reads: the page
        for a PTE map, the head for a PMD map; -1 if none).
        """
        pins = [self.machine.pins[pin_id] for pin_id in sorted(self.machine.pins)]
        if not pins:
            return {name: EMPTY for name in ("id", "index", "pid", "addr", "page", "live",
                                              "mapped", "exclusive_page")}
        sizes = np.array([len(pin.pages) for pin in pins], np.int64)
        index = joined([np.arange(size, dtype=np.int64) for size in sizes.tolist()], EMPTY)
        arrays = {
            "id": np.repeat(np.array([pin.pin_id for pin in pins], np.int64), sizes),
            "index": index,
            "pid": np.repeat(np.array([pin.pid for pin in pins], np.int64), sizes),
            "addr": np.repeat(np.array([pin.addr for pin in pins], np.int64), sizes) + (index << PAGE_SHIFT),
            "page": np.array([page for pin in pins for page in pin.pages], np.int64),
            "live": np.repeat(np.array([pin.pid in self.machine.processes for pin in pins], bool), sizes),
        }
        keys = pack_keys(arrays["pid"], arrays["addr"])
        pte_page = values_at(self.pte_pfn, lookup_keys(self.pte_key, keys))
        arrays["mapped"] = arrays["exclusive_page"] = pte_page
        if len(self.pmd_key):
            pmd_head = values_at(self.pmd_pfn, lookup_keys(self.pmd_key, keys & ~(PMD_SIZE - 1)))
            by_pmd = (pte_page < 0) & (pmd_head >= 0)
            pmd_page = pmd_head + ((arrays["addr"] % PMD_SIZE) >> PAGE_SHIFT)
            arrays["mapped"] = np.where(by_pmd, pmd_page, pte_page)
            arrays["exclusive_page"] = np.where(by_pmd, pmd_head, pte_page)
        return arrays

    # What the rules read beyond the leaves.

    def mapped_words(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """What every mapped page reads: (key, value, source), source a pfn or -1 - swap slot."""
        frames, swap = self.frames, self.machine.swap
        keys: list[np.ndarray] = []
        values: list[np.ndarray] = []
        sources: list[np.ndarray] = []
        if len(self.pte_pfn):
            ok = self.pte_pfn < self.nr_frames
            keys.append(self.pte_key[ok])
            values.append(frames.page_data[self.pte_pfn[ok]])
            sources.append(self.pte_pfn[ok])
        if len(self.pmd_pfn):
            pages = self.pmd_pfn[:, None] + _PAGE_OFFSETS
            ok = pages < self.nr_frames
            keys.append((self.pmd_key[:, None] + (_PAGE_OFFSETS << PAGE_SHIFT))[ok])
            values.append(frames.page_data[pages[ok]])
            sources.append(pages[ok])
        if len(self.zero_key):
            keys.append(self.zero_key)
            values.append(frames.page_data[np.full(len(self.zero_key), frames.zero_pfn)])
            sources.append(np.full(len(self.zero_key), frames.zero_pfn, np.int64))
        if len(self.zero_pmd_key):
            pages = frames.huge_zero_pfn + np.tile(_PAGE_OFFSETS, len(self.zero_pmd_key))
            keys.append((self.zero_pmd_key[:, None] + (_PAGE_OFFSETS << PAGE_SHIFT)).reshape(-1))
            values.append(frames.page_data[pages])
            sources.append(pages)
        if len(self.swp_slot):
            ok = self.swp_slot < swap.nr_slots
            keys.append(self.swp_key[ok])
            values.append(swap.swap_data[self.swp_slot[ok]])
            sources.append(-1 - self.swp_slot[ok])
        return joined(keys, EMPTY), joined(values, EMPTY_DESC), joined(sources, EMPTY)

    def invalid_blocks(self) -> list[tuple[int, int, np.ndarray]]:
        """(pid, addr, entries) of every 16-entry block with a CONT bit that is not a valid
        folded block: `machine.contpte_blocks_valid` rejects it. (A folded block may span two
        VMAs: a VMA split that writes no PTE, as a userfaultfd registration, leaves it folded.)

        A block without a CONT bit is valid as it is. The machine judges the others, packed a
        table's worth (32 blocks) at a time, since its verdict is per block; its verdicts are
        remembered in self.contpte_verdicts.
        """
        machine = self.machine
        if not self.pte_tables:
            return []
        cont = (np.bitwise_or.reduce(self.pte_desc) | np.bitwise_or.reduce(self.swp_desc)) & np.uint64(PTE_CONT) \
            if len(self.pte_desc) + len(self.swp_desc) else 0
        if not cont:
            return []
        blocks = self.pte_entries.reshape(-1, CONT_PTES)
        any_cont = np.bitwise_or.reduce(blocks, axis=1) & np.uint64(PTE_CONT)
        candidates = indices_of(any_cont != 0)
        if len(candidates) == 0:
            return []
        candidate_blocks = blocks[candidates]
        pfns = pte_pfn(candidate_blocks).astype(np.int64)
        in_range = pfns < self.nr_frames
        folios = np.where(in_range, machine.frames.page_folio[np.where(in_range, pfns, 0)], _NOT_A_FRAME)
        content = np.concatenate([candidate_blocks.view(np.int64), folios], axis=1).tobytes()
        row_size = len(content) // len(candidates)
        verdict_keys = [content[start:start + row_size] for start in range(0, len(content), row_size)]
        verdicts = self.contpte_verdicts.lookup(verdict_keys, candidate_blocks, machine.contpte_blocks_valid)
        rejected: list[tuple[int, int, np.ndarray]] = []
        for i, valid in enumerate(verdicts):
            if not valid:
                table, index = divmod(int(candidates[i]), _BLOCKS_PER_TABLE)
                pid, base, _ = self.pte_tables[table]
                rejected.append((pid, base + index * CONT_PTES * PAGE_SIZE, candidate_blocks[i]))
        return rejected
