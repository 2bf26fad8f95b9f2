"""try_to_unmap's share asks whether the batch's first page, not its folio, may be pinned:
a tail page has no pincount of its own, so a pinned large folio is unmapped."""

import numpy as np

from . import load_batched_copy, plant, submodule

batched = load_batched_copy(__name__ + "_batched")
rmap = submodule(batched, "rmap")


def folios_try_share_anon_rmap_ptes(machine, folio, page, nr_pages):
    frames = machine.frames
    pages = rmap.batch_pages(page, nr_pages)
    busy = rmap.folio_maybe_dma_pinned(machine, page)  # planted: the page, not the folio
    frames.page_anon_exclusive[pages[np.repeat(~busy, nr_pages)]] = False
    return busy


plant(batched, "rmap", "folios_try_share_anon_rmap_ptes", folios_try_share_anon_rmap_ptes)
Kernel = batched.Kernel
