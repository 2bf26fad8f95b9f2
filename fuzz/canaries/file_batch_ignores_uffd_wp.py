"""try_to_unmap_one's batch over a page-cache folio in a uffd-wp registered VMA is not
stopped where the uffd-wp bit changes (folio_unmap_pte_batch comparing the entries without
it), so the whole batch gets a marker, or none, by its first entry's bit: protected pages
after an unprotected first one lose their protection on reclaim, and unprotected ones after
a protected first one come back write-protected."""

from machine.pgtable import pte_clear_uffd_wp

from . import load_batched_copy, plant, submodule

batched = load_batched_copy(__name__ + "_batched")
filemap = submodule(batched, "filemap")


def try_to_unmap_one_file(machine, folio, mm, vma, start, end):
    ptes, of_folio = filemap.folio_file_ptes(machine, mm, folio, start, end)
    if not of_folio.any():
        return
    batches = filemap.folio_pte_batch(machine, mm, start, pte_clear_uffd_wp(ptes), filemap.FPB_UNMAP,
                                      candidate=of_folio)   # planted: the uffd-wp bit not compared
    ptevals = filemap.zap_present_file_ptes(machine, mm, batches)
    filemap.install_uffd_wp_ptes_if_needed(machine, mm, vma, batches.runs, ptevals)


plant(batched, "filemap", "try_to_unmap_one_file", try_to_unmap_one_file)
Kernel = batched.Kernel
