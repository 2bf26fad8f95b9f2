"""The batched unmap of page-cache entries in a uffd-wp registered file VMA (zap's
zap_install_uffd_wp_if_needed, try_to_unmap_one's install_uffd_wp_ptes_if_needed) installs
the PTE marker on the first entry of each protected batch only: the other pages of a large
shmem folio lose their protection when MADV_DONTNEED or reclaim unmaps them (the bug the
series' author found when batching file folios in uffd-wp VMAs)."""

import numpy as np

from machine import PteRuns, any_set
from machine.pgtable import PTE_MARKER_UFFD_WP, make_pte_marker, pte_present, pte_swp_uffd_wp, pte_uffd_wp

from . import load_batched_copy, plant, submodule

batched = load_batched_copy(__name__ + "_batched")
filemap = submodule(batched, "filemap")


def install_uffd_wp_ptes_if_needed(machine, mm, vma, runs, ptevals):
    if vma.file is None or not vma.uffd_wp or len(runs.index) == 0:
        return
    ptevals = np.asarray(ptevals, np.uint64)
    protected = np.where(pte_present(ptevals), pte_uffd_wp(ptevals), pte_swp_uffd_wp(ptevals)).astype(bool)
    if not any_set(protected):
        return
    first = runs.index[protected]   # planted: the batch's first entry, not all nr_pages of it
    machine.set_ptes_runs(mm, PteRuns(runs.addr, first, np.ones(len(first), np.int64)),
                          np.full(len(first), make_pte_marker(PTE_MARKER_UFFD_WP), np.uint64))


plant(batched, "filemap", "install_uffd_wp_ptes_if_needed", install_uffd_wp_ptes_if_needed)
Kernel = batched.Kernel
