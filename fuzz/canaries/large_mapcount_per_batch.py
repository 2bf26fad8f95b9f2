"""folios_remove_rmap_ptes lowers _large_mapcount (and the MM_ID slot) by 1 per batch
instead of by nr_pages."""

import numpy as np

from . import load_batched_copy, plant, submodule

batched = load_batched_copy(__name__ + "_batched")
rmap = submodule(batched, "rmap")


def folios_remove_rmap_ptes(machine, folio, page, nr_pages, mm):
    frames = machine.frames
    pages = rmap.batch_pages(page, nr_pages)
    np.subtract.at(frames.page_mapcount, pages, 1)
    folios, diffs = rmap.large_folio_diffs(machine, folio, np.ones_like(nr_pages))  # planted: 1 per batch
    if len(folios):
        rmap.folios_sub_large_mapcount(machine, folios, diffs, mm)


plant(batched, "rmap", "folios_remove_rmap_ptes", folios_remove_rmap_ptes)
Kernel = batched.Kernel
