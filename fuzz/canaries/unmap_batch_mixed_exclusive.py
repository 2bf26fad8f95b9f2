"""try_to_unmap takes a batch's PageAnonExclusive from its first page instead of splitting
it into sub-batches of uniform exclusivity (the 2026 unmap-batching series' rule)."""

from . import load_batched_copy, plant, submodule

batched = load_batched_copy(__name__ + "_batched")
internal = submodule(batched, "internal")


def split_batches_by(batches, per_page):
    return batches, per_page[internal.batch_starts(batches.nr_pages)]  # planted: no split


plant(batched, "internal", "split_batches_by", split_batches_by)
Kernel = batched.Kernel
