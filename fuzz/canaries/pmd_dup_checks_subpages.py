"""PMD dup judging exclusivity by all 512 subpage bits: while a THP is PMD-mapped only the
head's PageAnonExclusive means anything, so a pinned THP is shared with the child."""

import numpy as np

from . import load_batched_copy, plant, submodule

batched = load_batched_copy(__name__ + "_batched")
rmap = submodule(batched, "rmap")


def folio_try_dup_anon_rmap_pmd(machine, folio, dst_mm, src_mm):
    frames = machine.frames
    if np.all(frames.page_anon_exclusive[folio:folio + 512]):  # planted: the subpage bits
        if rmap.folio_needs_cow_for_dma(machine, src_mm, folio):
            return rmap.EBUSY
        frames.page_anon_exclusive[folio] = False
    frames.folio_entire_mapcount[folio] += 1
    rmap.folio_add_return_large_mapcount(machine, folio, 1, dst_mm)
    return rmap.OK


plant(batched, "rmap", "folio_try_dup_anon_rmap_pmd", folio_try_dup_anon_rmap_pmd)
Kernel = batched.Kernel
