"""try_to_unmap_one judges a lazyfree batch clean from its first entry's dirty bit alone
(the pteval before get_and_clear_ptes gathered the batch), so a batch whose later entries
were written after MADV_FREE is discarded with their data."""

import numpy as np

from machine.pgtable import PAGE_SHIFT, PMD_SIZE, pte_dirty, pte_pfn, pte_present

from . import load_batched_copy, plant, submodule

batched = load_batched_copy(__name__ + "_batched")
vmscan = submodule(batched, "vmscan")


def try_to_unmap_one_lazyfree(machine, folio, mm, vma, start, end):
    haddr = start & ~(PMD_SIZE - 1)
    pmd = machine.pmdp_get(mm, haddr)
    frames = machine.frames
    if vmscan.pmd_trans_huge(pmd):
        if int(pte_pfn(pmd)) != folio:
            return vmscan.OK
        return vmscan.unmap_huge_pmd_locked(machine, mm, haddr, folio)
    nr_pages = frames.folio_nr_pages(folio)
    ptes = machine.ptes_get(mm, start, (end - start) >> PAGE_SHIFT)
    pfns = pte_pfn(ptes).astype(np.int64)
    of_folio = pte_present(ptes) & (pfns >= folio) & (pfns < folio + nr_pages)
    if not of_folio.any():
        return vmscan.OK
    batches = vmscan.folio_pte_batch(machine, mm, start, ptes, vmscan.FPB_UNMAP, candidate=of_folio)
    if vma.uffd_wp:
        batches, _ = vmscan.split_batches_by(batches, np.arange(int(of_folio.sum())))
    batch_dirty = pte_dirty(batches.pte).astype(bool)   # planted: the first entry of each batch only
    if frames.folio_dirty.item(folio):
        batch_dirty[:] = True
    extra_refs = frames.folio_refcount.item(folio) != vmscan.folio_mapcount(machine, folio)
    stop = 0 if extra_refs or batch_dirty.any() else len(batches)
    if not extra_refs and batch_dirty.any():
        stop = int(np.argmax(batch_dirty))
    vmscan.zap_anon_ptes(machine, mm, batches.select(np.arange(len(batches)) < stop))  # discard
    if stop == len(batches):
        return vmscan.OK
    kept = batches.select(np.arange(len(batches)) == stop)
    if pte_dirty(vmscan.restore_lazyfree_ptes(machine, mm, kept)):
        frames.folio_dirty[folio] = True
    if frames.folio_dirty.item(folio):
        frames.folio_swapbacked[folio] = True
        return vmscan.EAGAIN
    return vmscan.EBUSY


plant(batched, "vmscan", "try_to_unmap_one_lazyfree", try_to_unmap_one_lazyfree)
Kernel = batched.Kernel
