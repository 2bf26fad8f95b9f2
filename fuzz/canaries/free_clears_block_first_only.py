"""MADV_FREE clears dirty and young on the first entry of each folded contpte block only (a
clear_young_dirty_ptes that treats a folded block as one entry, forgetting that the MMU sets
AF and dirty on whichever of its 16 entries it walked), so the block's other entries stay
dirty: ptep_get still gathers them, and reclaim keeps a folio the process gave up."""

import numpy as np

from machine import PteRuns
from machine.pgtable import CONT_PTES, PAGE_SHIFT, pte_cont, pte_mkclean, pte_mkold

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
    cached = frames.folio_swap[folios] != 0
    done = ~(frames.folio_dirty[folios] | cached) | (mapcount == batches.nr_pages)
    if (cached & done).any():
        done[cached & done] = madvise.folios_free_swap(machine, folios[cached & done])
    chosen = batches.select(done)
    if len(chosen) == 0:
        return
    frames.folio_dirty[chosen.folio] = False
    entries = chosen.runs.entry_indices()
    table = mm.pte_table(chosen.runs.addr)
    folded = pte_cont(table.entries[entries]).astype(bool)
    plain = entries[~folded]
    if len(plain):
        machine.clear_young_dirty_ptes_runs(mm, PteRuns(chosen.runs.addr, plain.astype(np.int64),
                                                        np.ones(len(plain), np.int64)))
    for entry in entries[folded & (entries % CONT_PTES == 0)].tolist():   # planted: a block's first entry only
        addr = chosen.runs.addr + (entry << PAGE_SHIFT)
        machine.set_pte_raw(mm, addr, pte_mkold(pte_mkclean(machine.ptep_get_raw(mm, addr))))
    madvise.folios_mark_lazyfree(machine, chosen.folio)


plant(batched, "madvise", "lazyfree_folio_batches", lazyfree_folio_batches)
Kernel = batched.Kernel
