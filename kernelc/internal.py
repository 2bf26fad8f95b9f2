"""batched/internal.py's folio_pte_batch served by the kernel's C: folio_pte_batch_flags()
of mm/internal.h with arm64's accessors, contpte_ptep_get() and pte_batch_hint(), reading
the machine's own page table in place (fuzz/kernelc/glue.c)."""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType

import numpy as np

from machine import MM, Machine, PteRuns, check
from machine.pgtable import PAGE_SHIFT, PAGE_SIZE, PMD_SIZE, PTRS_PER_TABLE, pte_pfn, pte_present

from . import bridge
from .bridge import HelperLibrary


class KernelcPteBatch:
    """folio_pte_batch with batched.internal's signature, for one library and one copy of
    batched (whose PteBatches it returns)."""

    def __init__(self, library: HelperLibrary, internal: ModuleType) -> None:
        self.library = library
        self.pte_batches = internal.PteBatches

    def folio_pte_batch(self, machine: Machine, mm: MM, addr: int, ptes: np.ndarray, flags: int,
                        candidate: np.ndarray | None = None) -> object:
        """All batches of present entries of mm's PTE table from addr over len(ptes)
        entries, as the kernel's loops find them with folio_pte_batch_flags()."""
        table_addr = addr & ~(PMD_SIZE - 1)
        first = (addr - table_addr) >> PAGE_SHIFT
        check(len(ptes) >= 1 and first + len(ptes) <= PTRS_PER_TABLE, "folio_pte_batch range crosses a PTE table")
        table = mm.pte_table(addr)
        check(table is not None, "folio_pte_batch of %#x without a PTE table", addr)
        assert table is not None
        entries = table.entries
        check(entries.__array_interface__["data"][0] % PAGE_SIZE == 0, "PTE table not page-aligned")
        present = pte_present(ptes)   # fork may have rewritten swap entries since it read them
        check(np.array_equal(machine.ptes_get(mm, addr, len(ptes))[present], ptes[present]),   # ptep_get's view
              "folio_pte_batch given present entries that are not the table's")
        index, nr_pages, templates = bridge.folio_pte_batches(self.library, machine, entries, first, len(ptes),
                                                              candidate, flags)
        pages = pte_pfn(templates).astype(np.int64)
        folios = machine.frames.page_folio[pages]
        return self.pte_batches(PteRuns(table_addr, index, nr_pages), folios, pages, templates)

    def functions(self) -> dict[str, Callable[..., object]]:
        """batched.internal's name of each helper this serves."""
        return {"folio_pte_batch": self.folio_pte_batch}
