"""MADV_FREE (mm/madvise.c madvise_free_single_vma, madvise_free_pte_range; mm/huge_memory.c
madvise_free_huge_pmd) and MADV_PAGEOUT's walk of a PTE-mapped large anon folio
(madvise_cold_or_pageout_pte_range): one PTE and one page at a time."""

from __future__ import annotations

from machine import MM, VMA, Machine, check
from machine.errors import EINVAL, ENOMEM, OK
from machine.pgtable import (
    PAGE_SHIFT, PAGE_SIZE, PMD_SIZE, PTE_ADDR_MASK, is_pte_marker, is_swap_pte, pmd_trans_huge, pte_dirty,
    pte_mkclean, pte_mkold, pte_none, pte_pfn, pte_present, pte_special, pte_swp_offset, pte_wrprotect, pte_young,
)

from .folio import (
    folio_clear_dirty, folio_mapcount, folio_mark_lazyfree, folio_maybe_mapped_shared, folio_nr_pages, folio_pte_batch,
    folio_test_dirty, folio_test_large, is_huge_zero_pmd, page_folio,
)
from .huge_memory import split_huge_page_to_list_to_order
from .memory import pmd_ranges
from .rmap import rmap_walk_vmas
from .swap import folio_free_swap, folio_test_swapcache, free_swap_and_cache
from .vmscan import shrink_folio_list


def madvise_free(machine: Machine, mm: MM, start: int, length: int) -> str:
    """MADV_FREE of [start, start + length), VMA by VMA; ENOMEM if the range had a hole (the
    VMAs in it are still done, as madvise_walk_vmas goes on after a hole)."""
    end = start + length
    covered = mm.vmas_cover(start, end)
    for vma in mm.vmas_intersecting(start, end):
        if vma.file is not None:
            return EINVAL  # madvise_free_single_vma: !vma_is_anonymous; the walk stops there
        madvise_free_single_vma(machine, mm, vma, max(vma.start, start), min(vma.end, end))
    return OK if covered else ENOMEM


def madvise_free_single_vma(machine: Machine, mm: MM, vma: VMA, start: int, end: int) -> None:
    """Walk [start, end) of vma PMD by PMD: a PMD block through madvise_free_huge_pmd, PTEs
    through madvise_free_pte_range."""
    check(vma.start <= start < end <= vma.end, "MADV_FREE range leaves the VMA")
    for addr, next_addr, whole_pmd in pmd_ranges(machine, mm, start, end):
        haddr = addr & ~(PMD_SIZE - 1)
        if pmd_trans_huge(machine.pmdp_get(mm, haddr)):
            if madvise_free_huge_pmd(machine, mm, haddr, whole_pmd):
                continue
            if pmd_trans_huge(machine.pmdp_get(mm, haddr)):
                continue  # shared, or the split failed: pte_offset_map_lock finds no PTE table
        madvise_free_pte_range(machine, mm, addr, next_addr)


def madvise_free_huge_pmd(machine: Machine, mm: MM, haddr: int, whole_pmd: bool) -> bool:
    """A PMD-mapped THP: skipped if the huge zero folio or maybe mapped shared; split (to order 0) if the range covers
    only part of it; else its PMD made old and clean and the folio lazyfree. Returns whether
    the PMD was handled (False: the caller walks the PTEs the split left, if any)."""
    pmd = machine.pmdp_get(mm, haddr)
    check(pmd_trans_huge(pmd), "madvise_free_huge_pmd without a PMD block at %#x", haddr)
    if is_huge_zero_pmd(machine, pmd):
        return False  # the huge zero folio is skipped, whole or in part
    folio = int(pte_pfn(pmd))
    if folio_maybe_mapped_shared(machine, folio):
        return False
    if not whole_pmd:
        split_huge_page_to_list_to_order(machine, folio, 0)  # a pinned folio stays whole
        return False
    folio_clear_dirty(machine, folio)
    if pte_young(pmd) or pte_dirty(pmd):
        machine.set_pmd_at(mm, haddr, pte_mkclean(pte_mkold(pmd)))
    folio_mark_lazyfree(machine, folio)
    return True


def madvise_folio_pte_batch(machine: Machine, mm: MM, folio: int, addr: int, end: int) -> int:
    """How many PTEs from addr (before end) map consecutive pages of folio and match but for
    dirty, write and young (folio_pte_batch_flags with FPB_MERGE_YOUNG_DIRTY), one at a time."""
    return folio_pte_batch(machine, mm, folio, addr, end, pte_batch_ignored)


def pte_batch_ignored(pte: int) -> int:
    """What a batch without FPB_RESPECT_* flags compares: the entry without dirty, write,
    young and its pfn (__pte_batch_clear_ignored)."""
    return int(pte_mkold(pte_wrprotect(pte_mkclean(pte)))) & ~PTE_ADDR_MASK


def madvise_free_pte_range(machine: Machine, mm: MM, start: int, end: int) -> None:
    """MADV_FREE of the PTEs in [start, end), inside one PMD and one VMA: swap entries are
    freed; a large folio the range covers only part of is split (unless maybe mapped shared,
    or pinned); a dirty or swap-cache folio is done only if mapped exactly once per page
    (and out of the swap cache: folio_free_swap); each folio done
    has its entries made old and clean and becomes lazyfree."""
    if mm.pte_table(start) is None:
        return
    addr = start
    while addr < end:
        pte = machine.ptep_get(mm, addr)
        if pte_none(pte):
            addr += PAGE_SIZE
            continue
        if is_pte_marker(pte):  # a uffd-wp marker stays (madvise_free_pte_range skips it)
            addr += PAGE_SIZE
            continue
        if is_swap_pte(pte):
            machine.ptep_get_and_clear(mm, addr)
            mm.rss_swap -= 1
            free_swap_and_cache(machine, int(pte_swp_offset(pte)))
            addr += PAGE_SIZE
            continue
        if pte_special(pte):  # the zero page: vm_normal_folio() is NULL, skipped
            addr += PAGE_SIZE
            continue
        folio = page_folio(machine, int(pte_pfn(pte)))
        nr_pages = 1
        if folio_test_large(machine, folio):
            nr_pages = madvise_folio_pte_batch(machine, mm, folio, addr, end)
            if nr_pages < folio_nr_pages(machine, folio):
                if folio_maybe_mapped_shared(machine, folio):
                    addr += nr_pages << PAGE_SHIFT
                    continue
                if split_huge_page_to_list_to_order(machine, folio, 0) != OK:
                    addr += nr_pages << PAGE_SHIFT
                    continue
                continue  # the same entry again, now mapping an order-0 folio
        if folio_test_swapcache(machine, folio) or folio_test_dirty(machine, folio):
            if folio_mapcount(machine, folio) != folio_nr_pages(machine, folio):
                addr += nr_pages << PAGE_SHIFT
                continue
            if folio_test_swapcache(machine, folio) and not folio_free_swap(machine, folio):
                addr += nr_pages << PAGE_SHIFT
                continue
            folio_clear_dirty(machine, folio)
        if any(pte_young(entry) or pte_dirty(entry) for entry in
               (machine.ptep_get(mm, addr + (i << PAGE_SHIFT)) for i in range(nr_pages))):
            # clear_young_dirty_ptes: no unfold; a batch ending inside a folded block is
            # widened to the whole block (contpte_clear_young_dirty_ptes)
            block_addr, block_nr = machine.contpte_block_range(mm, addr, nr_pages)
            for i in range(block_nr):
                entry_addr = block_addr + (i << PAGE_SHIFT)
                machine.set_pte_raw(mm, entry_addr, pte_mkold(pte_mkclean(machine.ptep_get_raw(mm, entry_addr))))
        folio_mark_lazyfree(machine, folio)
        addr += nr_pages << PAGE_SHIFT


def madvise_pageout_folio(machine: Machine, mm: MM, folio: int) -> str:
    """MADV_PAGEOUT of the entries where mm maps pages of a PTE-mapped large anon folio, VMA
    by VMA (madvise_cold_or_pageout_pte_range), each walk's chosen folios reclaimed at its end
    (reclaim_pages). The first failure is returned (a split refused: EAGAIN), a skip is OK.

    Context: folio is a large anon folio mm maps with PTEs.
    """
    check(folio_test_large(machine, folio), "madvise_pageout_folio of small folio %s", folio)
    nr_pages = folio_nr_pages(machine, folio)
    result = OK
    for walk_mm, _vma, start, end in rmap_walk_vmas(machine, folio):
        if walk_mm is not mm:
            continue
        folio_list: list[int] = []
        walk_result = madvise_cold_or_pageout_pte_range(machine, mm, folio, nr_pages, start, end, folio_list)
        if result == OK:
            result = walk_result
        for chosen in folio_list:
            reclaim_result = shrink_folio_list(machine, chosen)
            if reclaim_result == ENOMEM:
                return ENOMEM  # (model) the op is rolled back: the guest's zram never runs out
            if result == OK:
                result = reclaim_result
    return result


def madvise_cold_or_pageout_pte_range(machine: Machine, mm: MM, folio: int, nr_pages: int, start: int,
                                      end: int, folio_list: list[int]) -> str:
    """Walk [start, end) of one VMA and PMD entry by entry, acting on the pages of folio (nr_pages
    before any split): a large folio whose batch (madvise_folio_pte_batch) is shorter than it is
    skipped if maybe mapped shared, else split to order 0 and the same entry looked at again (a
    refused split skips the batch); every other folio met is put on folio_list once."""
    result = OK
    addr = start
    while addr < end:
        pte = machine.ptep_get(mm, addr)
        page = int(pte_pfn(pte))
        if not pte_present(pte) or pte_special(pte) or not folio <= page < folio + nr_pages:
            addr += PAGE_SIZE  # none, swap, a marker, the zero page or another folio's page
            continue
        current = page_folio(machine, page)
        batch = 1
        if folio_test_large(machine, current):
            batch = madvise_folio_pte_batch(machine, mm, current, addr, end)
            if batch < folio_nr_pages(machine, current):
                if folio_maybe_mapped_shared(machine, current):
                    addr += batch << PAGE_SHIFT
                    continue
                split_result = split_huge_page_to_list_to_order(machine, current, 0)
                if split_result != OK:
                    if result == OK:
                        result = split_result
                    addr += batch << PAGE_SHIFT
                    continue
                continue  # the same entry again, now mapping an order-0 folio (or the zero page)
        if current not in folio_list:
            folio_list.append(current)  # (model) not asked: folio_mapcount != folio_nr_pages
        addr += batch << PAGE_SHIFT
    return result
