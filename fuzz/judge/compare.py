"""Exact comparison of two machines: "identical final state" of SPEC §5.

Compared: every frame's metadata and data (all `FrameTable.ARRAYS`), every
swap slot (data, count, swap-cache folio, zeromap bit), the set of live processes and, for each, its VMAs
(start, end, prot, lineage, userfaultfd context), RSS counters, MMF_HAS_PINNED and every non-zero
leaf descriptor (PTE or PMD block) with its address and level; the pin table;
and the machine's counters (processes, mmaps and pins ever made). Page-table
pages themselves (table descriptors, empty tables) are not compared.

Equal machines are the common case, so every part is first compared whole
(`_same_array`: same dtype, shape and bytes; a dict's ==); only a part that
differs is taken apart element by element. The list of differences is capped
(`MAX_DIFFERENCES`) with a final "... N more" entry.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from machine import Machine, Pin
from machine.frames import FrameTable
from machine.mm import MM, VMA
from machine.pgtable import (
    PAGE_SHIFT,
    PMD_SHIFT,
    PMD_TYPE_TABLE,
    PTE_TYPE_MASK,
    PTRS_PER_TABLE,
    describe_pte,
    pte_pfn,
    pte_special,
)

MAX_DIFFERENCES = 50
MORE_FIELD = "more"   # the field of the final "... N more" entry of a capped list
_NO_ENTRIES = np.zeros(PTRS_PER_TABLE, np.uint64)   # what a missing PTE table reads


@dataclass(frozen=True)
class Difference:
    """One differing value: where (process and address, pfn, slot, pin or machine),
    which field, the first (reference) machine's value and the other's."""

    where: str
    field: str
    ref: str
    other: str

    def describe(self, ref_name: str = "ref", other_name: str = "other") -> str:
        if self.field == MORE_FIELD:
            return self.where
        return f"{self.where}: {self.field}: {ref_name}={self.ref} {other_name}={self.other}"

    def __str__(self) -> str:
        return self.describe()


class _Differences:
    """The capped list being built: past the cap, differences are only counted."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.items: list[Difference] = []
        self.nr_more = 0

    def full(self) -> bool:
        return len(self.items) >= self.limit

    def add(self, where: str, field: str, ref: object, other: object) -> None:
        if self.full():
            self.nr_more += 1
        else:
            self.items.append(Difference(where, field, _text(ref), _text(other)))

    def skip(self, nr_differences: int) -> None:
        self.nr_more += nr_differences

    def result(self) -> list[Difference]:
        if not self.nr_more:
            return self.items
        return self.items + [Difference(f"... {self.nr_more} more", MORE_FIELD, "", "")]


def _same_array(ref: np.ndarray, other: np.ndarray) -> bool:
    """Whether two of a machine's integer or bool arrays are equal: same dtype, shape and bytes
    (np.array_equal without its overhead). On False the caller compares element by element."""
    return ref.dtype == other.dtype and ref.shape == other.shape and ref.tobytes() == other.tobytes()


def _text(value: object) -> str:
    if isinstance(value, np.ndarray):
        value = value.tolist()
    elif isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def compare_machines(a: Machine, b: Machine, limit: int = MAX_DIFFERENCES) -> list[Difference]:
    """Every difference between machine a (the reference) and b; [] when equal."""
    out = _Differences(limit)
    if a.frames.nr_frames != b.frames.nr_frames:
        out.add("machine", "nr_frames", a.frames.nr_frames, b.frames.nr_frames)
        return out.result()
    _compare_processes(a, b, out)
    _compare_pins(a, b, out)
    _compare_frames(a.frames, b.frames, out)
    _compare_swap(a, b, out)
    _compare_files(a, b, out)
    for field in ("nr_processes", "nr_mmaps", "nr_pins"):
        if getattr(a, field) != getattr(b, field):
            out.add("machine", field, getattr(a, field), getattr(b, field))
    return out.result()


# Frames and swap slots.

def _compare_frames(a: FrameTable, b: FrameTable, out: _Differences) -> None:
    """Per pfn, then per field in FrameTable.ARRAYS order."""
    fields: list[str] = []
    masks: list[np.ndarray] = []
    for name in FrameTable.ARRAYS:
        ref, other = getattr(a, name), getattr(b, name)
        if _same_array(ref, other):
            continue
        differs = ref != other
        if differs.ndim > 1:     # folio_mm_id, folio_mm_id_mapcount: one row per pfn
            differs = differs.any(axis=tuple(range(1, differs.ndim)))
        fields.append(name)
        masks.append(differs)
    if not fields:
        return
    differs = np.stack(masks)                   # (fields, pfns)
    nr_differences = int(differs.sum())
    nr_reported = 0
    for page in map(int, np.flatnonzero(differs.any(axis=0))):
        for row, name in enumerate(fields):
            if not differs[row, page]:
                continue
            if out.full():
                out.skip(nr_differences - nr_reported)
                return
            out.add(_frame_where(a, page), name, getattr(a, name)[page], getattr(b, name)[page])
            nr_reported += 1


def _compare_swap(a: Machine, b: Machine, out: _Differences) -> None:
    if a.swap.nr_slots != b.swap.nr_slots:
        out.add("swap", "nr_slots", a.swap.nr_slots, b.swap.nr_slots)
        return
    fields = ("swap_data", "swap_count", "swap_cache", "swap_zeromap")
    if all(_same_array(getattr(a.swap, name), getattr(b.swap, name)) for name in fields):
        return
    differs = np.stack([getattr(a.swap, name) != getattr(b.swap, name) for name in fields])
    nr_differences = int(differs.sum())
    nr_reported = 0
    for slot in map(int, np.flatnonzero(differs.any(axis=0))):
        for row, name in enumerate(fields):
            if not differs[row, slot]:
                continue
            if out.full():
                out.skip(nr_differences - nr_reported)
                return
            out.add(f"slot {slot}", name, getattr(a.swap, name)[slot], getattr(b.swap, name)[slot])
            nr_reported += 1


# Processes.

def _process_list(pids: set[int]) -> str:
    return ",".join(f"P{pid}" for pid in sorted(pids)) or "none"


def _compare_processes(a: Machine, b: Machine, out: _Differences) -> None:
    ref_pids, other_pids = set(a.processes), set(b.processes)
    if ref_pids != other_pids:
        out.add("machine", "processes", _process_list(ref_pids), _process_list(other_pids))
    for pid in sorted(ref_pids & other_pids):
        _compare_mm(a.processes[pid], b.processes[pid], out, a.frames)


def _compare_files(a: Machine, b: Machine, out: _Differences) -> None:
    """Each file: size, kind, page cache (index: head pfn), shmem swap entries, disk words."""
    for file_id in sorted(a.files.keys() | b.files.keys()):
        ref, other = a.files.get(file_id), b.files.get(file_id)
        if ref == other:
            continue
        if ref is None or other is None:
            out.add(f"F{file_id}", "file", "absent" if ref is None else "present",
                    "absent" if other is None else "present")
            continue
        for field in ("nr_pages", "shmem", "cache", "swap", "disk"):
            if getattr(ref, field) != getattr(other, field):
                out.add(f"F{file_id}", field, getattr(ref, field), getattr(other, field))


def _vma_fields(vma: VMA) -> tuple:
    return (vma.start, vma.end, vma.prot, vma.lineage, vma.file, vma.file_pgoff, vma.shared, vma.anon_vma,
            vma.anon_vma_fork_child, vma.uffd_ctx, vma.account)


def _vma_text(vma: tuple | None) -> str:
    if vma is None:
        return "absent"
    start, end, prot, lineage, file, file_pgoff, shared, anon_vma, fork_child, uffd_ctx, account = vma
    text = f"{start:#x}-{end:#x} {prot}{' account' if account else ''} lineage={lineage}"
    if file is not None:
        text += f" file=F{file} pgoff={file_pgoff} {'shared' if shared else 'private'}"
    if anon_vma:
        text += f" anon_vma={anon_vma}" + (" (fork child)" if fork_child else "")
    return text + (f" uffd={uffd_ctx}" if uffd_ctx else "")


def describe_leaf(frames: FrameTable, desc: int) -> str:
    """describe_pte, naming a zero-page entry (special, on a reserved zero pfn) as what it is."""
    text = describe_pte(desc)
    if desc and pte_special(desc) and frames.is_zero_pfn(int(pte_pfn(desc))):
        return "zero page " + text
    return text


def _frame_where(frames: FrameTable, page: int) -> str:
    """pfn N, and which reserved frame it is if it is one."""
    if page == frames.zero_pfn:
        return f"pfn {page} (zero page)"
    if page >= frames.nr_frames:
        return f"pfn {page} (huge zero folio)" if page >= frames.huge_zero_pfn else f"pfn {page} (padding)"
    return f"pfn {page}"


def _compare_mm(a: MM, b: MM, out: _Differences, frames: FrameTable) -> None:
    where = f"P{a.pid}"
    if a.vmas != b.vmas:
        _compare_vmas(a, b, out)
    for field in ("rss_anon", "rss_swap", "rss_file", "has_pinned"):
        if getattr(a, field) != getattr(b, field):
            out.add(where, field, getattr(a, field), getattr(b, field))
    _compare_leaves(a, b, out, frames)


def _compare_vmas(a: MM, b: MM, out: _Differences) -> None:
    """Per start address, the VMA that starts there on each side."""
    ref_vmas = {vma.start: _vma_fields(vma) for vma in a.vmas}
    other_vmas = {vma.start: _vma_fields(vma) for vma in b.vmas}
    for start in sorted(ref_vmas.keys() | other_vmas.keys()):
        ref, other = ref_vmas.get(start), other_vmas.get(start)
        if ref != other:
            out.add(f"P{a.pid} {start:#x}", "vma", _vma_text(ref), _vma_text(other))


def _leaf_tables(mm: MM) -> tuple[dict[int, int], dict[int, np.ndarray]]:
    """The leaf descriptors of mm: the non-zero PMD entries that are not table descriptors by
    address, and the PTE tables' entries by their base address."""
    pmd_blocks: dict[int, int] = {}
    pte_tables: dict[int, np.ndarray] = {}
    for pmd_table in mm.pmd_tables():
        for index, pmd in pmd_table.nonzero_entries():
            if pmd & PTE_TYPE_MASK != PMD_TYPE_TABLE:
                pmd_blocks[pmd_table.base + (index << PMD_SHIFT)] = pmd
        for index, table in pmd_table.ptes.items():
            pte_tables[pmd_table.base + (index << PMD_SHIFT)] = table.entries
    return pmd_blocks, pte_tables


def _differing_blocks(ref: dict[int, int], other: dict[int, int]) -> list[tuple[int, str, int, int]]:
    """(addr, "pmd", ref value, other value) of every differing PMD leaf; a missing one reads 0."""
    if ref == other:
        return []
    return [(addr, "pmd", ref.get(addr, 0), other.get(addr, 0)) for addr in ref.keys() | other.keys()
            if ref.get(addr, 0) != other.get(addr, 0)]


def _differing_entries(ref: dict[int, np.ndarray],
                       other: dict[int, np.ndarray]) -> list[tuple[int, str, int, int]]:
    """(addr, "pte", ref value, other value) of every differing PTE; a missing table reads 0."""
    found = []
    for base in ref.keys() | other.keys():
        ref_entries, other_entries = ref.get(base, _NO_ENTRIES), other.get(base, _NO_ENTRIES)
        if _same_array(ref_entries, other_entries):
            continue
        for index in map(int, np.flatnonzero(ref_entries != other_entries)):
            found.append((base + (index << PAGE_SHIFT), "pte", int(ref_entries[index]), int(other_entries[index])))
    return found


def _compare_leaves(a: MM, b: MM, out: _Differences, frames: FrameTable) -> None:
    """Every non-zero leaf descriptor (mm.leaves()), compared table by table."""
    ref_blocks, ref_ptes = _leaf_tables(a)
    other_blocks, other_ptes = _leaf_tables(b)
    found = _differing_blocks(ref_blocks, other_blocks) + _differing_entries(ref_ptes, other_ptes)
    found.sort()
    for position, (addr, level, ref, other) in enumerate(found):
        if out.full():
            out.skip(len(found) - position)
            return
        out.add(f"P{a.pid} {addr:#x}", level, describe_leaf(frames, ref), describe_leaf(frames, other))


# Pins.

def _pin_text(pin: Pin | None) -> str:
    if pin is None:
        return "absent"
    pages = ",".join(map(str, pin.pages[:8])) + (",..." if len(pin.pages) > 8 else "")
    return f"P{pin.pid} {pin.addr:#x} nr_pages={pin.nr_pages} {pin.mode} pages={pages}"


def _compare_pins(a: Machine, b: Machine, out: _Differences) -> None:
    if a.pins == b.pins:
        return
    for pin_id in sorted(a.pins.keys() | b.pins.keys()):
        ref, other = a.pins.get(pin_id), b.pins.get(pin_id)
        if ref != other:
            out.add(f"pin {pin_id}", "pin", _pin_text(ref), _pin_text(other))


__all__ = ["MAX_DIFFERENCES", "Difference", "compare_machines"]
