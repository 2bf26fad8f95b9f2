"""zap_present_folio_ptes and try_to_unmap_one judge a page-cache batch dirty from its first
entry's dirty bit alone (the pteval before get_and_clear_ptes gathered the batch), so a
shmem page written through a later entry of the batch never marks the folio dirty and is
dropped, not swapped, by reclaim: the write is lost."""

from machine.pgtable import pte_dirty

from . import load_batched_copy, plant, submodule

batched = load_batched_copy(__name__ + "_batched")
filemap = submodule(batched, "filemap")


def zap_present_file_ptes(machine, mm, batches):
    if len(batches) == 0:
        return filemap.np.zeros(0, filemap.np.uint64)
    first = batches.pte.copy()   # planted: the batch's first entry as it was, not the gathered value
    ptes = machine.get_and_clear_full_ptes_runs(mm, batches.runs)
    machine.frames.folio_dirty[batches.folio[pte_dirty(first)]] = True
    mm.rss_file -= int(batches.nr_pages.sum())
    filemap.folios_remove_rmap_ptes(machine, batches.folio, batches.page, batches.nr_pages, mm)
    filemap.folios_put_refs(machine, batches.folio, batches.nr_pages)
    return ptes


plant(batched, "filemap", "zap_present_file_ptes", zap_present_file_ptes)
Kernel = batched.Kernel
