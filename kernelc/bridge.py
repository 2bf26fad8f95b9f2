"""The ctypes bridge to the kernel's own rmap helpers (fuzz/kernelc/glue.c).

The machine's frame arrays are handed to the C by pointer; each call names one folio, which
the C copies into struct pages in the kernel's layout, passes to the helper and copies
back (deriving `_nr_pages_mapped` on the way in and checking it on the way out). A
VM_WARN_* that fires becomes a KernelWarning naming the kernel function, file and line.
"""

from __future__ import annotations

import ctypes
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field

import numpy as np

from machine import MM, Machine
from machine.errors import KernelWarning
from machine.frames import FrameTable

ESCAPED = -1000        # the helper walked off the folio's window; the call was abandoned
INCONSISTENT = -1001   # the kernel's own state (_nr_pages_mapped, the lock bit) went wrong
EBUSY = -16

POINTER_FIELDS = (
    ("page_mapcount", ctypes.c_int32), ("page_anon_exclusive", ctypes.c_uint8), ("page_folio", ctypes.c_int64),
    ("folio_order", ctypes.c_int8), ("folio_refcount", ctypes.c_int64), ("folio_large_mapcount", ctypes.c_int32),
    ("folio_entire_mapcount", ctypes.c_int32), ("folio_pincount", ctypes.c_int32),
    ("folio_mm_id", ctypes.c_int32), ("folio_mm_id_mapcount", ctypes.c_int32),
    ("folio_mm_ids_shared", ctypes.c_uint8), ("folio_anon", ctypes.c_uint8),
)


class Frames(ctypes.Structure):
    """struct frames of glue.c: a pointer to each FrameTable array."""

    _fields_ = [(name, ctypes.POINTER(ctype)) for name, ctype in POINTER_FIELDS]


class Warning_(ctypes.Structure):
    """struct rmapfuzz_warning of shim.h."""

    _fields_ = [("file", ctypes.c_char_p), ("function", ctypes.c_char_p), ("line", ctypes.c_int),
                ("condition", ctypes.c_char_p)]


def frames_pointers(frames: FrameTable) -> Frames:
    """The pointers to frames' arrays (which live as long as frames)."""
    pointers = Frames()
    for name, ctype in POINTER_FIELDS:
        array = getattr(frames, name)
        assert array.flags.c_contiguous and array.dtype.itemsize == ctypes.sizeof(ctype), name
        setattr(pointers, name, array.ctypes.data_as(ctypes.POINTER(ctype)))
    return pointers


@dataclass
class HelperLibrary:
    """The loaded helper library and the frames its pointers were last made for."""

    lib: ctypes.CDLL
    has_share_ptes: bool
    frames: FrameTable | None = None
    pointers: Frames | None = None
    calls: Counter[str] = field(default_factory=Counter)            # per entry point
    seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))

    def costs(self) -> dict[str, tuple[int, float]]:
        """Each helper called so far: (calls, microseconds per call, the copy in and out
        and the ctypes call included)."""
        return {name.removeprefix("rmapfuzz_"): (count, 1e6 * self.seconds[name] / count)
                for name, count in sorted(self.calls.items())}

    def frames_of(self, machine: Machine) -> Frames:
        """The pointers for machine.frames (a rollback may replace the FrameTable)."""
        if machine.frames is not self.frames:
            self.pointers = frames_pointers(machine.frames)
            self.frames = machine.frames
        assert self.pointers is not None
        return self.pointers


ENTRY_POINTS = {
    "rmapfuzz_try_dup_anon_rmap_ptes": (ctypes.c_long, ctypes.c_long, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                                        ctypes.c_int),
    "rmapfuzz_try_dup_anon_rmap_pmd": (ctypes.c_long, ctypes.c_int, ctypes.c_int, ctypes.c_int),
    "rmapfuzz_try_share_anon_rmap_ptes": (ctypes.c_long, ctypes.c_long, ctypes.c_int),
    "rmapfuzz_try_share_anon_rmap_pmd": (ctypes.c_long,),
    "rmapfuzz_set_large_mapcount": (ctypes.c_long, ctypes.c_int, ctypes.c_int),
    "rmapfuzz_add_return_large_mapcount": (ctypes.c_long, ctypes.c_int, ctypes.c_int),
    "rmapfuzz_sub_return_large_mapcount": (ctypes.c_long, ctypes.c_int, ctypes.c_int),
    "rmapfuzz_add_anon_rmap_ptes": (ctypes.c_long, ctypes.c_long, ctypes.c_int, ctypes.c_int, ctypes.c_int),
    "rmapfuzz_remove_rmap_ptes": (ctypes.c_long, ctypes.c_long, ctypes.c_int, ctypes.c_int),
    "rmapfuzz_remove_rmap_pmd": (ctypes.c_long, ctypes.c_int),
    # the table, first, nr_ptes, candidate (or NULL), flags, and the index, nr_pages and pte out arrays
    "rmapfuzz_folio_pte_batches": (ctypes.c_void_p, ctypes.c_int, ctypes.c_int, ctypes.c_void_p, ctypes.c_int,
                                   ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p),
}


def load_library(path: str) -> HelperLibrary:
    """The helper library at path with its entry points typed."""
    lib = ctypes.CDLL(path)
    for name, arguments in ENTRY_POINTS.items():
        function = getattr(lib, name)
        function.argtypes = (ctypes.POINTER(Frames), *arguments)
        function.restype = ctypes.c_int
    return HelperLibrary(lib, bool(ctypes.c_int.in_dll(lib, "rmapfuzz_has_share_ptes").value))


def call(library: HelperLibrary, name: str, *arguments: object) -> int:
    """The entry point name of library on arguments, counted and timed."""
    started = time.perf_counter()
    ret: int = getattr(library.lib, name)(*arguments)
    library.seconds[name] += time.perf_counter() - started
    library.calls[name] += 1
    return ret


def raise_warnings(library: HelperLibrary, ret: int) -> int:
    """ret, unless a VM_WARN_* fired during the call (or the call escaped): KernelWarning."""
    nr_warnings = ctypes.c_int.in_dll(library.lib, "rmapfuzz_nr_warnings").value
    if nr_warnings == 0 and ret not in (ESCAPED, INCONSISTENT):
        return ret
    warnings = (Warning_ * 16).in_dll(library.lib, "rmapfuzz_warnings")
    if nr_warnings == 0:
        raise KernelWarning("bridge", "kernelc/bridge.py", 0, f"helper returned {ret}")
    first = warnings[0]
    raise KernelWarning(_text(first.function), _text(first.file), first.line, _text(first.condition))


def _text(value: bytes | None) -> str:
    return value.decode() if value is not None else "?"


# One call per helper, on the machine's arrays.

def try_dup_anon_rmap_ptes(library: HelperLibrary, machine: Machine, folio: int, page: int, nr_pages: int,
                           dst_mm: MM, src_mm: MM) -> int:
    """folio_try_dup_anon_rmap_ptes: 0, or -EBUSY (nothing changed)."""
    ret = call(library, "rmapfuzz_try_dup_anon_rmap_ptes", library.frames_of(machine), folio, page, nr_pages,
                                                      dst_mm.mm_id, src_mm.mm_id, src_mm.has_pinned)
    return raise_warnings(library, ret)


def try_dup_anon_rmap_pmd(library: HelperLibrary, machine: Machine, folio: int, dst_mm: MM, src_mm: MM) -> int:
    """folio_try_dup_anon_rmap_pmd: 0, or -EBUSY (nothing changed)."""
    ret = call(library, "rmapfuzz_try_dup_anon_rmap_pmd", library.frames_of(machine), folio, dst_mm.mm_id,
                                                     src_mm.mm_id, src_mm.has_pinned)
    return raise_warnings(library, ret)


def try_share_anon_rmap_ptes(library: HelperLibrary, machine: Machine, folio: int, page: int,
                             nr_pages: int) -> int:
    """folio_try_share_anon_rmap_ptes (the series), else _pte page by page: 0 or -EBUSY."""
    ret = call(library, "rmapfuzz_try_share_anon_rmap_ptes", library.frames_of(machine), folio, page, nr_pages)
    return raise_warnings(library, ret)


def try_share_anon_rmap_pmd(library: HelperLibrary, machine: Machine, folio: int) -> int:
    ret = call(library, "rmapfuzz_try_share_anon_rmap_pmd", library.frames_of(machine), folio)
    return raise_warnings(library, ret)


def set_large_mapcount(library: HelperLibrary, machine: Machine, folio: int, mapcount: int, mm: MM) -> None:
    ret = call(library, "rmapfuzz_set_large_mapcount", library.frames_of(machine), folio, mapcount, mm.mm_id)
    raise_warnings(library, ret)


def add_return_large_mapcount(library: HelperLibrary, machine: Machine, folio: int, diff: int, mm: MM) -> int:
    """folio_add_return_large_mapcount: the new large mapcount."""
    ret = call(library, "rmapfuzz_add_return_large_mapcount", library.frames_of(machine), folio, diff, mm.mm_id)
    return raise_warnings(library, ret)


def sub_return_large_mapcount(library: HelperLibrary, machine: Machine, folio: int, diff: int, mm: MM) -> int:
    """folio_sub_return_large_mapcount: the new large mapcount."""
    ret = call(library, "rmapfuzz_sub_return_large_mapcount", library.frames_of(machine), folio, diff, mm.mm_id)
    return raise_warnings(library, ret)


def add_anon_rmap_ptes(library: HelperLibrary, machine: Machine, folio: int, page: int, nr_pages: int, mm: MM,
                       exclusive: bool) -> None:
    """folio_add_anon_rmap_ptes, with RMAP_EXCLUSIVE if exclusive."""
    ret = call(library, "rmapfuzz_add_anon_rmap_ptes", library.frames_of(machine), folio, page, nr_pages,
               mm.mm_id, exclusive)
    raise_warnings(library, ret)


def remove_rmap_ptes(library: HelperLibrary, machine: Machine, folio: int, page: int, nr_pages: int,
                     mm: MM) -> None:
    ret = call(library, "rmapfuzz_remove_rmap_ptes", library.frames_of(machine), folio, page, nr_pages, mm.mm_id)
    raise_warnings(library, ret)


def remove_rmap_pmd(library: HelperLibrary, machine: Machine, folio: int, mm: MM) -> None:
    ret = call(library, "rmapfuzz_remove_rmap_pmd", library.frames_of(machine), folio, mm.mm_id)
    raise_warnings(library, ret)


def folio_pte_batches(library: HelperLibrary, machine: Machine, table: np.ndarray, first: int, nr_ptes: int,
                      candidate: np.ndarray | None, flags: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every batch of table's entries [first, first + nr_ptes), found by the kernel's
    folio_pte_batch_flags() on the table itself: (first index, nr_pages, template) each."""
    assert table.dtype == np.uint64 and table.flags.c_contiguous
    index = np.empty(nr_ptes, np.int64)
    nr_pages = np.empty(nr_ptes, np.int64)
    ptes = np.empty(nr_ptes, np.uint64)
    wanted = None if candidate is None else np.ascontiguousarray(candidate, np.uint8)
    ret = call(library, "rmapfuzz_folio_pte_batches", library.frames_of(machine), table.ctypes.data, first, nr_ptes,
               None if wanted is None else wanted.ctypes.data, flags, index.ctypes.data, nr_pages.ctypes.data,
               ptes.ctypes.data)
    nr_batches = raise_warnings(library, ret)
    return index[:nr_batches], nr_pages[:nr_batches], ptes[:nr_batches]


def pte_bits(library: HelperLibrary) -> dict[str, int]:
    """The kernel's values of the descriptor bits the machine encodes (from the tree's
    pgtable-hwdef.h and pgtable-prot.h), by name."""
    names = ("PTE_VALID", "PTE_RDONLY", "PTE_AF", "PTE_WRITE", "PTE_CONT", "PTE_DIRTY", "PTE_ADDR_LOW",
             "CONT_PTES")
    bits = (ctypes.c_uint64 * len(names))()
    library.lib.rmapfuzz_pte_bits(bits)
    return dict(zip(names, bits, strict=True))


def as_ints(*arrays: np.ndarray) -> list[list[int]]:
    """numpy batch arrays as lists of Python ints (ctypes takes no numpy scalars)."""
    return [array.tolist() for array in arrays]
