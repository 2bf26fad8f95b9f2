"""MADV_PAGEOUT's walk judges a large folio's batch with the first entry's uffd-wp bit for
every entry (madvise_folio_pte_batch blind to the bit), so a folio protected in part is
taken as one batch and swapped out whole instead of split: its all-zero pages keep their
frames and slots, where the kernel maps them to the zero page."""

import numpy as np

from machine.pgtable import PTE_UFFD_WP

from . import load_batched_copy, plant, submodule

batched = load_batched_copy(__name__ + "_batched")
madvise = submodule(batched, "madvise")


def madvise_folio_pte_batch(machine, mm, start, ptes, of_folio):
    first = ptes[np.flatnonzero(of_folio)[0]]
    uffd_wp = np.uint64(PTE_UFFD_WP)
    judged = np.where(of_folio, (ptes & ~uffd_wp) | (first & uffd_wp), ptes)  # planted: the first's bit
    return madvise.folio_pte_batch(machine, mm, start, judged, madvise.FPB_MADVISE, candidate=of_folio)


plant(batched, "madvise", "madvise_folio_pte_batch", madvise_folio_pte_batch)
Kernel = batched.Kernel
