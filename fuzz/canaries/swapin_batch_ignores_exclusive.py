"""alloc_swap_folio's run check compares the swap entries' slots but not their bits
(swap_pte_batch without PTE_SWP_EXCLUSIVE): a run of exclusive and non-exclusive entries
is swapped in whole, every page taking the faulting entry's exclusivity."""

import numpy as np

from machine.pgtable import HPAGE_PMD_ORDER, PAGE_SHIFT, PAGE_SIZE, SWP_OFFSET_MASK, pte_swp_offset
from machine.swap import NO_FOLIO

from . import load_batched_copy, plant, submodule

batched = load_batched_copy(__name__ + "_batched")
memory = submodule(batched, "memory")


def swap_folio_orders(machine, mm, vma, addr, pte, order):
    if vma.uffd_wp:
        return []
    slot = int(pte_swp_offset(pte))
    index = addr >> PAGE_SHIFT
    orders = [candidate for candidate in memory.fault_orders(order)
              if 0 < candidate < HPAGE_PMD_ORDER and index % (1 << candidate) == slot % (1 << candidate)
              and vma.start <= (addr & ~((PAGE_SIZE << candidate) - 1))
              and (addr & ~((PAGE_SIZE << candidate) - 1)) + (PAGE_SIZE << candidate) <= vma.end]
    if not orders:
        return []
    top = 1 << orders[0]
    start = addr & ~((top << PAGE_SHIFT) - 1)
    offset = (addr - start) >> PAGE_SHIFT
    swap = machine.swap
    slots = slot - offset + np.arange(top, dtype=np.int64)
    if slots[-1] >= swap.nr_slots:
        return []
    ptes = machine.ptes_get(mm, start, top)
    same_slots = (ptes & np.uint64(SWP_OFFSET_MASK)) >> np.uint64(12) == slots.astype(np.uint64)  # planted: no bits
    usable = (memory.is_swap_slot_pte(ptes) & same_slots & (swap.swap_cache[slots] == NO_FOLIO)
              & (swap.swap_count[slots] == 1))
    zeromap = swap.swap_zeromap[slots]
    for position, candidate in enumerate(orders):
        nr_pages = 1 << candidate
        low = offset & ~(nr_pages - 1)
        run = slice(low, low + nr_pages)
        if usable[run].all() and (zeromap[run].all() or not zeromap[run].any()):
            return orders[position:]
    return []


plant(batched, "memory", "swap_folio_orders", swap_folio_orders)
Kernel = batched.Kernel
