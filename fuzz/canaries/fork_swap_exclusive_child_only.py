"""fork of swap entries clears PTE_SWP_EXCLUSIVE in the child's copy only: the parent's
entry still claims the slot exclusively while the child references it too."""

from machine.pgtable import pte_swp_clear_exclusive

from . import load_batched_copy, plant, submodule

batched = load_batched_copy(__name__ + "_batched")
memory = submodule(batched, "memory")


def copy_nonpresent_ptes(machine, dst_mm, dst_vma, src_mm, batches):
    memory.swap_duplicate_nr(machine, batches.slots())
    dst_mm.rss_swap += int(batches.nr_pages.sum())  # planted: the parent's entries keep the marker
    machine.set_ptes_runs(dst_mm, batches.runs, pte_swp_clear_exclusive(batches.pte))


plant(batched, "memory", "copy_nonpresent_ptes", copy_nonpresent_ptes)
Kernel = batched.Kernel
