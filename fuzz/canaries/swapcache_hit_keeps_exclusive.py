"""do_swap_page takes "the last swap entry of its slot" for exclusive (the old
SWP_SYNCHRONOUS_IO bypass's swap count of 1) on a swap-cache hit too: the folio the other
process read into the cache, and still maps, is mapped exclusive and writable a second time."""

from machine.pgtable import pte_swp_offset

from . import load_batched_copy, plant, submodule

batched = load_batched_copy(__name__ + "_batched")
memory = submodule(batched, "memory")
original = memory.swapin_maps_exclusive


def swapin_maps_exclusive(machine, pte, first_slot, nr_pages, fresh):
    exclusive = original(machine, pte, first_slot, nr_pages, fresh)
    return exclusive or machine.swap.swap_count.item(int(pte_swp_offset(pte))) == 1  # planted: count 1


plant(batched, "memory", "swapin_maps_exclusive", swapin_maps_exclusive)
Kernel = batched.Kernel
