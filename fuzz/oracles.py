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

Each oracle reports a list of failure details (empty: the oracle holds). A
detail names its subject first (`pfn 37: ...`, `P1 0x200000: ...`,
`pin 2 page 5 (P0 0x205000): ...`, `slot 9: ...`); a check that finds many
alike reports the first few and how many more.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Callable, Iterable

import numpy as np

from machine.errors import check
from machine.frames import FREE_FOLIO, FrameTable
from machine.pgtable import (
    CONT_PTES, HPAGE_PMD_NR, HPAGE_PMD_ORDER, PAGE_SHIFT, PAGE_SIZE, PMD_SHIFT, PMD_SIZE, PTE_CONT,
    PTE_SWP_EXCLUSIVE, PTE_TYPE, PTE_VALID, PTE_WRITE, PTRS_PER_TABLE, SWP_TYPE_MASK, TASK_SIZE,
    pmd_table, pmd_trans_huge, pte_cont, pte_dirty, pte_pfn, pte_swp_offset, pte_young,
)

if TYPE_CHECKING:
    from machine import Machine

    from .shadow import Shadow

GUP_PIN_COUNTING_BIAS = 1024
MAX_DETAILS = 16          # details reported per check before "... and N more"

_PID_SHIFT = 48           # a leaf's key: pid << 48 | addr (addresses are below 2**48)
_PID_LIMIT = 1 << 14
_PAGE_OFFSETS = np.arange(HPAGE_PMD_NR, dtype=np.int64)
_FOLIO_FIELDS = tuple(name for name in FrameTable.ARRAYS if name.startswith("folio_"))
_PAGE_FIELDS = ("page_mapcount", "page_anon_exclusive", "page_data")


def _where(pid: int, addr: int) -> str:
    return f"P{pid} {addr:#x}"


def _details(items: Iterable, describe: Callable[..., str]) -> list[str]:
    """describe(item) for the first MAX_DETAILS items, then how many more there were."""
    if len(items) == 0:
        return []
    items = list(items)
    details = [describe(item) for item in items[:MAX_DETAILS]]
    if len(items) > MAX_DETAILS:
        details.append(f"... and {len(items) - MAX_DETAILS} more like the above")
    return details


def _ints(array: np.ndarray) -> list[int]:
    return [int(value) for value in array]


def _keys(pids: np.ndarray, addrs: np.ndarray) -> np.ndarray:
    return (pids.astype(np.int64) << _PID_SHIFT) | addrs.astype(np.int64)


def _lookup(sorted_keys: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """The index of each key in sorted_keys, -1 where it is absent."""
    if len(sorted_keys) == 0:
        return np.full(len(keys), -1, np.int64)
    index = np.searchsorted(sorted_keys, keys)
    clipped = np.minimum(index, len(sorted_keys) - 1)
    return np.where(sorted_keys[clipped] == keys, clipped, -1)


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
        self.pfns = np.arange(self.nr_frames, dtype=np.int64)
        self.bad_pmds: list[str] = []          # PMD descriptors that are neither block nor table
        self.pte_tables: list[tuple[int, int, np.ndarray]] = []   # (pid, base, entries)
        pmd_leaves: list[tuple[int, int, int]] = []
        for pid in sorted(machine.processes):
            check(0 <= pid < _PID_LIMIT, f"process number {pid} too large for the scan")
            for table in machine.processes[pid].pmd_tables():
                for index in map(int, np.flatnonzero(table.entries)):
                    pmd = int(table.entries[index])
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
        self.pmd_pid = np.array([leaf[0] for leaf in pmd_leaves], np.int64)
        self.pmd_addr = np.array([leaf[1] for leaf in pmd_leaves], np.int64)
        self.pmd_desc = np.array([leaf[2] for leaf in pmd_leaves], np.uint64)
        self.pmd_pfn = pte_pfn(self.pmd_desc).astype(np.int64)
        self.pmd_key = _keys(self.pmd_pid, self.pmd_addr)

    def _gather_ptes(self) -> None:
        if self.pte_tables:
            entries = np.stack([table[2] for table in self.pte_tables])
            bases = np.array([table[1] for table in self.pte_tables], np.int64)
            table_pids = np.array([table[0] for table in self.pte_tables], np.int64)
        else:
            entries = np.zeros((0, PTRS_PER_TABLE), np.uint64)
            bases = table_pids = np.zeros(0, np.int64)
        self.pte_entries = entries                 # (tables, 512), in pte_tables order
        rows, columns = np.nonzero(entries)
        desc = entries[rows, columns]
        pids = table_pids[rows]
        addrs = bases[rows] + (columns.astype(np.int64) << PAGE_SHIFT)
        present = (desc & np.uint64(PTE_VALID)) != 0
        swap = ~present
        self.pte_pid, self.pte_addr, self.pte_desc = pids[present], addrs[present], desc[present]
        self.pte_pfn = pte_pfn(self.pte_desc).astype(np.int64)
        self.pte_key = _keys(self.pte_pid, self.pte_addr)
        self.swp_pid, self.swp_addr, self.swp_desc = pids[swap], addrs[swap], desc[swap]
        self.swp_slot = pte_swp_offset(self.swp_desc).astype(np.int64)
        self.swp_key = _keys(self.swp_pid, self.swp_addr)

    @cached_property
    def heads(self) -> np.ndarray:
        """Head pfns of every allocated folio (page_folio[f] == f)."""
        return np.flatnonzero(self.frames.page_folio == self.pfns)

    # Folios of the mapped pfns (-1 for a pfn beyond the machine or free).

    def _folio_of(self, pfns: np.ndarray) -> np.ndarray:
        in_range = pfns < self.nr_frames
        return np.where(in_range, self.frames.page_folio[np.where(in_range, pfns, 0)], FREE_FOLIO)

    @cached_property
    def pte_folio(self) -> np.ndarray:
        return self._folio_of(self.pte_pfn)

    @cached_property
    def pmd_folio(self) -> np.ndarray:
        return self._folio_of(self.pmd_pfn)

    # Mapping counts.

    def _count(self, indices: np.ndarray, length: int) -> np.ndarray:
        return np.bincount(indices[indices >= 0], minlength=length)[:length]

    @cached_property
    def page_pte_mappings(self) -> np.ndarray:
        """Per pfn: present PTEs mapping it (all processes)."""
        in_range = np.where(self.pte_pfn < self.nr_frames, self.pte_pfn, -1)
        return self._count(in_range, self.nr_frames)

    @cached_property
    def folio_pte_mappings(self) -> np.ndarray:
        """Per head pfn: present PTEs mapping any page of the folio."""
        return self._count(self.pte_folio, self.nr_frames)

    @cached_property
    def folio_pmd_mappings(self) -> np.ndarray:
        """Per head pfn: PMD blocks mapping the folio."""
        return self._count(self.pmd_folio, self.nr_frames)

    @cached_property
    def folio_mappings(self) -> np.ndarray:
        return self.folio_pte_mappings + self.folio_pmd_mappings

    @cached_property
    def page_total_mappings(self) -> np.ndarray:
        """Per pfn: its PTE mappings plus its folio's PMD mappings (SPEC §4 `mapcount`)."""
        folio = self.frames.page_folio
        pmd = np.where(folio >= 0, self.folio_pmd_mappings[np.maximum(folio, 0)], 0)
        return self.page_pte_mappings + pmd

    @cached_property
    def _folio_mm_keys(self) -> tuple[np.ndarray, np.ndarray]:
        """Sorted unique (folio << 16 | pid) keys of every mapping, with their counts."""
        folios = np.concatenate([self.pte_folio, self.pmd_folio])
        pids = np.concatenate([self.pte_pid, self.pmd_pid])
        mapped = folios >= 0
        keys = (folios[mapped] << 16) | pids[mapped]
        return np.unique(keys, return_counts=True)

    def folio_mm_mappings(self, folios: np.ndarray, pids: np.ndarray) -> np.ndarray:
        """Mappings of each folio by each process (0 for a process that does not exist)."""
        keys, counts = self._folio_mm_keys
        index = _lookup(keys, (folios.astype(np.int64) << 16) | pids.astype(np.int64))
        return np.where(index >= 0, counts[np.maximum(index, 0)], 0)

    @cached_property
    def folio_nr_mms(self) -> np.ndarray:
        """Per head pfn: how many processes map the folio."""
        keys, _ = self._folio_mm_keys
        return self._count(keys >> 16, self.nr_frames)

    @cached_property
    def swap_pte_count(self) -> np.ndarray:
        """Per swap slot: swap PTEs referencing it."""
        nr_slots = self.machine.swap.nr_slots
        slots = np.where(self.swp_slot < nr_slots, self.swp_slot, -1)
        return self._count(slots, nr_slots)

    @cached_property
    def rss(self) -> dict[int, tuple[int, int]]:
        """Per live process: (present PTEs + 512 x PMD blocks, swap PTEs)."""
        length = max(self.machine.processes, default=0) + 1
        anon = (np.bincount(self.pte_pid, minlength=length)
                + HPAGE_PMD_NR * np.bincount(self.pmd_pid, minlength=length))
        swap = np.bincount(self.swp_pid, minlength=length)
        return {pid: (int(anon[pid]), int(swap[pid])) for pid in self.machine.processes}

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
        sizes = np.array([len(pin.pages) for pin in pins], np.int64)
        index = np.concatenate([np.arange(size, dtype=np.int64) for size in sizes] or [np.zeros(0, np.int64)])
        arrays = {
            "id": np.repeat(np.array([pin.pin_id for pin in pins], np.int64), sizes),
            "index": index,
            "pid": np.repeat(np.array([pin.pid for pin in pins], np.int64), sizes),
            "addr": np.repeat(np.array([pin.addr for pin in pins], np.int64), sizes) + (index << PAGE_SHIFT),
            "page": np.array([page for pin in pins for page in pin.pages], np.int64),
            "live": np.repeat(np.array([pin.pid in self.machine.processes for pin in pins], bool), sizes),
        }
        pte = _lookup(self.pte_key, _keys(arrays["pid"], arrays["addr"]))
        pmd = _lookup(self.pmd_key, _keys(arrays["pid"], arrays["addr"] & ~(PMD_SIZE - 1)))
        pmd_offset = (arrays["addr"] % PMD_SIZE) >> PAGE_SHIFT
        pte_pfn_found = self.pte_pfn[np.maximum(pte, 0)] if len(self.pte_pfn) else np.zeros_like(pte)
        pmd_pfn_found = self.pmd_pfn[np.maximum(pmd, 0)] if len(self.pmd_pfn) else np.zeros_like(pmd)
        arrays["mapped"] = np.where(pte >= 0, pte_pfn_found,
                                    np.where(pmd >= 0, pmd_pfn_found + pmd_offset, -1))
        arrays["exclusive_page"] = np.where(pte >= 0, pte_pfn_found, np.where(pmd >= 0, pmd_pfn_found, -1))
        return arrays


# --- 1. mapcount -------------------------------------------------------------

def _check_mapcount(machine: Machine, shadow: Shadow, scan: PageTableScan) -> list[str]:
    frames = machine.frames
    failures: list[str] = []
    allocated = frames.page_folio != FREE_FOLIO
    wrong = np.flatnonzero(allocated & (frames.page_mapcount != scan.page_pte_mappings))
    failures += _details(wrong, lambda pfn: f"pfn {pfn}: _mapcount {frames.page_mapcount[pfn]}, "
                                            f"mappings found {scan.page_pte_mappings[pfn]}")

    heads = scan.heads
    large = heads[frames.folio_order[heads] > 0]
    small = heads[frames.folio_order[heads] == 0]
    wrong = large[frames.folio_large_mapcount[large] != scan.folio_mappings[large]]
    failures += _details(wrong, lambda f: f"folio {f} (order {frames.folio_order[f]}): _large_mapcount "
                                          f"{frames.folio_large_mapcount[f]}, mappings found {scan.folio_mappings[f]}")
    wrong = large[frames.folio_entire_mapcount[large] != scan.folio_pmd_mappings[large]]
    failures += _details(wrong, lambda f: f"folio {f} (order {frames.folio_order[f]}): _entire_mapcount "
                                          f"{frames.folio_entire_mapcount[f]}, PMD mappings found "
                                          f"{scan.folio_pmd_mappings[f]}")
    small_fields = (frames.folio_large_mapcount[small] != 0) | (frames.folio_entire_mapcount[small] != 0) \
        | frames.folio_mm_id[small].any(axis=1) | frames.folio_mm_id_mapcount[small].any(axis=1) \
        | frames.folio_mm_ids_shared[small]
    failures += _details(small[small_fields], lambda f: (
        f"folio {f} (order 0): large-folio fields set (_large_mapcount {frames.folio_large_mapcount[f]}, "
        f"_entire_mapcount {frames.folio_entire_mapcount[f]}, mm_id {_ints(frames.folio_mm_id[f])}, "
        f"mm_id_mapcount {_ints(frames.folio_mm_id_mapcount[f])}, shared {bool(frames.folio_mm_ids_shared[f])})"))
    failures += _check_mm_ids(machine, scan, large)

    for pid in sorted(machine.processes):
        mm = machine.processes[pid]
        anon, swap = scan.rss[pid]
        if mm.rss_anon != anon:
            failures.append(f"P{pid}: MM_ANONPAGES {mm.rss_anon}, present pages found {anon}")
        if mm.rss_swap != swap:
            failures.append(f"P{pid}: MM_SWAPENTS {mm.rss_swap}, swap entries found {swap}")
    return failures


def _check_mm_ids(machine: Machine, scan: PageTableScan, large: np.ndarray) -> list[str]:
    """MM_ID of large folios: slots never overcount, the shared bit is clear only when one process maps."""
    frames = machine.frames
    failures: list[str] = []
    mm_ids = frames.folio_mm_id[large]
    slot_counts = frames.folio_mm_id_mapcount[large]
    for slot in (0, 1):
        in_use = mm_ids[:, slot] != 0
        folios = large[in_use]
        counts = slot_counts[in_use, slot]
        found = scan.folio_mm_mappings(folios, mm_ids[in_use, slot] - 1)
        over = np.flatnonzero((counts > found) | (counts < 1))
        failures += _details(over, lambda i: (
            f"folio {folios[i]}: MM_ID slot {slot} (P{mm_ids[in_use][i, slot] - 1}) counts {counts[i]}, "
            f"mappings by that process found {found[i]}"))
        stale = large[~in_use & (slot_counts[:, slot] != 0)]
        failures += _details(stale, lambda f: (
            f"folio {f}: free MM_ID slot {slot} has mapcount {frames.folio_mm_id_mapcount[f, slot]}"))
    twice = large[(mm_ids[:, 0] != 0) & (mm_ids[:, 0] == mm_ids[:, 1])]
    failures += _details(twice, lambda f: f"folio {f}: both MM_ID slots hold mm_id {frames.folio_mm_id[f, 0]}")
    not_shared = large[~frames.folio_mm_ids_shared[large] & (scan.folio_nr_mms[large] > 1)]
    failures += _details(not_shared, lambda f: (
        f"folio {f}: shared bit clear but mapped by {scan.folio_nr_mms[f]} processes"))
    return failures


# --- 2. refcount -------------------------------------------------------------

def _check_refcount(machine: Machine, shadow: Shadow, scan: PageTableScan) -> list[str]:
    frames = machine.frames
    failures = _check_folio_structure(frames, scan)
    heads = scan.heads
    large = frames.folio_order > 0

    pins = scan.pin_pages
    pin_folio = scan._folio_of(pins["page"])
    unpinnable = np.flatnonzero(pin_folio < 0)
    failures += _details(unpinnable, lambda i: (
        f"pin {pins['id'][i]} page {pins['index'][i]}: holds pfn {pins['page'][i]}, which is "
        + ("free" if pins["page"][i] < scan.nr_frames else "beyond the machine")))
    pinned = pin_folio[pin_folio >= 0]
    pin_pairs = scan._count(pinned, scan.nr_frames)
    pin_refs = np.where(large, pin_pairs, GUP_PIN_COUNTING_BIAS * pin_pairs)

    expected = scan.folio_mappings[heads] + pin_refs[heads]
    wrong = heads[frames.folio_refcount[heads] != expected]
    failures += _details(wrong, lambda f: (
        f"folio {f} (order {frames.folio_order[f]}): refcount {frames.folio_refcount[f]}, "
        f"mappings {scan.folio_mappings[f]} + pin references {pin_refs[f]} = "
        f"{scan.folio_mappings[f] + pin_refs[f]}"))
    expected_pincount = np.where(large[heads], pin_pairs[heads], 0)
    wrong = heads[frames.folio_pincount[heads] != expected_pincount]
    failures += _details(wrong, lambda f: (
        f"folio {f} (order {frames.folio_order[f]}): _pincount {frames.folio_pincount[f]}, "
        f"pinned pages found {pin_pairs[f] if large[f] else 0}"))
    leaked = heads[(scan.folio_mappings[heads] == 0) & (pin_pairs[heads] == 0)]
    failures += _details(leaked, lambda f: f"folio {f} (order {frames.folio_order[f]}): "
                                           "allocated but neither mapped nor pinned (leak)")

    for level, pids, addrs, pfns, folios in (
            ("PTE", scan.pte_pid, scan.pte_addr, scan.pte_pfn, scan.pte_folio),
            ("PMD", scan.pmd_pid, scan.pmd_addr, scan.pmd_pfn, scan.pmd_folio)):
        bad = np.flatnonzero(folios < 0)
        failures += _details(bad, lambda i: (
            f"{_where(pids[i], addrs[i])}: {level} maps pfn {pfns[i]}, which is "
            + ("free" if pfns[i] < scan.nr_frames else "beyond the machine")))
    return failures


def _check_folio_structure(frames: FrameTable, scan: PageTableScan) -> list[str]:
    """page_folio agrees with the heads' orders; free frames and tail pages hold free values."""
    failures: list[str] = []
    page_folio = frames.page_folio
    heads = all_heads = scan.heads
    orders = frames.folio_order[heads].astype(np.int64)
    bad_order = (orders < 0) | (orders > HPAGE_PMD_ORDER) | (orders == 1)
    failures += _details(heads[bad_order], lambda f: f"folio {f}: bad order {frames.folio_order[f]}")
    sizes = np.left_shift(1, np.clip(orders, 0, HPAGE_PMD_ORDER))
    placed = ~bad_order & (heads % sizes == 0) & (heads + sizes <= scan.nr_frames)
    failures += _details(heads[~bad_order & ~placed], lambda f: (
        f"folio {f}: order {frames.folio_order[f]} run is not naturally aligned inside the machine"))

    heads, sizes = heads[placed], sizes[placed]
    starts = np.cumsum(sizes) - sizes
    covered = np.repeat(heads, sizes) + (np.arange(int(sizes.sum()), dtype=np.int64) - np.repeat(starts, sizes))
    owner = np.full(scan.nr_frames, FREE_FOLIO, np.int64)
    owner[covered] = np.repeat(heads, sizes)
    overlap = np.flatnonzero(np.bincount(covered, minlength=scan.nr_frames) > 1)
    failures += _details(overlap, lambda pfn: f"pfn {pfn}: inside two folios")
    wrong = np.flatnonzero(page_folio != owner)
    failures += _details(wrong, lambda pfn: f"pfn {pfn}: page_folio {page_folio[pfn]}, expected {owner[pfn]}")

    # Fast path: a field is clean when all its non-zero values sit where they may.
    allocated = np.flatnonzero(page_folio != FREE_FOLIO)
    free = page_folio == FREE_FOLIO
    for name in _FOLIO_FIELDS:
        array = getattr(frames, name)
        if np.count_nonzero(array) == np.count_nonzero(array[all_heads]):
            continue
        set_ = array.any(axis=1) if array.ndim == 2 else array != 0
        set_[all_heads] = False
        failures += _details(np.flatnonzero(set_), lambda pfn: (
            f"pfn {pfn}: {name} {_ints(array[pfn]) if array.ndim == 2 else array[pfn]} on a "
            + ("free frame" if free[pfn] else "tail page")))
    for name in _PAGE_FIELDS:
        array = getattr(frames, name)
        if np.count_nonzero(array) == np.count_nonzero(array[allocated]):
            continue
        stray = np.flatnonzero((array != 0) & free)
        failures += _details(stray, lambda pfn: f"pfn {pfn}: {name} {array[pfn]} on a free frame")
    return failures


# --- 3. swap -----------------------------------------------------------------

def _check_swap(machine: Machine, shadow: Shadow, scan: PageTableScan) -> list[str]:
    swap = machine.swap
    failures: list[str] = []
    found = scan.swap_pte_count
    wrong = np.flatnonzero(swap.swap_count != found)
    failures += _details(wrong, lambda slot: f"slot {slot}: count {swap.swap_count[slot]}, "
                                             f"swap entries found {found[slot]}")
    beyond = np.flatnonzero(scan.swp_slot >= swap.nr_slots)
    failures += _details(beyond, lambda i: f"{_where(scan.swp_pid[i], scan.swp_addr[i])}: swap entry to "
                                           f"slot {scan.swp_slot[i]} beyond the device")
    exclusive = (scan.swp_desc & np.uint64(PTE_SWP_EXCLUSIVE)) != 0
    slot_found = found[np.minimum(scan.swp_slot, swap.nr_slots - 1)]
    shared = np.flatnonzero(exclusive & (slot_found != 1))
    failures += _details(shared, lambda i: (
        f"{_where(scan.swp_pid[i], scan.swp_addr[i])}: PTE_SWP_EXCLUSIVE on slot {scan.swp_slot[i]} "
        f"referenced by {slot_found[i]} swap entries"))
    typed = np.flatnonzero((scan.swp_desc & np.uint64(SWP_TYPE_MASK)) != 0)
    failures += _details(typed, lambda i: (
        f"{_where(scan.swp_pid[i], scan.swp_addr[i])}: swap entry {int(scan.swp_desc[i]):#x} has a swap type"))
    stale = np.flatnonzero((swap.swap_count == 0) & (swap.swap_data != 0))
    failures += _details(stale, lambda slot: f"slot {slot}: free but holds data {swap.swap_data[slot]}")
    return failures


# --- 4. exclusive ------------------------------------------------------------

def _check_exclusive(machine: Machine, shadow: Shadow, scan: PageTableScan) -> list[str]:
    frames = machine.frames
    failures: list[str] = []
    exclusive = frames.page_anon_exclusive
    # A PTE-mapped page is judged by its own bit, a PMD-mapped folio by its head's.
    pmd_head = np.zeros(scan.nr_frames, bool)
    pmd_head[scan.pmd_folio[(scan.pmd_folio >= 0) & (scan.pmd_folio == scan.pmd_pfn)]] = True
    judged = exclusive & ((scan.page_pte_mappings > 0) | pmd_head)
    shared = np.flatnonzero(judged & (scan.page_total_mappings != 1))
    failures += _details(shared, lambda pfn: (
        f"pfn {pfn}: PageAnonExclusive but mapped {scan.page_total_mappings[pfn]} times"))

    for level, pids, addrs, descs, pfns, folios in (
            ("PTE", scan.pte_pid, scan.pte_addr, scan.pte_desc, scan.pte_pfn, scan.pte_folio),
            ("PMD", scan.pmd_pid, scan.pmd_addr, scan.pmd_desc, scan.pmd_pfn, scan.pmd_folio)):
        writable = ((descs & np.uint64(PTE_WRITE)) != 0) & (folios >= 0)
        bad = np.flatnonzero(writable & ~exclusive[np.where(folios >= 0, pfns, 0)])
        failures += _details(bad, lambda i: (
            f"{_where(pids[i], addrs[i])}: writable {level} to non-exclusive pfn {pfns[i]}"))

    pins = scan.pin_pages
    still = pins["live"] & (pins["mapped"] == pins["page"]) & (pins["page"] < scan.nr_frames)
    bad = np.flatnonzero(still & ~exclusive[np.where(still, pins["exclusive_page"], 0)])
    failures += _details(bad, lambda i: (
        f"pin {pins['id'][i]} page {pins['index'][i]} ({_where(pins['pid'][i], pins['addr'][i])}): "
        f"pinned pfn {pins['page'][i]} still mapped but not exclusive"
        + (f" (head pfn {pins['exclusive_page'][i]})" if pins["exclusive_page"][i] != pins["page"][i] else "")))
    return failures


# --- 5. pin ------------------------------------------------------------------

def _check_pin(machine: Machine, shadow: Shadow, scan: PageTableScan) -> list[str]:
    pins = scan.pin_pages
    if len(pins["id"]) == 0:
        return []
    released = np.array([int(index) in shadow.released.get(int(pin_id), ())
                         for pin_id, index in zip(pins["id"], pins["index"])], bool)
    incoherent = np.flatnonzero(pins["live"] & ~released & (pins["mapped"] != pins["page"]))
    return _details(incoherent, lambda i: (
        f"pin {pins['id'][i]} page {pins['index'][i]} ({_where(pins['pid'][i], pins['addr'][i])}): "
        f"pinned pfn {pins['page'][i]}, "
        + (f"mapped pfn {pins['mapped'][i]}" if pins["mapped"][i] >= 0 else "nothing present there")
        + ", and its process did not unmap it"))


# --- 6. data -----------------------------------------------------------------

def _check_data(machine: Machine, shadow: Shadow, scan: PageTableScan) -> list[str]:
    frames, swap = machine.frames, machine.swap
    pte_ok = scan.pte_pfn < scan.nr_frames
    pmd_pages = scan.pmd_pfn[:, None] + _PAGE_OFFSETS
    pmd_ok = pmd_pages < scan.nr_frames
    swp_ok = scan.swp_slot < swap.nr_slots
    keys = np.concatenate([
        scan.pte_key[pte_ok],
        (scan.pmd_key[:, None] + (_PAGE_OFFSETS << PAGE_SHIFT))[pmd_ok],
        scan.swp_key[swp_ok]])
    values = np.concatenate([
        frames.page_data[scan.pte_pfn[pte_ok]],
        frames.page_data[pmd_pages[pmd_ok]],
        swap.swap_data[scan.swp_slot[swp_ok]]])
    sources = np.concatenate([
        scan.pte_pfn[pte_ok], pmd_pages[pmd_ok], -1 - scan.swp_slot[swp_ok]])   # swap slots as -1 - slot

    shadow_items = [((pid << _PID_SHIFT) | addr, value)
                    for pid in machine.processes for addr, value in shadow.data.get(pid, {}).items()]
    shadow_items.sort()
    shadow_keys = np.array([key for key, _ in shadow_items], np.int64)
    shadow_values = np.array([value for _, value in shadow_items], np.uint64)

    found = _lookup(shadow_keys, keys)
    expected = np.where(found >= 0, shadow_values[np.maximum(found, 0)] if len(shadow_values) else 0,
                        0).astype(np.uint64)
    wrong = np.flatnonzero(values != expected)

    def describe_read(i: int) -> str:
        source = f"pfn {sources[i]}" if sources[i] >= 0 else f"swap slot {-1 - sources[i]}"
        return f"{_key_where(keys[i])}: reads {values[i]} ({source}), wrote {expected[i]}"

    failures = _details(wrong, describe_read)
    order = np.argsort(keys, kind="stable")
    unmapped = np.flatnonzero((shadow_values != 0) & (_lookup(keys[order], shadow_keys) < 0))
    failures += _details(unmapped, lambda i: (
        f"{_key_where(shadow_keys[i])}: wrote {shadow_values[i]}, but nothing is mapped there"))
    return failures


def _key_where(key: int) -> str:
    key = int(key)
    return _where(key >> _PID_SHIFT, key & ((1 << _PID_SHIFT) - 1))


# --- 7. layout ---------------------------------------------------------------

def _check_layout(machine: Machine, shadow: Shadow, scan: PageTableScan) -> list[str]:
    frames = machine.frames
    failures = list(scan.bad_pmds)
    failures += _details(_non_canonical_blocks(machine, scan), lambda block: (
        f"{_where(block[0], block[1])}: contpte block not canonical (CONT on "
        f"{int(pte_cont(block[2]).sum())}/16, young {int(pte_young(block[2]).sum())}/16, "
        f"dirty {int(pte_dirty(block[2]).sum())}/16)"))
    not_page = np.flatnonzero((scan.pte_desc & np.uint64(PTE_TYPE)) == 0)
    failures += _details(not_page, lambda i: (
        f"{_where(scan.pte_pid[i], scan.pte_addr[i])}: valid PTE {int(scan.pte_desc[i]):#x} is not a page descriptor"))

    misaligned = np.flatnonzero(scan.pmd_addr % PMD_SIZE != 0)
    failures += _details(misaligned, lambda i: f"{_where(scan.pmd_pid[i], scan.pmd_addr[i])}: PMD block not 2 MiB aligned")
    pfns = scan.pmd_pfn
    in_range = pfns < scan.nr_frames
    safe = np.where(in_range, pfns, 0)
    on_thp_head = in_range & (frames.page_folio[safe] == pfns) & (frames.folio_order[safe] == HPAGE_PMD_ORDER)
    failures += _details(np.flatnonzero(~on_thp_head), lambda i: (
        f"{_where(scan.pmd_pid[i], scan.pmd_addr[i])}: PMD block maps pfn {pfns[i]}, not the head of an order-9 folio"))

    for pid in sorted(machine.processes):
        failures += _check_vmas(pid, machine.processes[pid].vmas, scan)
    return failures


def _non_canonical_blocks(machine: Machine, scan: PageTableScan) -> list[tuple[int, int, np.ndarray]]:
    """(pid, addr, entries) of every 16-entry block that `machine.contpte_blocks_canonical` rejects.

    A block with no CONT bit that is not all valid entries can be neither
    folded nor eligible, so it is canonical; the machine judges the rest,
    packed a table's worth (32 blocks) at a time: its verdict is per block.
    """
    if not scan.pte_tables:
        return []
    blocks = scan.pte_entries.reshape(-1, CONT_PTES)
    candidates = np.flatnonzero(((blocks & np.uint64(PTE_VALID)) != 0).all(axis=1)
                                | ((blocks & np.uint64(PTE_CONT)) != 0).any(axis=1))
    per_table = PTRS_PER_TABLE // CONT_PTES
    rejected: list[tuple[int, int, np.ndarray]] = []
    for first in range(0, len(candidates), per_table):
        chunk = candidates[first:first + per_table]
        packed = np.zeros((per_table, CONT_PTES), np.uint64)
        packed[:len(chunk)] = blocks[chunk]
        canonical = machine.contpte_blocks_canonical(packed.reshape(-1))[:len(chunk)]
        for block in map(int, chunk[~canonical]):
            table, index = divmod(block, per_table)
            pid, base, _ = scan.pte_tables[table]
            rejected.append((pid, base + index * CONT_PTES * PAGE_SIZE, blocks[block]))
    return rejected


def _check_vmas(pid: int, vmas: list, scan: PageTableScan) -> list[str]:
    """pid's VMAs are sorted, disjoint, non-empty and page aligned, and hold every leaf of pid."""
    failures: list[str] = []
    for vma in vmas:
        if not (vma.start < vma.end and vma.start % PAGE_SIZE == 0 and vma.end % PAGE_SIZE == 0
                and 0 <= vma.start and vma.end <= TASK_SIZE):
            failures.append(f"P{pid} VMA {vma.start:#x}-{vma.end:#x}: empty, unaligned or outside the VA space")
    for before, after in zip(vmas, vmas[1:]):
        if before.end > after.start:
            failures.append(f"P{pid} VMA {before.start:#x}-{before.end:#x}: not sorted before or "
                            f"overlaps VMA {after.start:#x}-{after.end:#x}")
    starts = np.array([vma.start for vma in vmas], np.int64)
    ends = np.array([vma.end for vma in vmas], np.int64)

    def outside(addrs: np.ndarray, size: int) -> np.ndarray:
        if len(starts) == 0:
            return np.ones(len(addrs), bool)
        index = np.searchsorted(starts, addrs, side="right") - 1
        return (index < 0) | (addrs + size > ends[np.maximum(index, 0)])

    for level, pids, addrs, size in (("PTE", scan.pte_pid, scan.pte_addr, PAGE_SIZE),
                                     ("swap PTE", scan.swp_pid, scan.swp_addr, PAGE_SIZE),
                                     ("PMD block", scan.pmd_pid, scan.pmd_addr, PMD_SIZE)):
        mine = addrs[pids == pid]
        if len(mine):
            bad = mine[outside(mine, size)]
            failures += _details(bad, lambda addr: f"{_where(pid, addr)}: {level} outside "
                                                   + ("any VMA" if size == PAGE_SIZE else "a single VMA"))
    return failures


# --- the public interface ----------------------------------------------------

def _public(check_with_scan: Callable[[Machine, Shadow, PageTableScan], list[str]], name: str):
    def check_oracle(machine: Machine, shadow: Shadow) -> list[str]:
        return check_with_scan(machine, shadow, PageTableScan(machine))
    check_oracle.__name__ = check_oracle.__qualname__ = f"check_{name}"
    check_oracle.__doc__ = f"Oracle {name} (SPEC §6) on a fresh scan: failure details, empty if it holds."
    return check_oracle


_CHECKS: dict[str, Callable[[Machine, Shadow, PageTableScan], list[str]]] = {
    "mapcount": _check_mapcount,
    "refcount": _check_refcount,
    "swap": _check_swap,
    "exclusive": _check_exclusive,
    "pin": _check_pin,
    "data": _check_data,
    "layout": _check_layout,
}

check_mapcount = _public(_check_mapcount, "mapcount")
check_refcount = _public(_check_refcount, "refcount")
check_swap = _public(_check_swap, "swap")
check_exclusive = _public(_check_exclusive, "exclusive")
check_pin = _public(_check_pin, "pin")
check_data = _public(_check_data, "data")
check_layout = _public(_check_layout, "layout")

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
    oracle: str
    detail: str


def check_oracles(machine: Machine, shadow: Shadow) -> list[OracleFailure]:
    """Every oracle of SPEC §6, in order, from one scan of all page tables."""
    scan = PageTableScan(machine)
    return [OracleFailure(name, detail)
            for name, check_with_scan in _CHECKS.items()
            for detail in check_with_scan(machine, shadow, scan)]


__all__ = ["ORACLES", "OracleFailure", "PageTableScan", "check_oracles", "check_mapcount",
           "check_refcount", "check_swap", "check_exclusive", "check_pin", "check_data",
           "check_layout", "GUP_PIN_COUNTING_BIAS"]
