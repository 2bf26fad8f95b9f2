"""reclaim fails a large folio with ENOMEM when swap has no aligned run of slots for it,
instead of splitting it and swapping its pages out one by one (shrink_folio_list's
THP_SWPOUT_FALLBACK)."""

from . import load_batched_copy, plant, submodule

batched = load_batched_copy(__name__ + "_batched")
vmscan = submodule(batched, "vmscan")
shrink_folio_list_with_fallback = vmscan.shrink_folio_list


def shrink_folio_list(machine, folio):
    frames = machine.frames
    order = frames.folio_order.item(folio)
    refused = vmscan.folio_maybe_dma_pinned(machine, folio) \
        or frames.folio_refcount.item(folio) > vmscan.folio_mapcount(machine, folio)
    if order and not refused and not vmscan.folio_partially_mapped(machine, folio) \
            and machine.swap.find_free_slots(order) is None:
        return vmscan.ENOMEM  # planted: no fallback to order-0 slots
    return shrink_folio_list_with_fallback(machine, folio)


plant(batched, "vmscan", "shrink_folio_list", shrink_folio_list)
Kernel = batched.Kernel
