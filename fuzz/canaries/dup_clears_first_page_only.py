"""fork's batched dup clears PageAnonExclusive on the first page of each batch only."""

import numpy as np

from . import load_batched_copy, plant, submodule

batched = load_batched_copy(__name__ + "_batched")
rmap = submodule(batched, "rmap")


def folio_try_dup_anon_rmap_ptes(machine, folio, page, nr_pages, dst_mm, src_mm):
    frames = machine.frames
    pages = rmap.batch_pages(page, nr_pages)
    any_exclusive = rmap.batches_any(frames.page_anon_exclusive[pages], nr_pages)
    failed = any_exclusive & rmap.folio_needs_cow_for_dma(machine, src_mm, folio)
    shared_pages = pages[np.repeat(~failed, nr_pages)]
    frames.page_anon_exclusive[page[~failed]] = False  # planted: the first page of each batch
    np.add.at(frames.page_mapcount, shared_pages, 1)
    folios, diffs = rmap.large_folio_diffs(machine, folio[~failed], nr_pages[~failed])
    if len(folios):
        rmap.folios_add_return_large_mapcount(machine, folios, diffs, dst_mm)
    return failed


plant(batched, "rmap", "folio_try_dup_anon_rmap_ptes", folio_try_dup_anon_rmap_ptes)
Kernel = batched.Kernel
