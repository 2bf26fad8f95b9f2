"""try_to_unmap writes PTE_SWP_UFFD_WP on the first swap PTE of a uffd-wp batch only; the
swap PTEs after it lose the write protection."""

import numpy as np

from machine import PteRuns
from machine.pgtable import pte_swp_mkexclusive, pte_swp_mkuffd_wp, pte_uffd_wp, swp_entry_to_pte

from . import load_batched_copy, plant, submodule

batched = load_batched_copy(__name__ + "_batched")
vmscan = submodule(batched, "vmscan")


def unmap_ptes_to_swap(machine, mm, batches, slot, exclusive):
    if len(batches) == 0:
        return
    machine.get_and_clear_full_ptes_runs(mm, batches.runs)
    pages = batches.pages()
    slots = np.repeat(slot, batches.nr_pages) + (pages - np.repeat(batches.page, batches.nr_pages))
    vmscan.folio_dup_swap(machine, slots)
    machine.swap.swap_data[slots] = machine.frames.page_data[pages]
    mm.rss_anon -= int(batches.nr_pages.sum())
    mm.rss_swap += int(batches.nr_pages.sum())
    swp_ptes = swp_entry_to_pte(slot.astype(np.uint64))
    swp_ptes = np.where(exclusive, pte_swp_mkexclusive(swp_ptes), swp_ptes)
    machine.set_ptes_runs(mm, batches.runs, swp_ptes)
    uffd_wp = pte_uffd_wp(batches.pte)
    firsts = PteRuns(batches.runs.addr, batches.runs.index[uffd_wp], np.ones(int(uffd_wp.sum()), np.int64))
    machine.set_ptes_runs(mm, firsts, pte_swp_mkuffd_wp(swp_ptes[uffd_wp]))  # planted: first only
    vmscan.folios_remove_rmap_ptes(machine, batches.folio, batches.page, batches.nr_pages, mm)
    vmscan.folios_put_refs(machine, batches.folio, batches.nr_pages)


plant(batched, "vmscan", "unmap_ptes_to_swap", unmap_ptes_to_swap)
Kernel = batched.Kernel
