"""folio_dup_file_rmap_ptes adds 1 to _large_mapcount (and the child's MM_ID slot) per batch
instead of nr_pages: fork of a private file VMA that maps several pages of a large
page-cache folio undercounts the child's mappings."""

import numpy as np

from . import load_batched_copy, plant, submodule

batched = load_batched_copy(__name__ + "_batched")
filemap = submodule(batched, "filemap")


def folios_dup_file_rmap_ptes(machine, folio, page, nr_pages, dst_mm):
    frames = machine.frames
    pages = filemap.batch_pages(page, nr_pages)
    np.add.at(frames.page_mapcount, pages, 1)
    folios, diffs = filemap.large_folio_diffs(machine, folio, np.ones_like(nr_pages))  # planted: 1 per batch
    if len(folios):
        filemap.folios_add_large_mapcount(machine, folios, diffs, dst_mm)


plant(batched, "filemap", "folios_dup_file_rmap_ptes", folios_dup_file_rmap_ptes)
Kernel = batched.Kernel
