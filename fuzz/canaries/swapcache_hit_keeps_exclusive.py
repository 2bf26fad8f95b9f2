"""do_swap_page takes "the last swap entry of its slot" for exclusive (the old
SWP_SYNCHRONOUS_IO bypass's swap count of 1) on a swap-cache hit too: the folio the other
process read into the cache, and still maps, is mapped exclusive and writable a second time."""

import numpy as np

from machine import check
from machine.errors import ENOMEM, OK
from machine.pgtable import (
    PAGE_SHIFT,
    is_swap_slot_pte,
    pte_advance_pfn,
    pte_mkdirty,
    pte_mkuffd_wp,
    pte_mkwrite,
    pte_swp_exclusive,
    pte_swp_offset,
    pte_swp_uffd_wp,
)

from . import load_batched_copy, plant, submodule

batched = load_batched_copy(__name__ + "_batched")
memory = submodule(batched, "memory")


def do_swap_page(machine, mm, vma, addr, write_fault, order=0):
    pte = machine.ptep_get(mm, addr)
    check(is_swap_slot_pte(pte), "do_swap_page on a non-swap PTE")
    frames, swap = machine.frames, machine.swap
    slot = int(pte_swp_offset(pte))
    folio = swap.swap_cache.item(slot)
    fresh = folio < 0
    if fresh:
        folio = memory.alloc_swap_folio(machine, mm, vma, addr, pte, order)
        if folio is None:
            return ENOMEM
        nr_pages = frames.folio_nr_pages(folio)
        first = slot & ~(nr_pages - 1)
        frames.page_data[folio:folio + nr_pages] = swap.swap_data[first:first + nr_pages]
        memory.swap_cache_add_folio(machine, folio, first)
    else:
        memory.folio_ref_add(machine, folio, 1)
    nr_pages = frames.folio_nr_pages(folio)
    page_idx = slot - frames.folio_swap.item(folio)
    start = addr - (page_idx << PAGE_SHIFT)
    exclusive = bool(pte_swp_exclusive(pte)) or swap.swap_count.item(slot) == 1  # planted: count 1
    entry = memory.mk_pte(folio, vma)
    if pte_swp_uffd_wp(pte):
        entry = pte_mkuffd_wp(entry)
    writable = exclusive and vma.writable and not memory.userfaultfd_pte_wp(vma, entry)
    if writable:
        entry = pte_mkwrite(entry)
        if write_fault:
            entry = pte_mkdirty(entry)
    if nr_pages > 1:
        memory.folio_ref_add(machine, folio, nr_pages - 1)
    if fresh:
        memory.folio_add_new_anon_rmap(machine, folio, mm, vma, start, exclusive=exclusive)
    else:
        one = np.array([folio], np.int64)
        memory.folios_add_anon_rmap_ptes(machine, one, one, np.ones(1, np.int64), mm, np.array([exclusive]))
    memory.folio_put_swap(machine, folio)
    mm.rss_swap -= nr_pages
    mm.rss_anon += nr_pages
    machine.set_ptes(mm, start, entry, nr_pages)
    memory.folio_free_swap(machine, folio)
    if write_fault and not writable:
        return memory.do_wp_page(machine, mm, vma, addr, pte_advance_pfn(entry, page_idx), unshare=False)
    return OK


plant(batched, "memory", "do_swap_page", do_swap_page)
Kernel = batched.Kernel
