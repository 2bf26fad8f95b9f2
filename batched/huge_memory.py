"""PMD-mapped THPs and folio split, as mm/huge_memory.c, batched.

A PMD split maps all 512 PTEs with one set_ptes and one folios_add_anon_rmap_ptes;
a folio split unmaps (try_to_migrate_one) and remaps (folios_remove_migration_ptes)
every mapping of one process VMA at once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from machine import MM, VMA, Machine, PteRuns, all_set, any_set, check
from machine.errors import EAGAIN, EBUSY, EINVAL, OK
from machine.pgtable import (
    HPAGE_PMD_NR,
    HPAGE_PMD_ORDER,
    PAGE_SHIFT,
    PMD_SIZE,
    pfn_pte,
    pmd_trans_huge,
    pte_clear_uffd_wp,
    pte_dirty,
    pte_mkdirty,
    pte_mkold,
    pte_mkuffd_wp,
    pte_mkwrite,
    pte_mkyoung,
    pte_modify,
    pte_pfn,
    pte_pmd,
    pte_present,
    pte_uffd_wp,
    pte_write,
    pte_wrprotect,
    pte_young,
    vm_get_page_prot,
)

from .folio import (
    PageAnonExclusive,
    SetPageAnonExclusive,
    SetPagesAnonExclusive,
    folio_get,
    folio_put,
    folio_ref_add,
    huge_zero_pmd,
    is_huge_zero_pmd,
    zero_page_pte,
)
from .internal import add_at, set_pte_each, totals_by_value
from .rmap import (
    anon_vma_prepare,
    folio_add_new_anon_rmap,
    folio_remove_rmap_pmd,
    folio_try_dup_anon_rmap_pmd,
    folios_add_anon_rmap_ptes,
    folios_add_large_mapcount,
    folios_remove_rmap_ptes,
    rmap_walk_vmas,
)
from .swap import free_swap_cache

FALLBACK = "VM_FAULT_FALLBACK"

# change_protection's cp_flags (include/linux/mm.h).
MM_CP_TRY_CHANGE_WRITABLE = 1 << 0
MM_CP_UFFD_WP = 1 << 2
MM_CP_UFFD_WP_RESOLVE = 1 << 3


def mk_huge_pmd(folio: int, vma: VMA) -> int:
    return pte_pmd(pfn_pte(folio, vm_get_page_prot(vma.writable)))


def maybe_pmd_mkwrite(pmd: int, vma: VMA) -> int:
    return pte_mkwrite(pmd) if vma.writable else pmd


def map_anon_folio_pmd(machine: Machine, mm: MM, vma: VMA, haddr: int, folio: int,
                       unshare_uffd_wp: bool = False) -> None:
    """Map a fresh order-9 folio with one PMD block, head exclusive: writable and dirty, or
    read-only with the uffd-wp bit for the unshare of a protected entry (docs/model.md #121)."""
    check(machine.frames.folio_nr_pages(folio) == HPAGE_PMD_NR, "PMD mapping of a non-PMD folio")
    folio_add_new_anon_rmap(machine, folio, mm, vma, haddr, exclusive=True)
    entry = mk_huge_pmd(folio, vma)
    if unshare_uffd_wp:
        entry = pte_mkuffd_wp(entry)
    else:
        entry = maybe_pmd_mkwrite(pte_mkdirty(entry), vma)
    machine.set_pmd_at(mm, haddr, entry)
    mm.rss_anon += HPAGE_PMD_NR


def set_huge_zero_folio(machine: Machine, mm: MM, vma: VMA, haddr: int) -> str:
    """A read fault where the PMD size applies: the VMA's anon_vma (vmf_anon_prepare), then
    the huge zero folio's special PMD; no rmap, reference or RSS (do_huge_pmd_anonymous_page)."""
    check(vma.start <= haddr and haddr + PMD_SIZE <= vma.end and not pmd_trans_huge(machine.pmdp_get(mm, haddr)),
          "huge zero PMD at %#x outside the VMA or over a block", haddr)
    anon_vma_prepare(machine, mm, vma)
    machine.set_pmd_at(mm, haddr, huge_zero_pmd(machine, vma))
    return OK


def do_huge_pmd_wp_page(machine: Machine, mm: MM, vma: VMA, addr: int, unshare: bool) -> str:
    """Write or unshare fault on a read-only PMD block: reuse it whole, else split it
    (FALLBACK: the fault retries at PTE level). The huge zero folio is replaced by a new
    zeroed PMD THP (do_huge_zero_wp_pmd), else split."""
    haddr = addr & ~(PMD_SIZE - 1)
    pmd = machine.pmdp_get(mm, haddr)
    check(pmd_trans_huge(pmd), "do_huge_pmd_wp_page without a PMD block")
    if is_huge_zero_pmd(machine, pmd):
        folio = machine.frames.folio_alloc(HPAGE_PMD_ORDER)
        if folio is None:
            split_huge_zero_page_pmd(machine, mm, vma, haddr)
            return FALLBACK
        machine.pmdp_get_and_clear(mm, haddr)
        map_anon_folio_pmd(machine, mm, vma, haddr, folio, unshare_uffd_wp=unshare and bool(pte_uffd_wp(pmd)))
        return OK
    folio = int(pte_pfn(pmd))
    frames = machine.frames
    if not PageAnonExclusive(machine, folio):
        if frames.folio_refcount.item(folio) != 1:
            split_huge_pmd_locked(machine, mm, vma, haddr)
            return FALLBACK
        SetPageAnonExclusive(machine, folio)
    if not unshare:
        machine.set_pmd_at(mm, haddr, maybe_pmd_mkwrite(pte_mkdirty(pte_mkyoung(pmd)), vma))
    return OK


def zap_huge_pmd(machine: Machine, mm: MM, haddr: int) -> None:
    """Clear a PMD block: a THP's rmap, RSS and reference go; the huge zero folio has none."""
    pmd = machine.pmdp_get_and_clear(mm, haddr)
    if is_huge_zero_pmd(machine, pmd):
        return
    folio = int(pte_pfn(pmd))
    folio_remove_rmap_pmd(machine, folio, mm)
    mm.rss_anon -= HPAGE_PMD_NR
    folio_put(machine, folio)


def split_entries(old, pages, vma: VMA):
    """The PTEs a split maps pages with, from the old PTEs' or PMD's write, young, dirty and
    uffd-wp state (__split_huge_pmd_locked and remove_migration_pte alike, SPEC §2.3)."""
    entries = pfn_pte(np.asarray(pages, np.uint64), vm_get_page_prot(vma.writable))
    entries = np.where(pte_write(old), pte_mkwrite(entries), entries)
    entries = np.where(pte_young(old), entries, pte_mkold(entries))
    entries = np.where(pte_dirty(old), pte_mkdirty(entries), entries)
    return np.where(pte_uffd_wp(old), pte_mkuffd_wp(entries), entries).astype(np.uint64)


def split_huge_pmd_locked(machine: Machine, mm: MM, vma: VMA, haddr: int) -> None:
    """__split_huge_pmd_locked without freeze: 512 PTEs carrying the head's exclusivity.

    Context: a PMD block maps haddr.
    """
    if is_huge_zero_pmd(machine, machine.pmdp_get(mm, haddr)):
        split_huge_zero_page_pmd(machine, mm, vma, haddr)
        return
    pmd = machine.pmdp_get_and_clear(mm, haddr)  # pmdp_invalidate
    folio = int(pte_pfn(pmd))
    frames = machine.frames
    check(frames.folio_nr_pages(folio) == HPAGE_PMD_NR, "PMD block of a non-PMD folio")
    if pte_dirty(pmd):
        frames.folio_dirty[folio] = True  # folio_set_dirty
    anon_exclusive = PageAnonExclusive(machine, folio)
    check(not any_set(frames.page_anon_exclusive[folio + 1:folio + HPAGE_PMD_NR]),
          "PMD-mapped THP %s has exclusive tail pages", folio)
    folio_ref_add(machine, folio, HPAGE_PMD_NR - 1)
    folios_add_anon_rmap_ptes(machine, np.array([folio]), np.array([folio]), np.array([HPAGE_PMD_NR]), mm,
                              np.array([anon_exclusive]))
    entry = int(split_entries(pmd, folio, vma))
    machine.set_ptes(mm, haddr, entry, HPAGE_PMD_NR)
    folio_remove_rmap_pmd(machine, folio, mm)


def split_huge_zero_page_pmd(machine: Machine, mm: MM, vma: VMA, haddr: int) -> None:
    """__split_huge_zero_page_pmd: 512 zero-page PTEs (vm_page_prot) keeping the PMD's
    uffd-wp bit, written at once; nothing is counted."""
    old = machine.pmdp_get_and_clear(mm, haddr)
    entry = zero_page_pte(machine, vma)
    if pte_uffd_wp(old):
        entry = pte_mkuffd_wp(entry)
    set_pte_each(machine, mm, haddr, np.arange(HPAGE_PMD_NR, dtype=np.int64),
                 np.full(HPAGE_PMD_NR, entry, np.uint64))


def copy_huge_pmd(machine: Machine, dst_mm: MM, dst_vma: VMA, src_mm: MM, src_vma: VMA, haddr: int) -> str:
    """fork of a PMD block: share it as a PMD, or split the parent's if it may be pinned
    (FALLBACK: the caller copies the 512 PTEs). The huge zero PMD goes to the child old,
    uffd-wp kept only for a registered child VMA, counted nowhere."""
    pmd = machine.pmdp_get(src_mm, haddr)
    check(pmd_trans_huge(pmd), "copy_huge_pmd without a PMD block at %#x", haddr)
    if is_huge_zero_pmd(machine, pmd):
        check(not pte_write(pmd), "writable huge zero PMD")
        child = pmd if dst_vma.uffd_wp else pte_clear_uffd_wp(pmd)
        machine.set_pmd_at(dst_mm, haddr, pte_mkold(child))
        return OK
    folio = int(pte_pfn(pmd))
    folio_get(machine, folio)
    if folio_try_dup_anon_rmap_pmd(machine, folio, dst_mm, src_mm) == EBUSY:
        folio_put(machine, folio)
        split_huge_pmd_locked(machine, src_mm, src_vma, haddr)
        return FALLBACK
    dst_mm.rss_anon += HPAGE_PMD_NR
    if pte_write(pmd):
        machine.pmdp_set_wrprotect(src_mm, haddr)
        pmd = pte_wrprotect(pmd)
    if not dst_vma.uffd_wp:  # userfaultfd_wp(dst_vma)
        pmd = pte_clear_uffd_wp(pmd)
    machine.set_pmd_at(dst_mm, haddr, pte_mkold(pmd))
    return OK


def change_huge_pmd(machine: Machine, mm: MM, vma: VMA, haddr: int, cp_flags: int) -> None:
    """mprotect or UFFDIO_WRITEPROTECT of a fully covered PMD block: vma's protection, the
    uffd-wp bit per cp_flags, writable if allowed (can_change_pmd_writable)."""
    pmd = machine.pmdp_get(mm, haddr)
    check(pmd_trans_huge(pmd) and vma.start <= haddr and haddr + PMD_SIZE <= vma.end,
          f"change_huge_pmd without a PMD block inside the VMA at {haddr:#x}")
    entry = pte_modify(pmd, vm_get_page_prot(vma.writable))
    if cp_flags & MM_CP_UFFD_WP:
        entry = pte_mkuffd_wp(entry)
    elif cp_flags & MM_CP_UFFD_WP_RESOLVE:
        entry = pte_clear_uffd_wp(entry)
    if (cp_flags & MM_CP_TRY_CHANGE_WRITABLE and vma.writable and not (vma.uffd_wp and pte_uffd_wp(entry))
            and not is_huge_zero_pmd(machine, pmd) and PageAnonExclusive(machine, int(pte_pfn(pmd)))):
        entry = pte_mkwrite(entry)
    machine.set_pmd_at(mm, haddr, entry)


# Folio split (split_huge_page_to_list_to_order, __folio_split).

@dataclass(slots=True)  # built per PTE table: a frozen dataclass's __init__ costs three times more
class FolioMappings:
    """The mappings try_to_migrate_one removed in one process VMA: a PMD block or PTEs."""

    mm: MM
    vma: VMA
    addrs: np.ndarray      # int64 virtual address of each page mapped
    pages: np.ndarray      # int64 pfn of each page mapped
    old: np.ndarray        # uint64 the old PTE (or the PMD block for every page)
    exclusive: np.ndarray  # bool, per page: PageAnonExclusive (the head's for a PMD)


def unmap_folio(machine: Machine, folio: int) -> list[FolioMappings]:
    """Remove every mapping of folio in walk order, one process VMA at a time; the caller
    holds a reference."""
    mappings: list[FolioMappings] = []
    for mm, vma, start, end in rmap_walk_vmas(machine, folio):
        result = try_to_migrate_one(machine, folio, mm, vma, start, end, mappings)
        check(result == OK, "unmap_folio could not unmap folio %s: %s", folio, result)
    return mappings


def try_to_migrate_one(machine: Machine, folio: int, mm: MM, vma: VMA, start: int, end: int,
                       mappings: list[FolioMappings]) -> str:
    """Remove every mapping of folio in [start, end) of one VMA at once, appending them to
    mappings as one FolioMappings (model: the mappings themselves stand for the migration
    entries). Returns OK: with no migration entries there is nothing to fail on."""
    frames = machine.frames
    nr_pages = frames.folio_nr_pages(folio)
    haddr = start & ~(PMD_SIZE - 1)
    check(end <= haddr + PMD_SIZE, "a folio's range crosses a PMD")
    pmd = machine.pmdp_get(mm, haddr)
    if pmd_trans_huge(pmd):
        if int(pte_pfn(pmd)) != folio:
            mappings.append(FolioMappings(mm, vma, np.zeros(0, np.int64), np.zeros(0, np.int64),
                                          np.zeros(0, np.uint64), np.zeros(0, bool)))
            return OK
        pages = np.arange(folio, folio + HPAGE_PMD_NR, dtype=np.int64)
        mappings.append(FolioMappings(mm, vma, haddr + ((pages - folio) << PAGE_SHIFT), pages,
                                      np.full(HPAGE_PMD_NR, pmd, np.uint64),
                                      np.full(HPAGE_PMD_NR, bool(frames.page_anon_exclusive[folio]))))
        machine.pmdp_get_and_clear(mm, haddr)
        if pte_dirty(pmd):
            frames.folio_dirty[folio] = True  # set_pmd_migration_entry: folio_mark_dirty
        folio_remove_rmap_pmd(machine, folio, mm)
        frames.folio_refcount[folio] -= 1
        return OK
    ptes = machine.ptes_get(mm, start, (end - start) >> PAGE_SHIFT)
    pages = pte_pfn(ptes).astype(np.int64)
    mapped = np.flatnonzero(pte_present(ptes) & (pages >= folio) & (pages < folio + nr_pages))
    mappings.append(FolioMappings(mm, vma, start + (mapped << PAGE_SHIFT), pages[mapped], ptes[mapped],
                                  frames.page_anon_exclusive[pages[mapped]]))
    if len(mapped):
        if any_set(pte_dirty(ptes[mapped])):
            frames.folio_dirty[folio] = True  # folio_mark_dirty
        index = ((start - haddr) >> PAGE_SHIFT) + mapped
        machine.clear_full_ptes_runs(mm, PteRuns(haddr, index, np.ones(len(index), np.int64)))
        folios_remove_rmap_ptes(machine, np.full(len(mapped), folio), pages[mapped],
                                np.ones(len(mapped), np.int64), mm)
        frames.folio_refcount[folio] -= len(mapped)
    return OK


def __split_folio_to_order(machine: Machine, folio: int, new_order: int) -> np.ndarray:
    """Turn an unmapped folio's struct pages into folios of new_order; returns their heads."""
    frames = machine.frames
    nr_pages = frames.folio_nr_pages(folio)
    index = frames.folio_index.item(folio)
    lineage = frames.folio_lineage.item(folio)
    swapbacked = frames.folio_swapbacked.item(folio)
    dirty = frames.folio_dirty.item(folio)
    data = frames.page_data[folio:folio + nr_pages].copy()
    heads = np.arange(folio, folio + nr_pages, 1 << new_order, dtype=np.int64)
    frames.clear_frames(folio, nr_pages)
    frames.folio_set_frames(heads, new_order)
    frames.folio_anon[heads] = True
    frames.folio_swapbacked[heads] = swapbacked  # the flags __split_folio_to_order clones
    frames.folio_dirty[heads] = dirty
    frames.folio_index[heads] = index + (heads - folio)
    frames.folio_lineage[heads] = lineage
    frames.page_data[folio:folio + nr_pages] = data
    return heads


def remap_page(machine: Machine, folio: int, nr_pages: int, mappings: list[FolioMappings]) -> None:
    """Map the nr_pages pages of a split folio, from its first new folio folio on, again:
    process VMA by process VMA in walk order, all new folios at once (each new folio's
    MM_ID slots then see its mappings in walk order, as the reference's folio by folio).

    Context: mappings are unmap_folio's, taken before the split.
    """
    check(machine.frames.page_folio.item(folio) == folio, "remap from %s, not a new folio", folio)
    check(all_set((machine.frames.page_folio[folio:folio + nr_pages]) >= folio), "remap beyond the split folio")
    for vma_mappings in mappings:
        folios_remove_migration_ptes(machine, vma_mappings)


def folios_remove_migration_ptes(machine: Machine, mappings: FolioMappings) -> None:
    """remove_migration_ptes of every new folio for the pages one process VMA mapped: each
    page's new PTE, one reference and one mapping of its new folio; a page that is now an
    order-0 folio reading all zero gets the shared zero page instead (try_to_map_unused_to_zeropage,
    TTU_USE_SHARED_ZEROPAGE of a successful anon split): no reference, no mapping, one page
    less in MM_ANONPAGES."""
    if len(mappings.pages) == 0:
        return
    frames = machine.frames
    mm = mappings.mm
    folios = frames.page_folio[mappings.pages]
    zero = (frames.folio_order[folios] == 0) & (frames.page_data[mappings.pages] == 0)
    entries = split_entries(mappings.old, mappings.pages, mappings.vma)
    zero_ptes = np.full(len(entries), np.uint64(zero_page_pte(machine, mappings.vma)), np.uint64)
    zero_ptes = np.where(pte_uffd_wp(mappings.old), pte_mkuffd_wp(zero_ptes), zero_ptes)  # the migration entry's bit
    entries = np.where(zero, zero_ptes, entries)
    haddr = int(mappings.addrs[0]) & ~(PMD_SIZE - 1)
    set_pte_each(machine, mm, haddr, (mappings.addrs - haddr) >> PAGE_SHIFT, entries)   # remove_migration_pte
    if any_set(zero):
        mm.rss_anon -= int(np.count_nonzero(zero))
        folios, pages, exclusive = folios[~zero], mappings.pages[~zero], mappings.exclusive[~zero]
    else:
        pages, exclusive = mappings.pages, mappings.exclusive
    add_at(frames.folio_refcount, folios, 1)
    add_at(frames.page_mapcount, pages, 1)
    SetPagesAnonExclusive(machine, pages[exclusive])
    check(all_set(frames.page_mapcount[pages[exclusive]] == 1), "exclusive page mapped more than once")
    large = frames.folio_order[folios] > 0
    large_folios, counts = totals_by_value(folios[large], np.ones(int(large.sum()), np.int64))
    if len(large_folios):
        folios_add_large_mapcount(machine, large_folios, counts, mm)


def split_huge_page_to_list_to_order(machine: Machine, folio: int, new_order: int) -> str:
    """Split a large folio into folios of new_order, remapping every mapping as PTEs.

    Refused with EAGAIN if any reference is not a mapping (a pin).
    """
    frames = machine.frames
    check(frames.page_folio.item(folio) == folio and frames.folio_anon[folio], "split of non-folio %s", folio)
    order = frames.folio_order.item(folio)
    if new_order == 1 or new_order >= order or not 0 <= new_order <= 8:
        return EINVAL
    nr_pages = frames.folio_nr_pages(folio)
    swap_slot = frames.folio_swap.item(folio)  # folio_expected_ref_count counts the swap cache's
    cache_refs = nr_pages if swap_slot else 0
    if frames.folio_refcount.item(folio) != frames.folio_large_mapcount.item(folio) + cache_refs:
        return EAGAIN
    frames.folio_refcount[folio] += 1  # the caller's reference, held across the unmap
    mappings = unmap_folio(machine, folio)
    check(frames.folio_refcount.item(folio) == 1 + cache_refs, "extra reference appeared during split")
    frames.folio_refcount[folio] = 0
    heads = __split_folio_to_order(machine, folio, new_order)
    if swap_slot:
        split_swap_cache(machine, folio, heads, swap_slot, 1 << new_order)
    remap_page(machine, folio, nr_pages, mappings)
    if swap_slot:
        free_swap_cache(machine, heads[1:])  # free_folio_and_swap_cache; the caller keeps lock_at
    heads = heads[frames.page_folio[heads] == heads]  # free_swap_cache may have freed some
    frames.folios_free(heads[frames.folio_refcount[heads] == 0])
    return OK


def split_swap_cache(machine: Machine, folio: int, heads: np.ndarray, swap_slot: int, new_nr_pages: int) -> None:
    """__folio_split of a swap-cache folio: each new folio takes its run of the slots and one
    cache reference per page (#104)."""
    frames = machine.frames
    frames.folio_swap[heads] = swap_slot + (heads - folio)
    nr_pages = len(heads) * new_nr_pages
    machine.swap.swap_cache[swap_slot:swap_slot + nr_pages] = np.repeat(heads, new_nr_pages)
    frames.folio_refcount[heads] += new_nr_pages

