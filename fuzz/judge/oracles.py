"""The seven oracles of SPEC §6, checked on one machine from one scan of its page tables.

`PageTableScan` walks every live process's page tables once and gathers every
leaf into numpy arrays (present PTEs, PMD blocks, swap PTEs), with the counts
the oracles compare against: PTE mappings per pfn, PTE and PMD mappings per
folio, mappings per (folio, process), swap PTEs per slot, RSS per process, and
what each pinned page's address maps now. Each `check_<name>(machine, shadow)`
builds its own scan; `check_oracles` builds one and runs all seven on it.

Every count is a plain count (the kernel's accessor values, machine/frames.py).
A page's mappings are the present PTEs mapping it; a folio's mappings are the
PTEs mapping any of its pages plus the PMD blocks mapping it.

Each oracle returns failure details (empty: it holds). A detail names its
subject first (`pfn 37: ...`, `folio 32 (order 4): ...`, `P1 0x200000: ...`,
`pin 2 page 5 (P0 0x205000): ...`, `slot 9: ...`); a check that finds many
alike reports the first MAX_DETAILS and how many more.

Speed: the fuzzer runs this after every op, or once per input, on machines
small enough that the number of numpy calls, not their size, is the cost. Work
is done on arrays the size of what is mapped (leaves, allocated frames, folio
heads, pins) rather than the size of the machine wherever possible; a check
first asks a cheap question (a count, an equality) and only looks for the
culprits, and builds its messages, when that fails; a check skips what is
absent (no PMD blocks, no swap entries, no pins, no large folio); and what
several oracles read (the frame fields' non-zero counts, the heads, the large
ones) is computed once, on the scan.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Collection
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any, SupportsInt

import numpy as np

from machine.errors import check
from machine.frames import FREE_FOLIO, FrameTable
from machine.pgtable import (
    CONT_PTES,
    HPAGE_PMD_NR,
    HPAGE_PMD_ORDER,
    PAGE_SHIFT,
    PAGE_SIZE,
    PMD_SHIFT,
    PMD_SIZE,
    PMD_TYPE_TABLE,
    PTE_CONT,
    PTE_SWP_EXCLUSIVE,
    PTE_TYPE,
    PTE_TYPE_MASK,
    PTE_VALID,
    PTE_WRITE,
    PTRS_PER_TABLE,
    SWP_TYPE_MASK,
    TASK_SIZE,
    pmd_table,
    pmd_trans_huge,
    pte_cont,
    pte_dirty,
    pte_pfn,
    pte_swp_offset,
    pte_young,
)

if TYPE_CHECKING:
    from fuzz.judge.shadow import Shadow
    from machine import Machine
    from machine.mm import MM

GUP_PIN_COUNTING_BIAS = 1024
MAX_DETAILS = 16          # details reported per check before "... and N more"

_PID_SHIFT = 48           # a leaf's key: pid << 48 | addr (addresses are below 2**48)
_PID_LIMIT = 1 << 14
_TABLE_SHIFT = PTRS_PER_TABLE.bit_length() - 1   # position in a stack of tables >> this: the table
_FOLIO_SHIFT = 16         # a (folio, process) key: folio << 16 | pid
_PAGE_OFFSETS = np.arange(HPAGE_PMD_NR, dtype=np.int64)
_BLOCKS_PER_TABLE = PTRS_PER_TABLE // CONT_PTES
_FOLIO_FIELDS = tuple(name for name in FrameTable.ARRAYS if name.startswith("folio_"))
_PAGE_FIELDS = ("page_mapcount", "page_anon_exclusive", "page_data")
_LARGE_FOLIO_FIELDS = ("folio_large_mapcount", "folio_entire_mapcount", "folio_mm_id", "folio_mm_id_mapcount",
                       "folio_mm_ids_shared")   # free values on an order-0 folio
_NOT_A_FRAME = -2         # the "folio" of a pfn beyond the machine, in contpte verdict keys
_ADDR_MASK = (1 << _PID_SHIFT) - 1
_EMPTY = np.zeros(0, np.int64)
_EMPTY_DESC = np.zeros(0, np.uint64)

# machine.contpte_blocks_canonical verdicts by block: a block's verdict depends
# only on its 16 entries and the folios of their pfns, which form the key.
_contpte_verdicts: dict[bytes, bool] = {}
_CONTPTE_VERDICTS_LIMIT = 1 << 16


def _where(pid: SupportsInt, addr: SupportsInt) -> str:
    return f"P{pid} {addr:#x}"


def _key_where(key: SupportsInt) -> str:
    key = int(key)
    return _where(key >> _PID_SHIFT, key & _ADDR_MASK)


def _details(items: Collection[Any], describe: Callable[..., str]) -> list[str]:
    """describe(item) for the first MAX_DETAILS items, then how many more there were."""
    if len(items) == 0:
        return []
    items = list(items)
    details = [describe(item) for item in items[:MAX_DETAILS]]
    if len(items) > MAX_DETAILS:
        details.append(f"... and {len(items) - MAX_DETAILS} more like the above")
    return details


def _indices(mask: np.ndarray) -> np.ndarray:
    """Where a 1-D mask is true (np.flatnonzero without its wrappers)."""
    return mask.nonzero()[0]


def _ints(array: np.ndarray) -> list[int]:
    return [int(value) for value in array]


def _keys(pids: np.ndarray, addrs: np.ndarray) -> np.ndarray:
    return (pids.astype(np.int64) << _PID_SHIFT) | addrs.astype(np.int64)


def _unpack_keys(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The pids and addresses _keys packed."""
    if len(keys) == 0:
        return _EMPTY, _EMPTY
    return keys >> _PID_SHIFT, keys & _ADDR_MASK


def _lookup(sorted_keys: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """The index of each key in sorted_keys, -1 where it is absent."""
    if len(sorted_keys) == 0 or len(keys) == 0:
        return np.full(len(keys), -1, np.int64)
    index = np.minimum(np.searchsorted(sorted_keys, keys), len(sorted_keys) - 1)
    return np.where(sorted_keys[index] == keys, index, -1)


def _found(values: np.ndarray, index: np.ndarray) -> np.ndarray:
    """values[index] where index >= 0 (a _lookup result), -1 elsewhere."""
    if len(values) == 0:
        return np.full(len(index), -1, np.int64)
    return np.where(index >= 0, values[np.maximum(index, 0)], -1)


def _joined(arrays: list[np.ndarray], empty: np.ndarray) -> np.ndarray:
    """np.concatenate(arrays), without a copy for one array; empty for none."""
    if len(arrays) == 1:
        return arrays[0]
    return np.concatenate(arrays) if arrays else empty


def _count(indices: np.ndarray, length: int) -> np.ndarray:
    """How often each of 0..length-1 occurs in indices (other values ignored)."""
    if len(indices) == 0:
        return np.zeros(length, np.int64)
    inside = (indices >= 0) & (indices < length)
    return np.bincount(indices[inside], minlength=length)


class PageTableScan:
    """Every leaf of every live process, gathered into arrays, and the counts derived from them.

    Leaves are in ascending (process, address) order, as `MM.leaves()` yields
    them; the walk is the same one, done per table with numpy. Derived counts
    are computed on first use, so a single oracle pays only for what it reads.
    """

    def __init__(self, machine: Machine) -> None:
        self.machine = machine
        self.frames = machine.frames
        self.nr_frames = machine.frames.nr_frames
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
                        self.bad_pmds.append(f"{_where(pid, addr)}: PMD descriptor {pmd:#x} "
                                             "is neither a block nor a table with a PTE table")
        self._gather_pmds(pmd_leaves)
        self._gather_ptes()

    def _gather_pmds(self, pmd_leaves: list[tuple[int, int, int]]) -> None:
        if not pmd_leaves:
            self.pmd_pid = self.pmd_addr = self.pmd_pfn = self.pmd_key = _EMPTY
            self.pmd_desc = _EMPTY_DESC
            return
        self.pmd_pid = np.array([leaf[0] for leaf in pmd_leaves], np.int64)
        self.pmd_addr = np.array([leaf[1] for leaf in pmd_leaves], np.int64)
        self.pmd_desc = np.array([leaf[2] for leaf in pmd_leaves], np.uint64)
        self.pmd_pfn = pte_pfn(self.pmd_desc).astype(np.int64)
        self.pmd_key = _keys(self.pmd_pid, self.pmd_addr)

    def _gather_ptes(self) -> None:
        """Split the non-zero entries of every PTE table into present and swap PTEs."""
        if not self.pte_tables:
            self.pte_entries = np.zeros((0, PTRS_PER_TABLE), np.uint64)
            self._set_ptes(_EMPTY, _EMPTY_DESC)
            self._set_swap_ptes(_EMPTY, _EMPTY_DESC)
            return
        entries = np.array([table[2] for table in self.pte_tables])
        table_keys = np.array([(pid << _PID_SHIFT) | base for pid, base, _ in self.pte_tables], np.int64)
        self.pte_entries = entries                 # (tables, 512), in pte_tables order
        flat = entries.reshape(-1)
        positions = (flat != 0).nonzero()[0]       # table * 512 + index of every non-zero entry
        desc = flat[positions]
        keys = table_keys[positions >> _TABLE_SHIFT] | ((positions & (PTRS_PER_TABLE - 1)) << PAGE_SHIFT)
        present = (desc & np.uint64(PTE_VALID)) != 0
        if np.count_nonzero(present) == len(desc):
            self._set_ptes(keys, desc)
            self._set_swap_ptes(_EMPTY, _EMPTY_DESC)
        else:
            swap = ~present
            self._set_ptes(keys[present], desc[present])
            self._set_swap_ptes(keys[swap], desc[swap])

    def _set_ptes(self, keys: np.ndarray, desc: np.ndarray) -> None:
        """The present PTEs: keys and descriptors, and from them pid, addr and pfn."""
        self.pte_key, self.pte_desc = keys, desc
        self.pte_pid, self.pte_addr = _unpack_keys(keys)
        self.pte_pfn = pte_pfn(desc).astype(np.int64) if len(keys) else _EMPTY

    def _set_swap_ptes(self, keys: np.ndarray, desc: np.ndarray) -> None:
        """The swap PTEs: keys and descriptors, and from them pid, addr and slot."""
        self.swp_key, self.swp_desc = keys, desc
        self.swp_pid, self.swp_addr = _unpack_keys(keys)
        self.swp_slot = pte_swp_offset(desc).astype(np.int64) if len(keys) else _EMPTY

    # Frames.

    @cached_property
    def allocated(self) -> np.ndarray:
        """Every pfn that belongs to a folio (page_folio != -1), ascending."""
        return _indices(self.frames.page_folio != FREE_FOLIO)

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

    @cached_property
    def nr_nonzero(self) -> dict[str, int]:
        """Per folio and page field of the frame table: how many of its values are non-zero."""
        return {name: int(np.count_nonzero(getattr(self.frames, name))) for name in _FOLIO_FIELDS + _PAGE_FIELDS}

    def zero_outside(self, name: str, pfns: np.ndarray) -> bool:
        """Whether frame field name is zero at every pfn but pfns (ascending, distinct): a count,
        the cheap question to ask before looking for the pfns where it is not."""
        nr_nonzero = self.nr_nonzero[name]
        return nr_nonzero == 0 or np.count_nonzero(getattr(self.frames, name)[pfns]) == nr_nonzero

    def folio_of(self, pfns: np.ndarray) -> np.ndarray:
        """page_folio of each pfn: its head, -1 if free or beyond the machine."""
        if len(pfns) == 0:
            return _EMPTY
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
        return _count(self.pte_pfn, self.nr_frames)

    @cached_property
    def folio_pmd_mappings(self) -> np.ndarray:
        """Per head: PMD blocks mapping the folio."""
        return _count(self.pmd_folio, self.nr_frames)

    @cached_property
    def folio_mappings(self) -> np.ndarray:
        """Per head: present PTEs mapping any page of the folio plus PMD blocks mapping it."""
        return _count(np.concatenate([self.pte_folio, self.pmd_folio]), self.nr_frames)

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
        return _count(keys[first] >> _FOLIO_SHIFT, self.nr_frames)

    @cached_property
    def swap_pte_count(self) -> np.ndarray:
        """Per swap slot: swap PTEs referencing it."""
        return _count(self.swp_slot, self.machine.swap.nr_slots)

    @cached_property
    def rss(self) -> dict[int, tuple[int, int]]:
        """Per live process: (present PTEs + 512 x PMD blocks, swap PTEs)."""
        length = max(self.machine.processes, default=0) + 1
        anon = np.bincount(self.pte_pid, minlength=length)
        if len(self.pmd_pid):
            anon += HPAGE_PMD_NR * np.bincount(self.pmd_pid, minlength=length)
        anon, swap = anon.tolist(), np.bincount(self.swp_pid, minlength=length).tolist()
        return {pid: (anon[pid], swap[pid]) for pid in self.machine.processes}

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
            return {name: _EMPTY for name in ("id", "index", "pid", "addr", "page", "live",
                                              "mapped", "exclusive_page")}
        sizes = np.array([len(pin.pages) for pin in pins], np.int64)
        index = _joined([np.arange(size, dtype=np.int64) for size in sizes.tolist()], _EMPTY)
        arrays = {
            "id": np.repeat(np.array([pin.pin_id for pin in pins], np.int64), sizes),
            "index": index,
            "pid": np.repeat(np.array([pin.pid for pin in pins], np.int64), sizes),
            "addr": np.repeat(np.array([pin.addr for pin in pins], np.int64), sizes) + (index << PAGE_SHIFT),
            "page": np.array([page for pin in pins for page in pin.pages], np.int64),
            "live": np.repeat(np.array([pin.pid in self.machine.processes for pin in pins], bool), sizes),
        }
        keys = _keys(arrays["pid"], arrays["addr"])
        pte_page = _found(self.pte_pfn, _lookup(self.pte_key, keys))
        arrays["mapped"] = arrays["exclusive_page"] = pte_page
        if len(self.pmd_key):
            pmd_head = _found(self.pmd_pfn, _lookup(self.pmd_key, keys & ~(PMD_SIZE - 1)))
            by_pmd = (pte_page < 0) & (pmd_head >= 0)
            pmd_page = pmd_head + ((arrays["addr"] % PMD_SIZE) >> PAGE_SHIFT)
            arrays["mapped"] = np.where(by_pmd, pmd_page, pte_page)
            arrays["exclusive_page"] = np.where(by_pmd, pmd_head, pte_page)
        return arrays


# --- 1. mapcount -------------------------------------------------------------

def _check_mapcount(machine: Machine, shadow: Shadow, scan: PageTableScan) -> list[str]:
    frames = machine.frames
    allocated = scan.allocated
    found = scan.page_pte_mappings[allocated]
    wrong = _indices(frames.page_mapcount[allocated] != found)
    failures = _details(wrong, lambda i: f"pfn {allocated[i]}: _mapcount {frames.page_mapcount[allocated[i]]}, "
                                         f"mappings found {found[i]}")

    large = scan.large_heads
    if len(large):
        mappings, pmd_mappings = scan.folio_mappings[large], scan.folio_pmd_mappings[large]
        wrong = _indices(frames.folio_large_mapcount[large] != mappings)
        failures += _details(wrong, lambda i: (
            f"folio {large[i]} (order {frames.folio_order[large[i]]}): _large_mapcount "
            f"{frames.folio_large_mapcount[large[i]]}, mappings found {mappings[i]}"))
        wrong = _indices(frames.folio_entire_mapcount[large] != pmd_mappings)
        failures += _details(wrong, lambda i: (
            f"folio {large[i]} (order {frames.folio_order[large[i]]}): _entire_mapcount "
            f"{frames.folio_entire_mapcount[large[i]]}, PMD mappings found {pmd_mappings[i]}"))
        failures += _check_mm_ids(machine, scan, large)
    if not all(scan.zero_outside(name, large) for name in _LARGE_FOLIO_FIELDS):
        failures += _check_small_folio_fields(frames, scan.heads[~scan.large])

    for pid in sorted(machine.processes):
        mm = machine.processes[pid]
        anon, swap = scan.rss[pid]
        if mm.rss_anon != anon:
            failures.append(f"P{pid}: MM_ANONPAGES {mm.rss_anon}, present pages found {anon}")
        if mm.rss_swap != swap:
            failures.append(f"P{pid}: MM_SWAPENTS {mm.rss_swap}, swap entries found {swap}")
    return failures


def _check_small_folio_fields(frames: FrameTable, small: np.ndarray) -> list[str]:
    """The large-folio fields of order-0 folios (small: their heads) hold their free values."""
    if len(small) == 0:
        return []
    stray = (frames.folio_large_mapcount[small] != 0) | (frames.folio_entire_mapcount[small] != 0) \
        | frames.folio_mm_id[small].any(axis=1) | frames.folio_mm_id_mapcount[small].any(axis=1) \
        | frames.folio_mm_ids_shared[small]
    return _details(small[stray], lambda f: (
        f"folio {f} (order 0): large-folio fields set (_large_mapcount {frames.folio_large_mapcount[f]}, "
        f"_entire_mapcount {frames.folio_entire_mapcount[f]}, mm_id {_ints(frames.folio_mm_id[f])}, "
        f"mm_id_mapcount {_ints(frames.folio_mm_id_mapcount[f])}, "
        f"shared {bool(frames.folio_mm_ids_shared[f])})"))


def _check_mm_ids(machine: Machine, scan: PageTableScan, large: np.ndarray) -> list[str]:
    """MM_ID of large folios: a slot in use counts between 1 and its process's mappings, a free
    slot counts 0, no mm_id twice, and a clear shared bit means one process maps the folio."""
    frames = machine.frames
    failures: list[str] = []
    mm_ids = frames.folio_mm_id[large]                 # (folios, slots)
    slot_counts = frames.folio_mm_id_mapcount[large]
    in_use = mm_ids != 0
    pids = mm_ids - 1
    found = scan.folio_mm_mappings(large[:, None], pids)
    miscounted = in_use & ((slot_counts > found) | (slot_counts < 1))
    stale = ~in_use & (slot_counts != 0)
    if np.count_nonzero(miscounted) or np.count_nonzero(stale):
        for slot in (0, 1):
            failures += _details(_indices(miscounted[:, slot]), lambda i, slot=slot: (
                f"folio {large[i]}: MM_ID slot {slot} (P{pids[i, slot]}) counts {slot_counts[i, slot]}, "
                f"mappings by that process found {found[i, slot]}"))
            failures += _details(large[stale[:, slot]], lambda f, slot=slot: (
                f"folio {f}: free MM_ID slot {slot} has mapcount {frames.folio_mm_id_mapcount[f, slot]}"))
    twice = large[in_use[:, 0] & (mm_ids[:, 0] == mm_ids[:, 1])]
    failures += _details(twice, lambda f: f"folio {f}: both MM_ID slots hold mm_id {frames.folio_mm_id[f, 0]}")
    if len(machine.processes) > 1:                    # else no folio is mapped by two processes
        not_shared = large[~frames.folio_mm_ids_shared[large] & (scan.folio_nr_mms[large] > 1)]
        failures += _details(not_shared, lambda f: (
            f"folio {f}: shared bit clear but mapped by {scan.folio_nr_mms[f]} processes"))
    return failures


# --- 2. refcount -------------------------------------------------------------

def _check_refcount(machine: Machine, shadow: Shadow, scan: PageTableScan) -> list[str]:
    frames = machine.frames
    failures = _check_folio_structure(frames, scan)
    heads = scan.heads

    pins = scan.pin_pages
    if len(pins["id"]):
        pin_folio = scan.folio_of(pins["page"])
        unpinnable = _indices(pin_folio < 0)
        failures += _details(unpinnable, lambda i: (
            f"pin {pins['id'][i]} page {pins['index'][i]}: holds pfn {pins['page'][i]}, which is "
            + ("free" if pins["page"][i] < scan.nr_frames else "beyond the machine")))
        pin_pairs = _count(pin_folio, scan.nr_frames)[heads]
        pin_refs = np.where(scan.large, pin_pairs, GUP_PIN_COUNTING_BIAS * pin_pairs)
        expected_pincount = np.where(scan.large, pin_pairs, 0)
    else:
        pin_pairs = pin_refs = expected_pincount = np.zeros(len(heads), np.int64)
    mappings = scan.folio_mappings[heads]

    wrong = _indices(frames.folio_refcount[heads] != mappings + pin_refs)
    failures += _details(wrong, lambda i: (
        f"folio {heads[i]} (order {frames.folio_order[heads[i]]}): refcount {frames.folio_refcount[heads[i]]}, "
        f"mappings {mappings[i]} + pin references {pin_refs[i]} = {mappings[i] + pin_refs[i]}"))
    wrong = _indices(frames.folio_pincount[heads] != expected_pincount)
    failures += _details(wrong, lambda i: (
        f"folio {heads[i]} (order {frames.folio_order[heads[i]]}): _pincount "
        f"{frames.folio_pincount[heads[i]]}, pinned pages found {expected_pincount[i]}"))
    leaked = heads[(mappings == 0) & (pin_pairs == 0)]
    failures += _details(leaked, lambda f: f"folio {f} (order {frames.folio_order[f]}): "
                                           "allocated but neither mapped nor pinned (leak)")

    for level, pids, addrs, pfns, folios in (
            ("PTE", scan.pte_pid, scan.pte_addr, scan.pte_pfn, scan.pte_folio),
            ("PMD", scan.pmd_pid, scan.pmd_addr, scan.pmd_pfn, scan.pmd_folio)):
        bad = _indices(folios < 0)
        failures += _details(bad, lambda i, level=level, pids=pids, addrs=addrs, pfns=pfns: (
            f"{_where(pids[i], addrs[i])}: {level} maps pfn {pfns[i]}, which is "
            + ("free" if pfns[i] < scan.nr_frames else "beyond the machine")))
    return failures


def _check_folio_structure(frames: FrameTable, scan: PageTableScan) -> list[str]:
    """page_folio agrees with the heads' orders; free frames and tail pages hold free values."""
    failures: list[str] = []
    heads, allocated = scan.heads, scan.allocated
    # Every allocated frame a head of order 0: the folios tile the allocated frames.
    if len(heads) != len(allocated) or np.count_nonzero(frames.folio_order[heads]):
        failures += _check_folio_runs(frames, scan)
    for name in _FOLIO_FIELDS:
        if scan.zero_outside(name, heads):
            continue
        array = getattr(frames, name)
        set_ = array.any(axis=1) if array.ndim == 2 else array != 0
        set_[heads] = False
        failures += _details(_indices(set_), lambda pfn, name=name, array=array: (
            f"pfn {pfn}: {name} {_ints(array[pfn]) if array.ndim == 2 else array[pfn]} on a "
            + ("free frame" if frames.page_folio[pfn] == FREE_FOLIO else "tail page")))
    for name in _PAGE_FIELDS:
        if scan.zero_outside(name, allocated):
            continue
        array = getattr(frames, name)
        stray = _indices((array != 0) & (frames.page_folio == FREE_FOLIO))
        failures += _details(stray, lambda pfn, name=name, array=array: (
            f"pfn {pfn}: {name} {array[pfn]} on a free frame"))
    return failures


def _check_folio_runs(frames: FrameTable, scan: PageTableScan) -> list[str]:
    """Each head's order is valid, its run of 2**order frames naturally aligned inside the
    machine, and the runs tile exactly the allocated frames, each frame naming its own head."""
    failures: list[str] = []
    page_folio = frames.page_folio
    heads, allocated = scan.heads, scan.allocated
    orders = frames.folio_order[heads].astype(np.int64)
    bad_order = (orders < 0) | (orders > HPAGE_PMD_ORDER) | (orders == 1)
    sizes = np.left_shift(1, np.where(bad_order, 0, orders))
    placed = ~bad_order & (heads % sizes == 0) & (heads + sizes <= scan.nr_frames)
    if not placed.all():
        failures += _details(heads[bad_order], lambda f: f"folio {f}: bad order {frames.folio_order[f]}")
        failures += _details(heads[~bad_order & ~placed], lambda f: (
            f"folio {f}: order {frames.folio_order[f]} run is not naturally aligned inside the machine"))
        heads, sizes = heads[placed], sizes[placed]
    starts = np.cumsum(sizes) - sizes
    owners = np.repeat(heads, sizes)
    covered = owners + (np.arange(len(owners), dtype=np.int64) - np.repeat(starts, sizes))
    if not (len(covered) == len(allocated) and np.array_equal(covered, allocated)
            and np.array_equal(page_folio[covered], owners)):
        owner = np.full(scan.nr_frames, FREE_FOLIO, np.int64)
        owner[covered] = owners
        overlap = _indices(np.bincount(covered, minlength=scan.nr_frames) > 1)
        failures += _details(overlap, lambda pfn: f"pfn {pfn}: inside two folios")
        wrong = _indices(page_folio != owner)
        failures += _details(wrong, lambda pfn: f"pfn {pfn}: page_folio {page_folio[pfn]}, expected {owner[pfn]}")
    return failures


# --- 3. swap -----------------------------------------------------------------

def _check_swap(machine: Machine, shadow: Shadow, scan: PageTableScan) -> list[str]:
    swap = machine.swap
    failures: list[str] = []
    if len(scan.swp_slot) or np.count_nonzero(swap.swap_count):   # else both count 0 everywhere
        found = scan.swap_pte_count
        wrong = _indices(swap.swap_count != found)
        failures += _details(wrong, lambda slot: f"slot {slot}: count {swap.swap_count[slot]}, "
                                                 f"swap entries found {found[slot]}")
    if len(scan.swp_desc):
        pids, addrs, descs, slots = scan.swp_pid, scan.swp_addr, scan.swp_desc, scan.swp_slot
        failures += _details(_indices(slots >= swap.nr_slots), lambda i: (
            f"{_where(pids[i], addrs[i])}: swap entry to slot {slots[i]} beyond the device"))
        exclusive = (descs & np.uint64(PTE_SWP_EXCLUSIVE)) != 0
        referencing = scan.swap_pte_count[np.minimum(slots, swap.nr_slots - 1)]
        failures += _details(_indices(exclusive & (referencing != 1)), lambda i: (
            f"{_where(pids[i], addrs[i])}: PTE_SWP_EXCLUSIVE on slot {slots[i]} "
            f"referenced by {referencing[i]} swap entries"))
        failures += _details(_indices((descs & np.uint64(SWP_TYPE_MASK)) != 0), lambda i: (
            f"{_where(pids[i], addrs[i])}: swap entry {int(descs[i]):#x} has a swap type"))
    nr_data = np.count_nonzero(swap.swap_data)
    if nr_data and nr_data != np.count_nonzero(swap.swap_data[swap.swap_count != 0]):
        stale = _indices((swap.swap_count == 0) & (swap.swap_data != 0))
        failures += _details(stale, lambda slot: f"slot {slot}: free but holds data {swap.swap_data[slot]}")
    return failures


# --- 4. exclusive ------------------------------------------------------------

def _check_exclusive(machine: Machine, shadow: Shadow, scan: PageTableScan) -> list[str]:
    exclusive = machine.frames.page_anon_exclusive
    failures: list[str] = []
    # Mapped once: a PTE-mapped page is judged by its own bit, a PMD-mapped folio by its head's;
    # a page's mappings are its PTEs plus its folio's PMD blocks.
    pte_ok = scan.pte_folio >= 0
    judged = scan.pte_pfn[pte_ok]
    if len(scan.pmd_pfn):
        judged = np.concatenate([judged, scan.pmd_pfn[scan.pmd_folio == scan.pmd_pfn]])
    judged = judged[exclusive[judged]]
    if len(judged):
        total = scan.page_pte_mappings[judged]
        if len(scan.pmd_pfn):   # a corrupt page_folio is the refcount oracle's: no mapping here
            folios = machine.frames.page_folio[judged]
            in_range = (folios >= 0) & (folios < len(scan.folio_pmd_mappings))
            total = total + np.where(in_range, scan.folio_pmd_mappings[np.where(in_range, folios, 0)], 0)
        not_once = total != 1
        if np.count_nonzero(not_once):
            shared, first = np.unique(judged[not_once], return_index=True)
            total = total[not_once][first]
            failures += _details(range(len(shared)), lambda i: (
                f"pfn {shared[i]}: PageAnonExclusive but mapped {total[i]} times"))

    # Writable => exclusive (the head's bit for a PMD block).
    failures += _writable_not_exclusive("PTE", scan.pte_pid, scan.pte_addr, scan.pte_desc, scan.pte_pfn,
                                        scan.pte_folio, exclusive)
    failures += _writable_not_exclusive("PMD", scan.pmd_pid, scan.pmd_addr, scan.pmd_desc, scan.pmd_pfn,
                                        scan.pmd_folio, exclusive)

    # A pinned page still mapped where it was pinned => exclusive as SPEC §4 reads it.
    pins = scan.pin_pages
    if len(pins["id"]):
        still = pins["live"] & (pins["mapped"] == pins["page"]) & (pins["page"] < scan.nr_frames)
        bad = _indices(still & ~exclusive[np.where(still, pins["exclusive_page"], 0)])
        failures += _details(bad, lambda i: (
            f"pin {pins['id'][i]} page {pins['index'][i]} ({_where(pins['pid'][i], pins['addr'][i])}): "
            f"pinned pfn {pins['page'][i]} still mapped but not exclusive"
            + (f" (head pfn {pins['exclusive_page'][i]})" if pins["exclusive_page"][i] != pins["page"][i] else "")))
    return failures


def _writable_not_exclusive(level: str, pids: np.ndarray, addrs: np.ndarray, descs: np.ndarray, pfns: np.ndarray,
                            folios: np.ndarray, exclusive: np.ndarray) -> list[str]:
    """Writable entries of one level (PTE or PMD) to an allocated page whose PageAnonExclusive
    (the head's for a PMD block) is clear."""
    if len(descs) == 0:
        return []
    ok = folios >= 0
    writable = ((descs & np.uint64(PTE_WRITE)) != 0) & ok
    bad = _indices(writable & ~exclusive[np.where(ok, pfns, 0)])
    return _details(bad, lambda i: f"{_where(pids[i], addrs[i])}: writable {level} to non-exclusive pfn {pfns[i]}")


# --- 5. pin ------------------------------------------------------------------

def _check_pin(machine: Machine, shadow: Shadow, scan: PageTableScan) -> list[str]:
    pins = scan.pin_pages
    if len(pins["id"]) == 0:
        return []
    incoherent = pins["live"] & (pins["mapped"] != pins["page"])
    if not incoherent.any():
        return []
    released = np.array([index in shadow.released.get(pin_id, ())
                         for pin_id, index in zip(pins["id"].tolist(), pins["index"].tolist(), strict=True)], bool)
    return _details(_indices(incoherent & ~released), lambda i: (
        f"pin {pins['id'][i]} page {pins['index'][i]} ({_where(pins['pid'][i], pins['addr'][i])}): "
        f"pinned pfn {pins['page'][i]}, "
        + (f"mapped pfn {pins['mapped'][i]}" if pins["mapped"][i] >= 0 else "nothing present there")
        + ", and its process did not unmap it"))


# --- 6. data -----------------------------------------------------------------

def _check_data(machine: Machine, shadow: Shadow, scan: PageTableScan) -> list[str]:
    keys, values, sources = _mapped_words(machine, scan)
    written = sorted(((pid << _PID_SHIFT) | addr, value)
                     for pid in machine.processes for addr, value in shadow.data.get(pid, {}).items())
    # The cheap question: the non-zero words read are the non-zero words written. As no two
    # leaves share a key, that holds exactly when both checks below do.
    read = _indices(values != 0)
    if sorted(zip(keys[read].tolist(), values[read].tolist(), strict=True)) == [item for item in written if item[1]]:
        return []

    written_keys = np.array([key for key, _ in written], np.int64)
    written_values = np.array([value for _, value in written], np.uint64)
    if len(written_keys):
        found = _lookup(written_keys, keys)
        expected = np.where(found >= 0, written_values[np.maximum(found, 0)], np.uint64(0))
    else:
        expected = np.zeros(len(keys), np.uint64)

    def describe_read(i: int) -> str:
        source = f"pfn {sources[i]}" if sources[i] >= 0 else f"swap slot {-1 - sources[i]}"
        return f"{_key_where(keys[i])}: reads {values[i]} ({source}), wrote {expected[i]}"

    failures = _details(_indices(values != expected), describe_read)
    if len(written_keys):
        unmapped = (written_values != 0) & (_lookup(np.sort(keys), written_keys) < 0)
        failures += _details(_indices(unmapped), lambda i: (
            f"{_key_where(written_keys[i])}: wrote {written_values[i]}, but nothing is mapped there"))
    return failures


def _mapped_words(machine: Machine, scan: PageTableScan) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """What every mapped page reads: (key, value, source), source a pfn or -1 - swap slot."""
    frames, swap = machine.frames, machine.swap
    keys, values, sources = [], [], []
    if len(scan.pte_pfn):
        ok = scan.pte_pfn < scan.nr_frames
        keys.append(scan.pte_key[ok])
        values.append(frames.page_data[scan.pte_pfn[ok]])
        sources.append(scan.pte_pfn[ok])
    if len(scan.pmd_pfn):
        pages = scan.pmd_pfn[:, None] + _PAGE_OFFSETS
        ok = pages < scan.nr_frames
        keys.append((scan.pmd_key[:, None] + (_PAGE_OFFSETS << PAGE_SHIFT))[ok])
        values.append(frames.page_data[pages[ok]])
        sources.append(pages[ok])
    if len(scan.swp_slot):
        ok = scan.swp_slot < swap.nr_slots
        keys.append(scan.swp_key[ok])
        values.append(swap.swap_data[scan.swp_slot[ok]])
        sources.append(-1 - scan.swp_slot[ok])
    return _joined(keys, _EMPTY), _joined(values, _EMPTY_DESC), _joined(sources, _EMPTY)


# --- 7. layout ---------------------------------------------------------------

def _check_layout(machine: Machine, shadow: Shadow, scan: PageTableScan) -> list[str]:
    frames = machine.frames
    failures = list(scan.bad_pmds)
    failures += _details(_non_canonical_blocks(machine, scan), lambda block: (
        f"{_where(block[0], block[1])}: contpte block not canonical (CONT on "
        f"{int(pte_cont(block[2]).sum())}/16, young {int(pte_young(block[2]).sum())}/16, "
        f"dirty {int(pte_dirty(block[2]).sum())}/16)"))
    if len(scan.pte_desc):
        not_page = _indices((scan.pte_desc & np.uint64(PTE_TYPE)) == 0)
        failures += _details(not_page, lambda i: (f"{_where(scan.pte_pid[i], scan.pte_addr[i])}: valid PTE "
                                                  f"{int(scan.pte_desc[i]):#x} is not a page descriptor"))
    if len(scan.pmd_desc):
        misaligned = _indices(scan.pmd_addr % PMD_SIZE != 0)
        failures += _details(misaligned, lambda i: (f"{_where(scan.pmd_pid[i], scan.pmd_addr[i])}: "
                                                    "PMD block not 2 MiB aligned"))
        pfns = scan.pmd_pfn
        in_range = pfns < scan.nr_frames
        safe = np.where(in_range, pfns, 0)
        on_thp_head = in_range & (frames.page_folio[safe] == pfns) & (frames.folio_order[safe] == HPAGE_PMD_ORDER)
        failures += _details(_indices(~on_thp_head), lambda i: (
            f"{_where(scan.pmd_pid[i], scan.pmd_addr[i])}: PMD block maps pfn {pfns[i]}, "
            "not the head of an order-9 folio"))
    return failures + _check_vmas(machine, scan)


def _non_canonical_blocks(machine: Machine, scan: PageTableScan) -> list[tuple[int, int, np.ndarray]]:
    """(pid, addr, entries) of every 16-entry block that `machine.contpte_blocks_canonical` rejects.

    A block with no CONT bit and an invalid entry can be neither folded nor
    eligible, so it is canonical. The machine judges the others, packed a
    table's worth (32 blocks) at a time, since its verdict is per block; its
    verdicts are remembered by block content (the entries and their pfns' folios).
    """
    if not scan.pte_tables:
        return []
    if len(scan.pte_desc) < CONT_PTES:    # no block is all valid: a candidate has a CONT bit
        any_cont = (np.bitwise_or.reduce(scan.pte_desc) | np.bitwise_or.reduce(scan.swp_desc)) & np.uint64(PTE_CONT)
        if not any_cont:
            return []
    blocks = scan.pte_entries.reshape(-1, CONT_PTES)
    all_valid = np.bitwise_and.reduce(blocks, axis=1) & np.uint64(PTE_VALID)
    any_cont = np.bitwise_or.reduce(blocks, axis=1) & np.uint64(PTE_CONT)
    candidates = _indices((all_valid | any_cont) != 0)
    if len(candidates) == 0:
        return []
    pfns = pte_pfn(blocks[candidates]).astype(np.int64)
    in_range = pfns < scan.nr_frames
    folios = np.where(in_range, machine.frames.page_folio[np.where(in_range, pfns, 0)], _NOT_A_FRAME)
    content = np.concatenate([blocks[candidates].view(np.int64), folios], axis=1).tobytes()
    row_size = len(content) // len(candidates)
    verdict_keys = [content[start:start + row_size] for start in range(0, len(content), row_size)]
    unknown = [i for i, key in enumerate(verdict_keys) if key not in _contpte_verdicts]
    if len(_contpte_verdicts) + len(unknown) > _CONTPTE_VERDICTS_LIMIT:
        _contpte_verdicts.clear()
    for first in range(0, len(unknown), _BLOCKS_PER_TABLE):
        chunk = unknown[first:first + _BLOCKS_PER_TABLE]
        packed = np.zeros((_BLOCKS_PER_TABLE, CONT_PTES), np.uint64)
        packed[:len(chunk)] = blocks[candidates[chunk]]
        canonical = machine.contpte_blocks_canonical(packed.reshape(-1))
        for i, verdict in zip(chunk, canonical.tolist(), strict=False):   # packed is padded
            _contpte_verdicts[verdict_keys[i]] = verdict
    rejected: list[tuple[int, int, np.ndarray]] = []
    for i, key in enumerate(verdict_keys):
        if not _contpte_verdicts[key]:
            table, index = divmod(int(candidates[i]), _BLOCKS_PER_TABLE)
            pid, base, _ = scan.pte_tables[table]
            rejected.append((pid, base + index * CONT_PTES * PAGE_SIZE, blocks[candidates[i]]))
    return rejected


def _check_vmas(machine: Machine, scan: PageTableScan) -> list[str]:
    """Every process's VMAs are sorted, disjoint, non-empty and page aligned, and hold its leaves
    (a PMD block inside one VMA)."""
    failures: list[str] = []
    vma_keys, vma_ends = [], []
    for pid in sorted(machine.processes):
        vmas = machine.processes[pid].vmas
        for vma in vmas:
            if not (vma.start < vma.end and vma.start % PAGE_SIZE == 0 and vma.end % PAGE_SIZE == 0
                    and vma.start >= 0 and vma.end <= TASK_SIZE):
                failures.append(f"P{pid} VMA {vma.start:#x}-{vma.end:#x}: empty, unaligned or outside the VA space")
            vma_keys.append((pid << _PID_SHIFT) + vma.start)
            vma_ends.append((pid << _PID_SHIFT) + vma.end)   # +, not |: an end may be 2**48
        for before, after in itertools.pairwise(vmas):
            if before.end > after.start:
                failures.append(f"P{pid} VMA {before.start:#x}-{before.end:#x}: not sorted before or "
                                f"overlaps VMA {after.start:#x}-{after.end:#x}")

    leaf_keys = _joined([keys for keys in (scan.pte_key, scan.swp_key, scan.pmd_key) if len(keys)], _EMPTY)
    if len(leaf_keys) == 0:
        return failures
    leaf_ends = leaf_keys + PAGE_SIZE
    if len(scan.pmd_key):
        leaf_ends[len(leaf_keys) - len(scan.pmd_key):] += PMD_SIZE - PAGE_SIZE
    starts = np.array(vma_keys, np.int64)
    ends = np.array(vma_ends, np.int64)
    if failures:                # else the VMAs are sorted and disjoint already
        order = np.argsort(starts, kind="stable")
        starts, ends = starts[order], ends[order]
    index = np.searchsorted(starts, leaf_keys, side="right") - 1
    outside = _indices((index < 0) | (leaf_ends > ends[np.maximum(index, 0)]) if len(starts) else
                       np.ones(len(leaf_keys), bool))
    if len(outside) == 0:
        return failures
    levels = ["PTE"] * len(scan.pte_key) + ["swap PTE"] * len(scan.swp_key) + ["PMD block"] * len(scan.pmd_key)
    return failures + _details(outside, lambda i: (
        f"{_key_where(leaf_keys[i])}: {levels[i]} outside "
        + ("a single VMA" if levels[i] == "PMD block" else "any VMA")))


# --- the public interface ----------------------------------------------------

_CHECKS: dict[str, Callable[[Machine, Shadow, PageTableScan], list[str]]] = {
    "mapcount": _check_mapcount,
    "refcount": _check_refcount,
    "swap": _check_swap,
    "exclusive": _check_exclusive,
    "pin": _check_pin,
    "data": _check_data,
    "layout": _check_layout,
}


def check_mapcount(machine: Machine, shadow: Shadow) -> list[str]:
    """Oracle 1: per-page, large and entire mapcounts equal the mappings; MM_ID slots and the
    shared bit are consistent with them; RSS counters equal the entries."""
    return _check_mapcount(machine, shadow, PageTableScan(machine))


def check_refcount(machine: Machine, shadow: Shadow) -> list[str]:
    """Oracle 2: refcount == mappings + pin references; _pincount == pinned pages (large folios);
    nothing maps or pins a free frame; no leaked folio; folio structure and free frames canonical."""
    return _check_refcount(machine, shadow, PageTableScan(machine))


def check_swap(machine: Machine, shadow: Shadow) -> list[str]:
    """Oracle 3: slot counts equal the swap PTEs; PTE_SWP_EXCLUSIVE only on a slot of count 1;
    a free slot holds no data."""
    return _check_swap(machine, shadow, PageTableScan(machine))


def check_exclusive(machine: Machine, shadow: Shadow) -> list[str]:
    """Oracle 4: PageAnonExclusive pages are mapped once; writable entries map exclusive pages;
    pinned pages still mapped where they were pinned are exclusive."""
    return _check_exclusive(machine, shadow, PageTableScan(machine))


def check_pin(machine: Machine, shadow: Shadow) -> list[str]:
    """Oracle 5: a live pin's pages stay mapped at its addresses unless its process unmapped them."""
    return _check_pin(machine, shadow, PageTableScan(machine))


def check_data(machine: Machine, shadow: Shadow) -> list[str]:
    """Oracle 6: every process reads at every address what the shadow says it wrote there."""
    return _check_data(machine, shadow, PageTableScan(machine))


def check_layout(machine: Machine, shadow: Shadow) -> list[str]:
    """Oracle 7: contpte blocks canonical; PMD blocks aligned on order-9 heads; leaves inside VMAs;
    VMAs well formed."""
    return _check_layout(machine, shadow, PageTableScan(machine))


ORACLES: dict[str, Callable[[Machine, Shadow], list[str]]] = {
    "mapcount": check_mapcount,
    "refcount": check_refcount,
    "swap": check_swap,
    "exclusive": check_exclusive,
    "pin": check_pin,
    "data": check_data,
    "layout": check_layout,
}


@dataclass(frozen=True)
class OracleFailure:
    """One oracle that does not hold, with one human-readable detail of why."""

    oracle: str
    detail: str


def same_oracle_inputs(a: Machine, a_shadow: Shadow, b: Machine, b_shadow: Shadow) -> bool:
    """Whether check_oracles reads the same on b as on a, given compare_machines(a, b) found no
    difference: then it returns the same on both. What the comparison leaves out is checked
    here: the shadows, each process's VMA list in its order, and its page-table shape (which
    PMD entries are table descriptors, which PTE tables exist; the comparison masks the first
    and reads a missing PTE table as zeros).

    Context: compare_machines(a, b) == [] (same processes, frames, swap, pins, leaves).
    """
    check(a.processes.keys() == b.processes.keys(), "machines with different processes")
    if a_shadow.data != b_shadow.data or a_shadow.released != b_shadow.released:
        return False
    for pid, mm in a.processes.items():
        other = b.processes[pid]
        if [(vma.start, vma.end) for vma in mm.vmas] != [(vma.start, vma.end) for vma in other.vmas]:
            return False
        if _table_shape(mm) != _table_shape(other):
            return False
    return True


def _table_shape(mm: MM) -> list[tuple[int, list[int], list[int], list[int]]]:
    """Per PMD table: its base, where its table descriptors are, which PTE tables it holds, and
    the descriptors of the table entries without a PTE table (their value is in the scan's detail)."""
    shape = []
    for table in mm.pmd_tables():
        descriptors = [(index, pmd) for index, pmd in table.nonzero_entries()
                       if pmd & PTE_TYPE_MASK == PMD_TYPE_TABLE]
        shape.append((table.base, [index for index, _ in descriptors], sorted(table.ptes),
                      [pmd for index, pmd in descriptors if index not in table.ptes]))
    return shape


def check_oracles(machine: Machine, shadow: Shadow) -> list[OracleFailure]:
    """Every oracle of SPEC §6, in order, from one scan of all page tables."""
    scan = PageTableScan(machine)
    return [OracleFailure(name, detail)
            for name, check_with_scan in _CHECKS.items()
            for detail in check_with_scan(machine, shadow, scan)]


__all__ = ["ORACLES", "OracleFailure", "PageTableScan", "check_oracles", "same_oracle_inputs", "check_mapcount",
           "check_refcount", "check_swap", "check_exclusive", "check_pin", "check_data",
           "check_layout", "GUP_PIN_COUNTING_BIAS", "MAX_DETAILS"]
