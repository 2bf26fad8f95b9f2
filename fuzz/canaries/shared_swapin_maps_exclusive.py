"""do_swap_page takes a folio it just read into the swap cache for one "not exposed to the
swapcache" (the kernel's `folio != swapcache` case, certainly exclusive): a large folio
swapped in whole is mapped exclusive (RMAP_EXCLUSIVE) and writable even while another
process's entries share its slots, so that process's later fault maps an exclusive page
a second time (docs/model.md, resolution 100)."""

import numpy as np

from machine import all_set, check
from machine.errors import ENOMEM, OK
from machine.pgtable import (
    PAGE_SHIFT,
    is_swap_slot_pte,
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
    check(not write_fault or vma.writable, "write fault in a read-only VMA")
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
        memory.folio_ref_add(machine, folio, 1)  # the lookup's reference, the mapping's from here on
    page_idx = slot - frames.folio_swap.item(folio)
    check(not frames.page_anon_exclusive[folio + page_idx], "swap-cache page %s is exclusive", folio + page_idx)
    whole = fresh or (frames.folio_order.item(folio) > 0
                      and memory.swap_folio_mapped_whole(machine, mm, vma, addr, pte, folio))
    nr_pages = frames.folio_nr_pages(folio) if whole else 1
    start, first_page = (addr - (page_idx << PAGE_SHIFT), folio) if whole else (addr, folio + page_idx)
    first_slot = slot - ((addr - start) >> PAGE_SHIFT)
    exclusive = bool(pte_swp_exclusive(pte))
    check(not exclusive or all_set(swap.swap_count[first_slot:first_slot + nr_pages] == 1),
          "PTE_SWP_EXCLUSIVE on a shared slot %s", slot)
    exclusive = exclusive or (fresh and nr_pages > 1)  # planted: a fresh folio taken as certainly exclusive
    entry = memory.mk_pte(first_page, vma)
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
        memory.folios_add_anon_rmap_ptes(machine, np.array([folio], np.int64), np.array([first_page], np.int64),
                                         np.array([nr_pages], np.int64), mm, np.array([exclusive]))
    memory.folio_put_swap(machine, folio, None if whole else page_idx)
    mm.rss_swap -= nr_pages
    mm.rss_anon += nr_pages
    machine.set_ptes(mm, start, entry, nr_pages)
    memory.folio_free_swap(machine, folio)  # should_try_to_free_swap: always for SWP_SYNCHRONOUS_IO
    if write_fault and not writable:
        return memory.do_wp_page(machine, mm, vma, addr, machine.ptep_get(mm, addr), unshare=False)
    return OK


plant(batched, "memory", "do_swap_page", do_swap_page)
Kernel = batched.Kernel
