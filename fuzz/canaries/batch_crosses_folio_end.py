"""folio_pte_batch without the folio-end stop: consecutive pfns with matching bits continue
the batch into the next folio (the 2025 XEN PV fix's bug class)."""

import numpy as np

from machine import PteRuns
from machine.pgtable import PMD_SIZE, pte_mkwrite, pte_pfn, pte_present, pte_write

from . import load_batched_copy, plant, submodule

batched = load_batched_copy(__name__ + "_batched")
internal = submodule(batched, "internal")


def folio_pte_batch(machine, mm, addr, ptes, flags, candidate=None):
    table_addr = addr & ~(PMD_SIZE - 1)
    first = (addr - table_addr) >> 12
    present = pte_present(ptes)
    if candidate is not None:
        present &= candidate
    pfns = pte_pfn(ptes).astype(np.int64)
    folios = np.where(present, machine.frames.page_folio[np.where(present, pfns, 0)], -1)
    expected = getattr(internal, "__pte_batch_clear_ignored")(ptes, flags)
    index = np.arange(first, first + len(ptes), dtype=np.int64)
    continues = np.zeros(len(ptes), bool)
    continues[1:] = present[1:] & present[:-1] & (pfns[1:] == pfns[:-1] + 1) & (expected[1:] == expected[:-1])
    starts = np.flatnonzero(present & ~continues)  # planted: no same-folio (folio end) check
    run_ids = np.cumsum(present & ~continues) - 1
    nr_pages = np.bincount(run_ids[present], minlength=len(starts)).astype(np.int64)
    templates = ptes[starts].copy()
    if flags & internal.FPB_MERGE_WRITE and len(starts):
        any_writable = internal.batches_any(pte_write(ptes[present]), nr_pages)
        templates = np.where(any_writable, pte_mkwrite(templates), templates)
    return internal.PteBatches(PteRuns(table_addr, index[starts], nr_pages),
                               folios[starts].astype(np.int64), pfns[starts], templates)


plant(batched, "internal", "folio_pte_batch", folio_pte_batch)
Kernel = batched.Kernel
