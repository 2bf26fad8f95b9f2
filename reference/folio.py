"""Folio references and pins, as include/linux/mm.h: one folio at a time."""

from __future__ import annotations

from machine import VMA, Machine, MM, check
from collections.abc import Callable

from machine.pgtable import (
    PAGE_SHIFT, pfn_pte, pmd_trans_huge, pte_mkspecial, pte_pfn, pte_pmd, pte_present, pte_special,
    vm_get_page_prot,
)

GUP_PIN_COUNTING_BIAS = 1024


def folio_test_large(machine: Machine, folio: int) -> bool:
    return int(machine.frames.folio_order[folio]) > 0


def folio_nr_pages(machine: Machine, folio: int) -> int:
    return machine.frames.folio_nr_pages(folio)


def page_folio(machine: Machine, page: int) -> int:
    return machine.frames.page_folio_of(page)


def folio_get(machine: Machine, folio: int) -> None:
    folio_ref_add(machine, folio, 1)


def folio_ref_add(machine: Machine, folio: int, nr_refs: int) -> None:
    check(machine.frames.folio_refcount[folio] > 0, "folio %s gets a reference while free", folio)
    machine.frames.folio_refcount[folio] += nr_refs


def folio_put(machine: Machine, folio: int) -> None:
    folio_put_refs(machine, folio, 1)


def folio_put_refs(machine: Machine, folio: int, nr_refs: int) -> None:
    """Drop nr_refs references; the last one frees the folio."""
    frames = machine.frames
    check(frames.folio_refcount[folio] >= nr_refs, "folio %s refcount underflow", folio)
    frames.folio_refcount[folio] -= nr_refs
    if frames.folio_refcount[folio] == 0:
        frames.folio_free(folio)


def folio_maybe_dma_pinned(machine: Machine, folio: int) -> bool:
    """Exact _pincount for a large folio; refcount >= 1024 (false positives) for a small one."""
    frames = machine.frames
    if folio_test_large(machine, folio):
        return int(frames.folio_pincount[folio]) > 0
    return int(frames.folio_refcount[folio]) >= GUP_PIN_COUNTING_BIAS


def folio_needs_cow_for_dma(machine: Machine, mm: MM, folio: int) -> bool:
    """fork must copy rather than share: the parent has pinned and the folio may be pinned."""
    return mm.has_pinned and folio_maybe_dma_pinned(machine, folio)


def folio_mapcount(machine: Machine, folio: int) -> int:
    frames = machine.frames
    if folio_test_large(machine, folio):
        return int(frames.folio_large_mapcount[folio])
    return int(frames.page_mapcount[folio])


def folio_large_maybe_mapped_shared(machine: Machine, folio: int) -> bool:
    return bool(machine.frames.folio_mm_ids_shared[folio])


def page_mapcount(machine: Machine, page: int) -> int:
    """PTE mappings of the page plus its folio's PMD mappings."""
    frames = machine.frames
    folio = page_folio(machine, page)
    return int(frames.page_mapcount[page]) + int(frames.folio_entire_mapcount[folio])


def PageAnonExclusive(machine: Machine, page: int) -> bool:  # noqa: N802 (kernel name)
    return bool(machine.frames.page_anon_exclusive[page])


def SetPageAnonExclusive(machine: Machine, page: int) -> None:  # noqa: N802
    machine.frames.page_anon_exclusive[page] = True


def ClearPageAnonExclusive(machine: Machine, page: int) -> None:  # noqa: N802
    machine.frames.page_anon_exclusive[page] = False


def folio_alloc(machine: Machine, order: int) -> int | None:
    """A fresh folio with refcount 1, or None when no aligned run of frames is free."""
    return machine.frames.folio_alloc(order)


def copy_user_page(machine: Machine, dst: int, src: int) -> None:
    machine.frames.page_data[dst] = machine.frames.page_data[src]


def folio_maybe_mapped_shared(machine: Machine, folio: int) -> bool:
    """include/linux/mm.h: mapcount > 1 for a small folio; for a large one mapped more than
    once, the MM_ID "maybe mapped shared" bit."""
    mapcount = folio_mapcount(machine, folio)
    if not folio_test_large(machine, folio):
        return mapcount > 1
    if mapcount <= 1:
        return False
    return folio_large_maybe_mapped_shared(machine, folio)


def folio_test_dirty(machine: Machine, folio: int) -> bool:
    return bool(machine.frames.folio_dirty[folio])


def folio_mark_dirty(machine: Machine, folio: int) -> None:
    """PG_dirty set (an anon folio has no mapping: noop_dirty_folio)."""
    machine.frames.folio_dirty[folio] = True


def folio_clear_dirty(machine: Machine, folio: int) -> None:
    machine.frames.folio_dirty[folio] = False


def folio_test_lazyfree(machine: Machine, folio: int) -> bool:
    """An anon folio without PG_swapbacked: MADV_FREE made it discardable while clean."""
    frames = machine.frames
    return bool(frames.folio_anon[folio]) and not frames.folio_swapbacked[folio]


def folio_mark_lazyfree(machine: Machine, folio: int) -> None:
    """mm/swap.c: an anon swap-backed folio loses PG_swapbacked (lru_lazyfree)."""
    frames = machine.frames
    if frames.folio_anon[folio] and frames.folio_swapbacked[folio]:
        frames.folio_swapbacked[folio] = False


def folio_set_swapbacked(machine: Machine, folio: int) -> None:
    machine.frames.folio_swapbacked[folio] = True


def vm_normal_page(machine: Machine, pte: int) -> int | None:
    """The page a present PTE maps, or None for a special one (the shared zero page), which
    has no folio to count: no rmap, no reference, no RSS."""
    check(pte_present(pte), "vm_normal_page of a non-present PTE")
    if pte_special(pte):
        check(int(pte_pfn(pte)) == machine.frames.zero_pfn, "special PTE %#x not of the zero page", pte)
        return None
    return int(pte_pfn(pte))


def zero_page_pte(machine: Machine, vma: VMA) -> int:
    """The shared zero page as a read fault or a split maps it: pte_mkspecial(pfn_pte(zero_pfn,
    vm_page_prot)), read-only, young and clean."""
    return pte_mkspecial(pfn_pte(machine.frames.zero_pfn, vm_get_page_prot(vma.writable)))


def is_huge_zero_pmd(machine: Machine, pmd: int) -> bool:
    """A PMD block of the huge zero folio (is_huge_zero_pmd): special, at huge_zero_pfn."""
    return (bool(pmd_trans_huge(pmd)) and bool(pte_special(pmd))
            and int(pte_pfn(pmd)) == machine.frames.huge_zero_pfn)


def vm_normal_page_pmd(machine: Machine, pmd: int) -> int | None:
    """The head page a PMD block maps, or None for the huge zero folio's (special: no folio
    to count, no rmap, reference or RSS)."""
    check(pmd_trans_huge(pmd), "vm_normal_page_pmd of %#x, not a PMD block", pmd)
    if pte_special(pmd):
        check(is_huge_zero_pmd(machine, pmd), "special PMD %#x not of the huge zero folio", pmd)
        return None
    return int(pte_pfn(pmd))


def huge_zero_pmd(machine: Machine, vma: VMA) -> int:
    """The huge zero folio as a read fault maps it (set_huge_zero_folio):
    pmd_mkspecial(folio_mk_pmd(huge_zero_folio, vm_page_prot)), read-only, young and clean."""
    return pte_pmd(pte_mkspecial(pfn_pte(machine.frames.huge_zero_pfn, vm_get_page_prot(vma.writable))))


def folio_pte_batch(machine: Machine, mm: MM, folio: int, addr: int, end: int,
                    batch_bits: Callable[[int], int]) -> int:
    """How many PTEs from addr (before end) map consecutive pages of folio and are equal in
    batch_bits (what the caller's flags compare of an entry, pfn aside), looked at one at a
    time: folio_pte_batch_flags. Context: a present PTE of a page of folio is at addr."""
    pte = machine.ptep_get(mm, addr)
    page = int(pte_pfn(pte))
    check(pte_present(pte) and page_folio(machine, page) == folio,
          "folio_pte_batch at %#x: not a present PTE of the folio", addr)
    max_nr = min((end - addr) >> PAGE_SHIFT, folio + folio_nr_pages(machine, folio) - page)
    nr_pages = 1
    bits = batch_bits(pte)
    while nr_pages < max_nr:
        next_pte = machine.ptep_get(mm, addr + (nr_pages << PAGE_SHIFT))
        if not pte_present(next_pte) or int(pte_pfn(next_pte)) != page + nr_pages:
            break
        if batch_bits(next_pte) != bits:
            break
        nr_pages += 1
    return nr_pages
