"""fork writes the child's entries with the parent's CONT bit (the ptep_get value written with
__set_ptes, not set_ptes, which drops it: pte_mknoncont), so a child range that does not
cover a folded block wholly, as the page-by-page copy of a maybe-pinned folio, is left
half folded: a contpte block the MMU may take any entry of as the whole block's translation."""

import numpy as np

from machine.pgtable import PAGE_SHIFT, PTE_CONT, pte_clear_uffd_wp, pte_mkold, pte_write, pte_wrprotect

from . import load_batched_copy, plant

batched = load_batched_copy(__name__ + "_batched")


def __copy_present_ptes(machine, dst_mm, dst_vma, src_mm, batches):
    writable = pte_write(batches.pte)
    if writable.any():
        machine.wrprotect_ptes_runs(src_mm, batches.select(writable).runs)
    child = np.where(writable, pte_wrprotect(batches.pte), batches.pte)
    if not dst_vma.uffd_wp:
        child = pte_clear_uffd_wp(child)
    machine.set_ptes_runs(dst_mm, batches.runs, pte_mkold(child))
    cont = (child & np.uint64(PTE_CONT)) != 0
    for index, nr_pages in zip(batches.runs.index[cont].tolist(), batches.runs.nr_pages[cont].tolist(), strict=True):
        for entry in range(index, index + nr_pages):   # planted: the parent's CONT bit kept
            addr = batches.runs.addr + (entry << PAGE_SHIFT)
            machine.set_pte_raw(dst_mm, addr, machine.ptep_get_raw(dst_mm, addr) | PTE_CONT)


plant(batched, "memory", "__copy_present_ptes", __copy_present_ptes)
Kernel = batched.Kernel
