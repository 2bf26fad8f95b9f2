"""batched/rmap.py's helpers served by the kernel's C: the same signatures, each batch one
call of the extracted helper on its folio (fuzz/kernelc/glue.c)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from machine import MM, Machine
from machine.errors import EBUSY as BUSY
from machine.errors import OK

from . import bridge
from .bridge import EBUSY, HelperLibrary


class KernelcRmap:
    """The C-backed helpers for one library; each method has batched.rmap's signature."""

    def __init__(self, library: HelperLibrary) -> None:
        self.library = library

    # MM_ID: who maps a large folio.

    def folio_set_large_mapcount(self, machine: Machine, folio: int, mapcount: int, mm: MM) -> None:
        bridge.set_large_mapcount(self.library, machine, int(folio), int(mapcount), mm)

    def folio_add_return_large_mapcount(self, machine: Machine, folio: int, diff: int, mm: MM) -> int:
        return bridge.add_return_large_mapcount(self.library, machine, int(folio), int(diff), mm)

    def folio_sub_return_large_mapcount(self, machine: Machine, folio: int, diff: int, mm: MM) -> int:
        return bridge.sub_return_large_mapcount(self.library, machine, int(folio), int(diff), mm)

    def folios_add_large_mapcount(self, machine: Machine, folios: np.ndarray, diffs: np.ndarray, mm: MM) -> None:
        for folio, diff in zip(*bridge.as_ints(folios, diffs), strict=True):
            bridge.add_return_large_mapcount(self.library, machine, folio, diff, mm)

    def folios_sub_large_mapcount(self, machine: Machine, folios: np.ndarray, diffs: np.ndarray, mm: MM) -> None:
        for folio, diff in zip(*bridge.as_ints(folios, diffs), strict=True):
            bridge.sub_return_large_mapcount(self.library, machine, folio, diff, mm)

    # fork and try_to_unmap.

    def folios_try_dup_anon_rmap_ptes(self, machine: Machine, folio: np.ndarray, page: np.ndarray,
                                      nr_pages: np.ndarray, dst_mm: MM, src_mm: MM) -> np.ndarray:
        """Per batch, whether it failed (-EBUSY: the folio may be pinned; nothing changed)."""
        busy = np.zeros(len(folio), np.bool_)
        for index, (head, first, count) in enumerate(zip(*bridge.as_ints(folio, page, nr_pages), strict=True)):
            ret = bridge.try_dup_anon_rmap_ptes(self.library, machine, head, first, count, dst_mm, src_mm)
            busy[index] = ret == EBUSY
        return busy

    def folio_try_dup_anon_rmap_pmd(self, machine: Machine, folio: int, dst_mm: MM, src_mm: MM) -> str:
        """OK, or EBUSY (nothing changed) as the kernel's 0 or -EBUSY."""
        ret = bridge.try_dup_anon_rmap_pmd(self.library, machine, int(folio), dst_mm, src_mm)
        return BUSY if ret == EBUSY else OK

    def folio_try_share_anon_rmap_pte(self, machine: Machine, folio: int, page: int) -> str:
        """One page shared through the kernel's helper: OK, or EBUSY (nothing changed)."""
        ret = bridge.try_share_anon_rmap_ptes(self.library, machine, int(folio), int(page), 1)
        return BUSY if ret == EBUSY else OK

    def folios_try_share_anon_rmap_ptes(self, machine: Machine, folio: np.ndarray, page: np.ndarray,
                                        nr_pages: np.ndarray) -> np.ndarray:
        """Per batch, whether it failed (-EBUSY; left as it was) or was shared (0)."""
        busy = np.zeros(len(folio), np.bool_)
        for index, (head, first, count) in enumerate(zip(*bridge.as_ints(folio, page, nr_pages), strict=True)):
            busy[index] = bridge.try_share_anon_rmap_ptes(self.library, machine, head, first, count) == EBUSY
        return busy

    # Adding and removing PTE and PMD mappings (mm/rmap.c).

    def folios_add_anon_rmap_ptes(self, machine: Machine, folio: np.ndarray, page: np.ndarray, nr_pages: np.ndarray,
                                 mm: MM, exclusive: np.ndarray) -> None:
        batches = zip(*bridge.as_ints(folio, page, nr_pages, exclusive), strict=True)
        for head, first, count, is_exclusive in batches:
            bridge.add_anon_rmap_ptes(self.library, machine, head, first, count, mm, bool(is_exclusive))

    def folios_remove_rmap_ptes(self, machine: Machine, folio: np.ndarray, page: np.ndarray, nr_pages: np.ndarray,
                               mm: MM) -> None:
        for head, first, count in zip(*bridge.as_ints(folio, page, nr_pages), strict=True):
            bridge.remove_rmap_ptes(self.library, machine, head, first, count, mm)

    def folio_remove_rmap_pte(self, machine: Machine, folio: int, page: int, mm: MM) -> None:
        bridge.remove_rmap_ptes(self.library, machine, int(folio), int(page), 1, mm)

    def folio_remove_rmap_pmd(self, machine: Machine, folio: int, mm: MM) -> None:
        bridge.remove_rmap_pmd(self.library, machine, int(folio), mm)

    def functions(self) -> dict[str, Callable[..., object]]:
        """batched.rmap's name of each helper this serves."""
        return {name: getattr(self, name) for name in (
            "folio_set_large_mapcount", "folio_add_return_large_mapcount", "folio_sub_return_large_mapcount",
            "folios_add_large_mapcount", "folios_sub_large_mapcount",
            "folios_try_dup_anon_rmap_ptes", "folio_try_dup_anon_rmap_pmd", "folio_try_share_anon_rmap_pte",
            "folios_try_share_anon_rmap_ptes", "folios_add_anon_rmap_ptes", "folios_remove_rmap_ptes",
            "folio_remove_rmap_pte", "folio_remove_rmap_pmd")}
