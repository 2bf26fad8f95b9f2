"""fork's batched dup clears PageAnonExclusive on the first page of each batch only."""

import numpy as np

from . import load_batched_copy, plant, submodule

batched = load_batched_copy(__name__ + "_batched")
rmap = submodule(batched, "rmap")


def folios_try_dup_anon_rmap_ptes(machine, folio, page, nr_pages, dst_mm, src_mm):
    frames = machine.frames
    pages = rmap.batch_pages(page, nr_pages)
    any_exclusive = rmap.batches_any(frames.page_anon_exclusive[pages], nr_pages)
    busy = any_exclusive & rmap.folio_needs_cow_for_dma(machine, src_mm, folio)
    shared_pages = pages[np.repeat(~busy, nr_pages)]
    frames.page_anon_exclusive[page[~busy]] = False  # planted: the first page of each batch
    np.add.at(frames.page_mapcount, shared_pages, 1)
    folios, diffs = rmap.large_folio_diffs(machine, folio[~busy], nr_pages[~busy])
    if len(folios):
        rmap.folios_add_large_mapcount(machine, folios, diffs, dst_mm)
    return busy


plant(batched, "rmap", "folios_try_dup_anon_rmap_ptes", folios_try_dup_anon_rmap_ptes)
Kernel = batched.Kernel
