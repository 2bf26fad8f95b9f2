"""zap drops one folio reference per batch instead of nr_pages (the mmu_gather batching bug
class): zapped large folios leak."""

import numpy as np

from . import load_batched_copy, plant, submodule

batched = load_batched_copy(__name__ + "_batched")
memory = submodule(batched, "memory")


def zap_present_ptes(machine, mm, batches):
    machine.clear_full_ptes_runs(mm, batches.runs)
    mm.rss_anon -= int(batches.nr_pages.sum())
    memory.folios_remove_rmap_ptes(machine, batches.folio, batches.page, batches.nr_pages, mm)
    memory.folios_put_refs(machine, batches.folio, np.ones_like(batches.nr_pages))  # planted: 1 per batch


plant(batched, "memory", "zap_present_ptes", zap_present_ptes)
Kernel = batched.Kernel
