"""UFFDIO_WRITEPROTECT write-protects the first entry of each run of consecutive pages only
(change_present_ptes giving the batch's template the uffd-wp bit and committing the rest
from their old values): the other entries of a contpte block or mTHP the range covers stay
writable."""

import numpy as np

from machine.pgtable import pte_clear_uffd_wp, pte_mkuffd_wp, pte_modify, pte_pfn, vm_get_page_prot

from . import load_batched_copy, plant, submodule

batched = load_batched_copy(__name__ + "_batched")
mprotect = submodule(batched, "mprotect")


def change_present_ptes(machine, vma, old, cp_flags):
    entries = pte_modify(old, vm_get_page_prot(vma.writable))
    if cp_flags & mprotect.MM_CP_UFFD_WP:
        pfns = pte_pfn(old).astype(np.int64)
        first = np.ones(len(old), bool)
        first[1:] = pfns[1:] != pfns[:-1] + 1
        entries = np.where(first, pte_mkuffd_wp(entries), old)  # planted: a run's first entry only
    elif cp_flags & mprotect.MM_CP_UFFD_WP_RESOLVE:
        entries = pte_clear_uffd_wp(entries)
    if cp_flags & mprotect.MM_CP_TRY_CHANGE_WRITABLE and vma.writable:
        exclusive = machine.frames.page_anon_exclusive[pte_pfn(old).astype(np.int64)]
        if vma.uffd_wp:
            exclusive = exclusive & ~mprotect.pte_uffd_wp(entries)
        entries = np.where(exclusive, mprotect.pte_mkwrite(entries), entries)
    return entries


plant(batched, "mprotect", "change_present_ptes", change_present_ptes)
Kernel = batched.Kernel
