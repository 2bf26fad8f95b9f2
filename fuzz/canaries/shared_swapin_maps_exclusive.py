"""do_swap_page takes a folio it just read into the swap cache for one "not exposed to the
swapcache" (the kernel's `folio != swapcache` case, certainly exclusive): a large folio
swapped in whole is mapped exclusive (RMAP_EXCLUSIVE) and writable even while another
process's entries share its slots, so that process's later fault maps an exclusive page
a second time (docs/model.md, resolution 100)."""

from . import load_batched_copy, plant, submodule

batched = load_batched_copy(__name__ + "_batched")
memory = submodule(batched, "memory")
original = memory.swapin_maps_exclusive


def swapin_maps_exclusive(machine, pte, first_slot, nr_pages, fresh):
    exclusive = original(machine, pte, first_slot, nr_pages, fresh)
    return exclusive or (fresh and nr_pages > 1)  # planted: a fresh folio taken as certainly exclusive


plant(batched, "memory", "swapin_maps_exclusive", swapin_maps_exclusive)
Kernel = batched.Kernel
