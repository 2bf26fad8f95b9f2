"""PMD-mapped THPs and folio split, as mm/huge_memory.c: one PTE and one page at a time.

The pte_* helpers apply to PMD block values unchanged (same attribute bits; the
helpers never touch bit 1), as the kernel's pmd_* wrappers do via pmd_pte().
"""

from __future__ import annotations

from dataclasses import dataclass

from machine import MM, VMA, Machine, check
from machine.errors import EAGAIN, EBUSY, EINVAL, OK
from machine.pgtable import (
    HPAGE_PMD_NR, HPAGE_PMD_ORDER, PAGE_SHIFT, PAGE_SIZE, PMD_SIZE, pfn_pte, pmd_trans_huge,
    pte_clear_uffd_wp, pte_dirty, pte_mkdirty, pte_mkold, pte_mkuffd_wp, pte_mkwrite, pte_mkyoung,
    pte_modify, pte_pfn, pte_pmd, pte_present, pte_uffd_wp, pte_write, pte_wrprotect, pte_young,
    vm_get_page_prot,
)

from .folio import (
    folio_alloc, huge_zero_pmd, is_huge_zero_pmd, zero_page_pte,
    PageAnonExclusive, SetPageAnonExclusive, folio_get, folio_nr_pages, folio_put,
    folio_ref_add,
)
from .pgtable import set_ptes
from .rmap import (
    anon_vma_prepare, folio_add_anon_rmap_pte, folio_add_new_anon_rmap, folio_remove_rmap_pmd,
    folio_remove_rmap_pte, folio_try_dup_anon_rmap_pmd, rmap_walk_vmas,
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
    check(folio_nr_pages(machine, folio) == HPAGE_PMD_NR, "PMD mapping of a non-PMD folio")
    folio_add_new_anon_rmap(machine, folio, mm, vma, haddr, exclusive=True)
    entry = mk_huge_pmd(folio, vma)
    if unshare_uffd_wp:
        entry = pte_mkuffd_wp(entry)
    else:
        entry = maybe_pmd_mkwrite(pte_mkdirty(entry), vma)
    machine.set_pmd_at(mm, haddr, entry)
    mm.rss_anon += HPAGE_PMD_NR


def do_huge_pmd_anonymous_page_read(machine: Machine, mm: MM, vma: VMA, addr: int) -> str:
    """A read fault where the PMD size applies (thp_vma_suitable_order: the aligned 2 MiB in
    vma; the caller found the PMD empty): the VMA gets its anon_vma (vmf_anon_prepare), then
    the huge zero folio is mapped (set_huge_zero_folio), with no rmap, reference or RSS."""
    haddr = addr & ~(PMD_SIZE - 1)
    check(vma.start <= haddr and haddr + PMD_SIZE <= vma.end, "huge zero PMD leaves the VMA at %#x", addr)
    check(not pmd_trans_huge(machine.pmdp_get(mm, haddr)), "huge zero read fault over a PMD block at %#x", addr)
    anon_vma_prepare(machine, mm, vma)
    machine.set_pmd_at(mm, haddr, huge_zero_pmd(machine, vma))
    return OK


def do_huge_zero_wp_pmd(machine: Machine, mm: MM, vma: VMA, haddr: int, unshare: bool) -> str:
    """A write or unshare fault on the huge zero PMD: a new zeroed PMD THP in its place,
    mapped writable, dirty, head exclusive (map_anon_folio_pmd_pf; an unshare of a protected
    one keeps the uffd-wp bit, #121); FALLBACK if none can be allocated."""
    folio = folio_alloc(machine, HPAGE_PMD_ORDER)
    if folio is None:
        return FALLBACK
    orig_pmd = machine.pmdp_get_and_clear(mm, haddr)  # pmdp_huge_clear_flush
    map_anon_folio_pmd(machine, mm, vma, haddr, folio, unshare_uffd_wp=unshare and bool(pte_uffd_wp(orig_pmd)))
    return OK


def do_huge_pmd_wp_page(machine: Machine, mm: MM, vma: VMA, addr: int, unshare: bool) -> str:
    """Write or unshare fault on a read-only PMD block: reuse it whole, else split it.

    Returns OK, or FALLBACK after splitting the PMD (the fault retries at PTE level).
    """
    haddr = addr & ~(PMD_SIZE - 1)
    pmd = machine.pmdp_get(mm, haddr)
    check(pmd_trans_huge(pmd), "do_huge_pmd_wp_page without a PMD block")
    if is_huge_zero_pmd(machine, pmd):
        if do_huge_zero_wp_pmd(machine, mm, vma, haddr, unshare) == OK:
            return OK
        split_huge_pmd_locked(machine, mm, vma, haddr)  # fallback: split the PMD
        return FALLBACK
    folio = int(pte_pfn(pmd))
    if not PageAnonExclusive(machine, folio):
        if int(machine.frames.folio_refcount[folio]) != 1:
            split_huge_pmd_locked(machine, mm, vma, haddr)
            return FALLBACK
        SetPageAnonExclusive(machine, folio)
    if unshare:
        return OK
    machine.set_pmd_at(mm, haddr, maybe_pmd_mkwrite(pte_mkdirty(pte_mkyoung(pmd)), vma))
    return OK


def zap_huge_pmd(machine: Machine, mm: MM, haddr: int) -> None:
    """Clear a PMD block; a folio's loses its rmap, RSS and reference, the huge zero
    folio's nothing (vm_normal_folio_pmd finds no folio)."""
    pmd = machine.pmdp_get_and_clear(mm, haddr)
    if is_huge_zero_pmd(machine, pmd):
        return
    folio = int(pte_pfn(pmd))
    folio_remove_rmap_pmd(machine, folio, mm)
    mm.rss_anon -= HPAGE_PMD_NR
    folio_put(machine, folio)


def split_huge_pmd_locked(machine: Machine, mm: MM, vma: VMA, haddr: int) -> None:
    """__split_huge_pmd_locked without freeze: 512 PTEs carrying the head's exclusivity.

    Context: a PMD block maps haddr.
    """
    if is_huge_zero_pmd(machine, machine.pmdp_get(mm, haddr)):
        __split_huge_zero_page_pmd(machine, mm, vma, haddr)
        return
    pmd = machine.pmdp_get_and_clear(mm, haddr)  # pmdp_invalidate
    folio = int(pte_pfn(pmd))
    check(folio_nr_pages(machine, folio) == HPAGE_PMD_NR, "PMD block of a non-PMD folio")
    if pte_dirty(pmd):
        machine.frames.folio_dirty[folio] = True  # folio_set_dirty
    anon_exclusive = PageAnonExclusive(machine, folio)
    for page in range(folio + 1, folio + HPAGE_PMD_NR):
        check(not PageAnonExclusive(machine, page), "PMD-mapped THP %s has exclusive tail page %s", folio, page)
    folio_ref_add(machine, folio, HPAGE_PMD_NR - 1)
    for page in range(folio, folio + HPAGE_PMD_NR):
        # The head's state is given to every page (RMAP_EXCLUSIVE or RMAP_NONE).
        folio_add_anon_rmap_pte(machine, folio, page, mm, anon_exclusive)
    entry = split_entry(pmd, folio, vma)
    set_ptes(machine, mm, haddr, pfn_pte(folio, entry), HPAGE_PMD_NR)   # every block folded
    folio_remove_rmap_pmd(machine, folio, mm)


def __split_huge_zero_page_pmd(machine: Machine, mm: MM, vma: VMA, haddr: int) -> None:
    """Split the huge zero PMD: the shared zero page in each of its 512 PTEs, from
    vm_page_prot (young, clean, read-only) with the PMD's uffd-wp bit; nothing to count."""
    old_pmd = machine.pmdp_get_and_clear(mm, haddr)
    for i in range(HPAGE_PMD_NR):
        entry = zero_page_pte(machine, vma)
        if pte_uffd_wp(old_pmd):
            entry = pte_mkuffd_wp(entry)
        machine.set_pte_at(mm, haddr + (i << PAGE_SHIFT), entry)


def copy_huge_pmd_zero(machine: Machine, dst_mm: MM, dst_vma: VMA, haddr: int, pmd: int) -> None:
    """fork of the huge zero PMD: the child gets the entry old, without the uffd-wp bit unless
    its VMA is registered; no rmap, reference or RSS (mm_get_huge_zero_folio). The parent's
    is never writable, so its pmdp_set_wrprotect changes nothing."""
    check(not pte_write(pmd), "writable huge zero PMD at %#x", haddr)
    if not dst_vma.uffd_wp:  # userfaultfd_protected(dst_vma)
        pmd = pte_clear_uffd_wp(pmd)
    machine.set_pmd_at(dst_mm, haddr, pte_mkold(pte_wrprotect(pmd)))


def copy_huge_pmd(machine: Machine, dst_mm: MM, dst_vma: VMA, src_mm: MM, src_vma: VMA, haddr: int) -> str:
    """fork of a PMD block: share it as a PMD, or split the parent's if it may be pinned.

    Returns OK, or FALLBACK after the split (the caller copies the 512 PTEs).
    Context: a PMD block maps haddr in the parent.
    """
    pmd = machine.pmdp_get(src_mm, haddr)
    check(pmd_trans_huge(pmd), "copy_huge_pmd without a PMD block at %#x", haddr)
    if is_huge_zero_pmd(machine, pmd):
        copy_huge_pmd_zero(machine, dst_mm, dst_vma, haddr, pmd)
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
    uffd-wp bit per cp_flags, writable if allowed (can_change_pmd_writable).

    Context: a PMD block maps haddr, inside vma.
    """
    pmd = machine.pmdp_get(mm, haddr)
    check(pmd_trans_huge(pmd) and vma.start <= haddr and haddr + PMD_SIZE <= vma.end,
          f"change_huge_pmd without a PMD block inside the VMA at {haddr:#x}")
    folio = int(pte_pfn(pmd))
    entry = pte_modify(pmd, vm_get_page_prot(vma.writable))
    if cp_flags & MM_CP_UFFD_WP:
        entry = pte_mkuffd_wp(entry)
    elif cp_flags & MM_CP_UFFD_WP_RESOLVE:
        entry = pte_clear_uffd_wp(entry)
    if (cp_flags & MM_CP_TRY_CHANGE_WRITABLE and vma.writable and not (vma.uffd_wp and pte_uffd_wp(entry))
            and not is_huge_zero_pmd(machine, pmd) and PageAnonExclusive(machine, folio)):
        entry = pte_mkwrite(entry)
    machine.set_pmd_at(mm, haddr, entry)


# Folio split (split_huge_page_to_list_to_order, __folio_split).

@dataclass(frozen=True)
class FolioMapping:
    """One mapping removed by unmap_folio, remembered to remap the split pieces."""

    mm: MM
    vma: VMA
    addr: int
    entry: int  # the old PTE, or the old PMD block
    is_pmd: bool
    exclusive: bool


def split_entry(old: int, page: int, vma: VMA) -> int:
    """The PTE a split maps page with, from the old PTE's or PMD's write, young and dirty
    state: one rule for __split_huge_pmd_locked and remove_migration_pte (SPEC §2.3)."""
    entry = pfn_pte(page, vm_get_page_prot(vma.writable))
    if pte_write(old):
        entry = pte_mkwrite(entry)
    if not pte_young(old):
        entry = pte_mkold(entry)
    if pte_dirty(old):
        entry = pte_mkdirty(entry)
    if pte_uffd_wp(old):  # the uffd-wp bit (through the migration entry's swap bit)
        entry = pte_mkuffd_wp(entry)
    return entry


def unmap_folio(machine: Machine, folio: int) -> list[FolioMapping]:
    """Remove every mapping of folio in walk order; the caller holds a reference."""
    mappings: list[FolioMapping] = []
    for mm, vma, start, end in rmap_walk_vmas(machine, folio):
        result = try_to_migrate_one(machine, folio, mm, vma, start, end, mappings)
        check(result == OK, "unmap_folio could not unmap folio %s: %s", folio, result)
    return mappings


def try_to_migrate_one(machine: Machine, folio: int, mm: MM, vma: VMA, start: int, end: int,
                       mappings: list[FolioMapping]) -> str:
    """Remove every mapping of folio in [start, end) of vma, one entry at a time, appending
    each to mappings (model: the mapping itself stands for the migration entry). Returns
    OK: with no migration entries there is nothing to fail on."""
    nr_pages = folio_nr_pages(machine, folio)
    addr = start
    while addr < end:
        haddr = addr & ~(PMD_SIZE - 1)
        pmd = machine.pmdp_get(mm, haddr)
        if pmd_trans_huge(pmd):
            if int(pte_pfn(pmd)) == folio:
                mappings.append(FolioMapping(mm, vma, haddr, pmd, True, PageAnonExclusive(machine, folio)))
                machine.pmdp_get_and_clear(mm, haddr)
                if pte_dirty(pmd):
                    machine.frames.folio_dirty[folio] = True  # set_pmd_migration_entry: folio_mark_dirty
                folio_remove_rmap_pmd(machine, folio, mm)
                folio_put(machine, folio)
            addr = haddr + PMD_SIZE
            continue
        pte = machine.ptep_get(mm, addr)
        page = int(pte_pfn(pte))
        if pte_present(pte) and folio <= page < folio + nr_pages:
            mappings.append(FolioMapping(mm, vma, addr, pte, False, PageAnonExclusive(machine, page)))
            machine.ptep_get_and_clear(mm, addr)
            if pte_dirty(pte):
                machine.frames.folio_dirty[folio] = True  # folio_mark_dirty
            folio_remove_rmap_pte(machine, folio, page, mm)
            folio_put(machine, folio)
        addr += PAGE_SIZE
    return OK


def __split_folio_to_order(machine: Machine, folio: int, new_order: int) -> list[int]:
    """Turn an unmapped folio's struct pages into folios of new_order; returns their heads."""
    frames = machine.frames
    nr_pages = folio_nr_pages(machine, folio)
    index = int(frames.folio_index[folio])
    lineage = int(frames.folio_lineage[folio])
    swapbacked = bool(frames.folio_swapbacked[folio])
    dirty = bool(frames.folio_dirty[folio])
    new_nr_pages = 1 << new_order
    heads = list(range(folio, folio + nr_pages, new_nr_pages))
    frames.clear_frames(folio, nr_pages)
    for head in heads:
        frames.folio_set_frames([head], new_order)
        frames.folio_anon[head] = True
        frames.folio_swapbacked[head] = swapbacked  # the flags __split_folio_to_order clones
        frames.folio_dirty[head] = dirty
        frames.folio_index[head] = index + (head - folio)
        frames.folio_lineage[head] = lineage
    return heads


def split_huge_page_to_list_to_order(machine: Machine, folio: int, new_order: int) -> str:
    """Split a large folio into folios of new_order, remapping every mapping as PTEs.

    Refused with EAGAIN if any reference is not a mapping (a pin).
    Context: folio is an allocated anon folio, mapped somewhere.
    """
    frames = machine.frames
    check(int(frames.page_folio[folio]) == folio and frames.folio_anon[folio], "split of non-folio %s", folio)
    order = int(frames.folio_order[folio])
    if new_order == 1 or new_order >= order or not 0 <= new_order <= 8:
        return EINVAL
    swap_slot = int(frames.folio_swap[folio])  # folio_expected_ref_count: the swap cache's too
    cache_refs = folio_nr_pages(machine, folio) if swap_slot else 0
    if int(frames.folio_refcount[folio]) != int(frames.folio_large_mapcount[folio]) + cache_refs:
        return EAGAIN
    saved_data = frames.page_data[folio:folio + folio_nr_pages(machine, folio)].copy()
    folio_get(machine, folio)  # the caller's reference, held across the unmap
    mappings = unmap_folio(machine, folio)
    check(int(frames.folio_refcount[folio]) == 1 + cache_refs, "extra reference appeared during split")
    frames.folio_refcount[folio] = 0
    heads = __split_folio_to_order(machine, folio, new_order)
    if swap_slot:
        split_swap_cache(machine, folio, heads, swap_slot)
    frames.page_data[folio:folio + len(saved_data)] = saved_data
    remap_page(machine, folio, len(saved_data), mappings)
    for head in heads:
        if head != folio:  # free_folio_and_swap_cache; the caller keeps the first (lock_at)
            free_swap_cache(machine, head)
        if not frames.is_free(head) and int(frames.folio_refcount[head]) == 0:
            frames.folio_free(head)
    return OK


def split_swap_cache(machine: Machine, folio: int, heads: list[int], swap_slot: int) -> None:
    """__folio_split of a swap-cache folio: each new folio takes its slots (folio->swap
    advanced, the cache names it) and one cache reference per page (#104)."""
    for head in heads:
        machine.frames.folio_swap[head] = swap_slot + (head - folio)
        for page in range(head, head + folio_nr_pages(machine, head)):
            machine.swap.swap_cache[swap_slot + (page - folio)] = head
        machine.frames.folio_refcount[head] += folio_nr_pages(machine, head)  # before any mapping's


def mappings_by_new_folio(old_folio: int, heads: list[int], new_order: int,
                          mappings: list[FolioMapping]) -> dict[int, list[FolioMapping]]:
    """For each new folio, the mappings (in walk order) that map one of its pages: every
    PMD mapping, and the PTE mapping of each of its pages."""
    by_head: dict[int, list[FolioMapping]] = {head: [] for head in heads}
    for mapping in mappings:
        if mapping.is_pmd:
            for head in heads:
                by_head[head].append(mapping)
        else:
            page = int(pte_pfn(mapping.entry))
            by_head[old_folio + ((page - old_folio) >> new_order << new_order)].append(mapping)
    return by_head


def remap_page(machine: Machine, folio: int, nr_pages: int, mappings: list[FolioMapping]) -> None:
    """Map the nr_pages pages of a split folio, from its first new folio folio on, again:
    new folio by new folio in ascending order, each with its mappings in walk order.

    Context: the new folios are all of one order; mappings are unmap_folio's.
    """
    new_nr_pages = folio_nr_pages(machine, folio)
    heads = list(range(folio, folio + nr_pages, new_nr_pages))
    by_head = mappings_by_new_folio(folio, heads, new_nr_pages.bit_length() - 1, mappings)
    for head in heads:
        check(folio_nr_pages(machine, head) == new_nr_pages, "split into folios of several orders")
        remove_migration_ptes(machine, folio, head, by_head[head])


def remove_migration_ptes(machine: Machine, old_folio: int, folio: int, mappings: list[FolioMapping]) -> None:
    """Map one new folio's pages again as its share of the mappings, in walk order."""
    nr_pages = folio_nr_pages(machine, folio)
    for mapping in mappings:
        if mapping.is_pmd:
            pages = range(folio, folio + nr_pages)
        else:
            page = int(pte_pfn(mapping.entry))
            pages = range(page, page + 1) if folio <= page < folio + nr_pages else range(0)
        for page in pages:
            addr = mapping.addr + ((page - old_folio) << PAGE_SHIFT if mapping.is_pmd else 0)
            if try_to_map_unused_to_zeropage(machine, mapping.mm, mapping.vma, addr, folio, page, mapping.entry):
                continue
            machine.set_pte_at(mapping.mm, addr, split_entry(mapping.entry, page, mapping.vma))
            folio_get_for_mapping(machine, folio)
            folio_add_anon_rmap_pte(machine, folio, page, mapping.mm, mapping.exclusive)


def try_to_map_unused_to_zeropage(machine: Machine, mm: MM, vma: VMA, addr: int, folio: int, page: int,
                                  old: int) -> bool:
    """A successful split of an anon folio remaps (TTU_USE_SHARED_ZEROPAGE) each page that is
    now an order-0 folio (not PageCompound) and reads all zero (pages_identical with the zero
    page: the model's one data word is 0) to the shared zero page instead: a special PTE from
    vm_page_prot with the uffd-wp bit of the entry old it replaces (pte_swp_uffd_wp of the
    migration entry), one page less in MM_ANONPAGES, no rmap and no reference (mm/migrate.c;
    no mlock in the model)."""
    if folio_nr_pages(machine, folio) != 1 or int(machine.frames.page_data[page]) != 0:
        return False
    entry = zero_page_pte(machine, vma)
    if pte_uffd_wp(old):
        entry = pte_mkuffd_wp(entry)
    machine.set_pte_at(mm, addr, entry)
    mm.rss_anon -= 1
    return True


def folio_get_for_mapping(machine: Machine, folio: int) -> None:
    """A remapped page takes one reference for its mapping (refcount starts at 0 after split)."""
    machine.frames.folio_refcount[folio] += 1
