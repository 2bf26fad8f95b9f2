"""A folio split's zero-page remap reads only the first page of each process VMA's run
(pages_identical of one page taken for all): when that page is all zero, every order-0
piece there, written ones too, is mapped to the zero page and their data lost."""

import numpy as np

from machine import all_set, any_set, check
from machine.pgtable import PAGE_SHIFT, PMD_SIZE

from . import load_batched_copy, plant, submodule

batched = load_batched_copy(__name__ + "_batched")
huge_memory = submodule(batched, "huge_memory")
internal = submodule(batched, "internal")
folio_module = submodule(batched, "folio")
rmap = submodule(batched, "rmap")


def folios_remove_migration_ptes(machine, mappings):
    if len(mappings.pages) == 0:
        return
    frames = machine.frames
    mm = mappings.mm
    folios = frames.page_folio[mappings.pages]
    first_zero = frames.page_data[mappings.pages[0]] == 0   # planted: the first page speaks for all
    zero = (frames.folio_order[folios] == 0) & first_zero
    entries = huge_memory.split_entries(mappings.old, mappings.pages, mappings.vma)
    entries = np.where(zero, np.uint64(folio_module.zero_page_pte(machine, mappings.vma)), entries)
    haddr = int(mappings.addrs[0]) & ~(PMD_SIZE - 1)
    internal.set_pte_values(machine, mm, haddr, (mappings.addrs - haddr) >> PAGE_SHIFT, entries)
    if any_set(zero):
        mm.rss_anon -= int(np.count_nonzero(zero))
        folios, pages, exclusive = folios[~zero], mappings.pages[~zero], mappings.exclusive[~zero]
    else:
        pages, exclusive = mappings.pages, mappings.exclusive
    internal.add_at(frames.folio_refcount, folios, 1)
    internal.add_at(frames.page_mapcount, pages, 1)
    folio_module.SetPagesAnonExclusive(machine, pages[exclusive])
    check(all_set(frames.page_mapcount[pages[exclusive]] == 1), "exclusive page mapped more than once")
    large = frames.folio_order[folios] > 0
    large_folios, counts = internal.totals_by_value(folios[large], np.ones(int(large.sum()), np.int64))
    if len(large_folios):
        rmap.folios_add_large_mapcount(machine, large_folios, counts, mm)


plant(batched, "huge_memory", "folios_remove_migration_ptes", folios_remove_migration_ptes)
Kernel = batched.Kernel
