"""MADV_FREE clears dirty and young on the first entry of each contpte block only (a
clear_young_dirty_ptes that forgets to expand to the whole block), so the block's other
entries stay dirty and reclaim keeps a folio the process gave up."""

import numpy as np

from machine import PteRuns
from machine.pgtable import CONT_PTES, pte_cont

from . import load_batched_copy, plant, submodule

batched = load_batched_copy(__name__ + "_batched")
madvise = submodule(batched, "madvise")


def lazyfree_folio_batches(machine, mm, batches):
    if len(batches) == 0:
        return
    frames = machine.frames
    folios = batches.folio
    large = frames.folio_order[folios] > 0
    mapcount = np.where(large, frames.folio_large_mapcount[folios], frames.page_mapcount[folios])
    done = ~frames.folio_dirty[folios] | (mapcount == batches.nr_pages)
    chosen = batches.select(done)
    if len(chosen) == 0:
        return
    frames.folio_dirty[chosen.folio] = False
    entries = chosen.runs.entry_indices()
    table = mm.pte_table(chosen.runs.addr)
    folded = pte_cont(table.entries[entries]).astype(bool)
    cleared = entries[~folded | (entries % CONT_PTES == 0)]   # planted: a block's first entry only
    machine.clear_young_dirty_ptes_runs(mm, PteRuns(chosen.runs.addr, cleared.astype(np.int64),
                                                    np.ones(len(cleared), np.int64)))
    madvise.folios_mark_lazyfree(machine, chosen.folio)


plant(batched, "madvise", "lazyfree_folio_batches", lazyfree_folio_batches)
Kernel = batched.Kernel
