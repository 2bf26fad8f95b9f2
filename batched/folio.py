"""Folio references and pins, as include/linux/mm.h, over arrays of folios at once."""

from __future__ import annotations

import numpy as np

from machine import MM, VMA, Machine, all_set, any_set, check
from machine.pgtable import (
    PMD_TYPE_SECT,
    PTE_SPECIAL,
    PTE_TYPE_MASK,
    pfn_pte,
    pte_mkspecial,
    pte_pfn,
    pte_pmd,
    pte_special,
    vm_get_page_prot,
)

from .internal import add_at, distinct

GUP_PIN_COUNTING_BIAS = 1024


def page_folio(machine: Machine, pages):
    """The head pfn of each page's folio (pages must be allocated)."""
    if isinstance(pages, int):
        folio = machine.frames.page_folio.item(pages)
        check(folio >= 0, "pfn %s is not allocated", pages)
        return folio
    folios = machine.frames.page_folio[pages]
    check(all_set(folios >= 0), "pages include a free frame")
    return folios


def folio_get(machine: Machine, folio: int) -> None:
    folio_ref_add(machine, folio, 1)


def folio_ref_add(machine: Machine, folio: int, nr_refs: int) -> None:
    check(machine.frames.folio_refcount.item(folio) > 0, "folio %s gets a reference while free", folio)
    machine.frames.folio_refcount[folio] += nr_refs


def folios_ref_add(machine: Machine, folios: np.ndarray, nr_refs: np.ndarray) -> None:
    """Add nr_refs[i] references to folios[i] (a folio may appear several times)."""
    frames = machine.frames
    check(all_set(frames.folio_refcount[folios] > 0), "free folios get references")
    add_at(frames.folio_refcount, folios, nr_refs)


def folio_put(machine: Machine, folio: int) -> None:
    """Drop one reference; the last one frees the folio."""
    frames = machine.frames
    check(frames.folio_refcount[folio] >= 1, "folio %s refcount underflow", folio)
    frames.folio_refcount[folio] -= 1
    if frames.folio_refcount[folio] == 0:
        frames.folio_free(folio)


def folios_put_refs(machine: Machine, folios: np.ndarray, nr_refs: np.ndarray) -> None:
    """Drop nr_refs[i] references from folios[i]; folios whose last reference goes are freed."""
    frames = machine.frames
    folios = np.asarray(folios, np.int64)
    if folios.size == 0:
        return
    add_at(frames.folio_refcount, folios, -np.asarray(nr_refs))
    touched = distinct(folios)
    check(all_set(frames.folio_refcount[touched] >= 0), "folio refcount underflow")
    frames.folios_free(touched[frames.folio_refcount[touched] == 0])


def folio_maybe_dma_pinned(machine: Machine, folios):
    """Exact _pincount for a large folio; refcount >= 1024 (false positives) for a small one."""
    frames = machine.frames
    if isinstance(folios, int):
        if frames.folio_order.item(folios) > 0:
            return frames.folio_pincount.item(folios) > 0
        return frames.folio_refcount.item(folios) >= GUP_PIN_COUNTING_BIAS
    return np.where(frames.folio_order[folios] > 0, frames.folio_pincount[folios] > 0,
                    frames.folio_refcount[folios] >= GUP_PIN_COUNTING_BIAS)


def folio_needs_cow_for_dma(machine: Machine, mm: MM, folios):
    """fork must copy rather than share: the parent has pinned and the folio may be pinned."""
    return mm.has_pinned & folio_maybe_dma_pinned(machine, folios)


def folio_mapcount(machine: Machine, folio: int) -> int:
    frames = machine.frames
    if frames.folio_order[folio] > 0:
        return frames.folio_large_mapcount.item(folio)
    return frames.page_mapcount.item(folio)


def page_mapcount(machine: Machine, pages: np.ndarray) -> np.ndarray:
    """PTE mappings of each page plus its folio's PMD mappings."""
    frames = machine.frames
    return frames.page_mapcount[pages] + frames.folio_entire_mapcount[frames.page_folio[pages]]


def PageAnonExclusive(machine: Machine, page: int) -> bool:  # noqa: N802 (kernel name)
    return machine.frames.page_anon_exclusive.item(page)


def SetPageAnonExclusive(machine: Machine, page: int) -> None:  # noqa: N802
    machine.frames.page_anon_exclusive[page] = True


def ClearPageAnonExclusive(machine: Machine, page: int) -> None:  # noqa: N802
    machine.frames.page_anon_exclusive[page] = False


def SetPagesAnonExclusive(machine: Machine, pages: np.ndarray | slice) -> None:  # noqa: N802
    """SetPageAnonExclusive on every page of pages (an array of pfns or a slice of them)."""
    machine.frames.page_anon_exclusive[pages] = True


def ClearPagesAnonExclusive(machine: Machine, pages: np.ndarray | slice) -> None:  # noqa: N802
    """ClearPageAnonExclusive on every page of pages (an array of pfns or a slice of them)."""
    machine.frames.page_anon_exclusive[pages] = False


def copy_user_pages(machine: Machine, dst: np.ndarray, src: np.ndarray) -> None:
    machine.frames.page_data[dst] = machine.frames.page_data[src]


def folio_maybe_mapped_shared(machine: Machine, folio: int) -> bool:
    """include/linux/mm.h: mapcount > 1 for a small folio; for a large one mapped more than
    once, the MM_ID "maybe mapped shared" bit."""
    frames = machine.frames
    mapcount = folio_mapcount(machine, folio)
    if frames.folio_order.item(folio) == 0:
        return mapcount > 1
    return mapcount > 1 and frames.folio_mm_ids_shared.item(folio)


def folio_test_lazyfree(machine: Machine, folios):
    """Anon folios without PG_swapbacked: MADV_FREE made them discardable while clean."""
    frames = machine.frames
    if isinstance(folios, int):
        return frames.folio_anon.item(folios) and not frames.folio_swapbacked.item(folios)
    return frames.folio_anon[folios] & ~frames.folio_swapbacked[folios]


def folios_mark_lazyfree(machine: Machine, folios: np.ndarray) -> None:
    """mm/swap.c folio_mark_lazyfree for each folio: an anon swap-backed folio loses PG_swapbacked."""
    frames = machine.frames
    frames.folio_swapbacked[folios] &= ~frames.folio_anon[folios]


def vm_normal_pages(machine: Machine, ptes):
    """Per present entry: does it map a normal page (False for a special entry, the shared
    zero page, for which vm_normal_page() is NULL: no folio, rmap, reference or RSS)."""
    if np.ndim(ptes) == 0:
        if not pte_special(ptes):
            return True
        check(pte_pfn(ptes) == machine.frames.zero_pfn, "special PTE not of the zero page")
        return False
    special = pte_special(ptes)
    check(not any_set(special) or all_set(pte_pfn(ptes[special]) == machine.frames.zero_pfn),
          "special PTE not of the zero page")
    return ~special


def zero_page_pte(machine: Machine, vma: VMA) -> int:
    """The shared zero page as a read fault or a split maps it: pte_mkspecial(pfn_pte(zero_pfn,
    vm_page_prot)), read-only, young and clean."""
    return pte_mkspecial(pfn_pte(machine.frames.zero_pfn, vm_get_page_prot(vma.writable)))


def is_huge_zero_pmd(machine: Machine, pmd: int) -> bool:
    """The PMD block maps the huge zero folio (is_huge_zero_pmd): a special section at
    huge_zero_pfn, tested on the descriptor's bits at once."""
    return (pmd & (PTE_TYPE_MASK | PTE_SPECIAL)) == (PMD_TYPE_SECT | PTE_SPECIAL) \
        and int(pte_pfn(pmd)) == machine.frames.huge_zero_pfn


def huge_zero_pmd(machine: Machine, vma: VMA) -> int:
    """set_huge_zero_folio's entry: pmd_mkspecial(folio_mk_pmd(huge_zero_folio, vm_page_prot)),
    read-only, young and clean."""
    return int(pte_pmd(pte_mkspecial(pfn_pte(machine.frames.huge_zero_pfn, vm_get_page_prot(vma.writable)))))
