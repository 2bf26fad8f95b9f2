"""fork write-protects only the first parent PTE of a shared batch: the parent keeps writing
to pages the child shares."""

import numpy as np

from machine import PteRuns
from machine.pgtable import pte_mkold, pte_write, pte_wrprotect

from . import load_batched_copy, plant

batched = load_batched_copy(__name__ + "_batched")


def __copy_present_ptes(machine, dst_mm, dst_vma, src_mm, batches):
    writable = pte_write(batches.pte)
    if writable.any():
        firsts = PteRuns(batches.runs.addr, batches.runs.index[writable], np.ones(int(writable.sum()), np.int64))
        machine.wrprotect_ptes_runs(src_mm, firsts)  # planted: the first PTE of each batch only
    child = np.where(writable, pte_wrprotect(batches.pte), batches.pte)
    machine.set_ptes_runs(dst_mm, batches.runs, pte_mkold(child))


plant(batched, "memory", "__copy_present_ptes", __copy_present_ptes)
Kernel = batched.Kernel
