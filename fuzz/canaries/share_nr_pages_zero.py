"""An off-by-one in sub-batch lengths: the last sub-batch of a range loses its last page,
so a one-page sub-batch reaches the batched clear with nr_pages == 0."""

import numpy as np

from machine import PteRuns

from . import load_batched_copy, plant, submodule

batched = load_batched_copy(__name__ + "_batched")
internal = submodule(batched, "internal")


def split_batches_by(batches, per_page):
    nr_pages = batches.nr_pages
    if len(nr_pages) == 0:
        return batches, np.zeros(0, bool)
    offsets = internal.pte_offsets_in_batches(nr_pages)
    new_start = offsets == 0
    new_start[1:] |= per_page[1:] != per_page[:-1]
    starts = np.flatnonzero(new_start)
    sub_nr_pages = np.diff(np.append(starts, len(per_page) - 1)).astype(np.int64)  # planted: - 1
    owner = np.repeat(np.arange(len(nr_pages)), nr_pages)[starts]
    sub_offsets = offsets[starts].astype(np.uint64)
    runs = PteRuns(batches.runs.addr, batches.runs.index[owner] + offsets[starts], sub_nr_pages)
    sub = internal.PteBatches(runs, batches.folio[owner], batches.page[owner] + offsets[starts],
                              batches.pte[owner] + (sub_offsets << np.uint64(12)))
    return sub, per_page[starts]


plant(batched, "internal", "split_batches_by", split_batches_by)
Kernel = batched.Kernel
