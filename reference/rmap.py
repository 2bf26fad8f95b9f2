"""Reverse mapping, as mm/rmap.c and include/linux/rmap.h: one PTE and one page at a time.

A try_ function returns OK or EBUSY (the kernel's 0 or -EBUSY). Counts are plain
(the kernel's accessor values): a slot count of 0 with MM_ID_DUMMY is a free slot
(the kernel's -1).
"""

from __future__ import annotations

from machine import MM, MM_ID_DUMMY, VMA, Machine, check
from machine.errors import EBUSY, OK
from machine.pgtable import HPAGE_PMD_ORDER, PAGE_SHIFT

from .folio import (
    ClearPageAnonExclusive, PageAnonExclusive, SetPageAnonExclusive, folio_maybe_dma_pinned,
    folio_needs_cow_for_dma, folio_nr_pages, folio_test_large, page_folio,
)


def __folio_rmap_sanity_checks(machine: Machine, folio: int, page: int, nr_pages: int) -> None:
    check(nr_pages >= 1, "nr_pages must be positive")
    check(page_folio(machine, page) == folio, "page %s is not in folio %s", page, folio)
    check(page_folio(machine, page + nr_pages - 1) == folio, "range leaves the folio")


# MM_ID: who maps a large folio (CONFIG_MM_ID, include/linux/rmap.h).

def folio_set_large_mapcount(machine: Machine, folio: int, mapcount: int, mm: MM) -> None:
    """A new large folio's mapcount, all of it in mm's slot 0."""
    frames = machine.frames
    check(folio_test_large(machine, folio), "large mapcount of small folio %s", folio)
    check(mapcount >= 1 and mapcount <= folio_nr_pages(machine, folio), "bad large mapcount")
    check(frames.folio_mm_id[folio, 0] == MM_ID_DUMMY and frames.folio_mm_id[folio, 1] == MM_ID_DUMMY,
          "new folio already has MM_ID slots")
    frames.folio_large_mapcount[folio] = mapcount
    frames.folio_mm_id_mapcount[folio, 0] = mapcount
    frames.folio_mm_id[folio, 0] = mm.mm_id


def folio_add_return_large_mapcount(machine: Machine, folio: int, diff: int, mm: MM) -> int:
    """Add diff mappings by mm; claim a slot or mark the folio maybe mapped shared."""
    frames = machine.frames
    check(folio_test_large(machine, folio), "large mapcount of small folio %s", folio)
    check(diff >= 1 and diff <= folio_nr_pages(machine, folio), "bad large mapcount diff")
    new_mapcount = int(frames.folio_large_mapcount[folio]) + diff
    frames.folio_large_mapcount[folio] = new_mapcount
    mm_ids = frames.folio_mm_id[folio]
    mapcounts = frames.folio_mm_id_mapcount[folio]
    if mm_ids[0] == mm.mm_id:
        mapcounts[0] += diff
    elif mm_ids[1] == mm.mm_id:
        mapcounts[1] += diff
    elif mm_ids[0] == MM_ID_DUMMY:
        mm_ids[0] = mm.mm_id
        mapcounts[0] = diff
        if new_mapcount != diff:  # we might have other mappings already
            frames.folio_mm_ids_shared[folio] = True
    elif mm_ids[1] == MM_ID_DUMMY:
        mm_ids[1] = mm.mm_id
        mapcounts[1] = diff
        frames.folio_mm_ids_shared[folio] = True  # slot 0 certainly has mappings as well
    return new_mapcount


def folio_sub_return_large_mapcount(machine: Machine, folio: int, diff: int, mm: MM) -> int:
    """Remove diff mappings by mm; clear "maybe mapped shared" once one slot owns all."""
    frames = machine.frames
    check(folio_test_large(machine, folio), "large mapcount of small folio %s", folio)
    check(diff >= 1 and diff <= folio_nr_pages(machine, folio), "bad large mapcount diff")
    new_mapcount = int(frames.folio_large_mapcount[folio]) - diff
    check(new_mapcount >= 0, "folio %s large mapcount underflow", folio)
    frames.folio_large_mapcount[folio] = new_mapcount
    mm_ids = frames.folio_mm_id[folio]
    mapcounts = frames.folio_mm_id_mapcount[folio]
    for slot in (0, 1):
        if mm_ids[slot] == mm.mm_id:
            mapcounts[slot] -= diff
            if mapcounts[slot] >= 1:
                return new_mapcount
            mapcounts[slot] = 0
            mm_ids[slot] = MM_ID_DUMMY
            break
    if mapcounts[0] == new_mapcount or mapcounts[1] == new_mapcount:
        frames.folio_mm_ids_shared[folio] = False
    return new_mapcount


# Adding mappings.

def __folio_set_anon(machine: Machine, folio: int, vma: VMA, addr: int) -> None:
    """Make a new folio anon in vma's lineage with index = linear page index of addr."""
    frames = machine.frames
    frames.folio_anon[folio] = True
    frames.folio_index[folio] = vma.pgoff + ((addr - vma.start) >> PAGE_SHIFT)
    frames.folio_lineage[folio] = vma.lineage


def anon_vma_compatible(a: VMA, b: VMA) -> bool:
    """anon_vma_compatible: a ends where b starts, both map the same file (or none) at
    consecutive offsets, with the same flags but for the access ones (uffd-wp registration
    and VM_ACCOUNT are flags; write permission is not)."""
    if a.end != b.start or a.file != b.file or a.shared != b.shared or bool(a.uffd_ctx) != bool(b.uffd_ctx):
        return False
    if a.account != b.account:
        return False
    return a.file is None or a.linear_page_index(a.end) == b.file_pgoff


def reusable_anon_vma(old: VMA, a: VMA, b: VMA) -> int:
    """reusable_anon_vma: old's anon_vma if a and b (old one of them) are compatible and old's
    anon_vma_chain is singular (no fork child's); else 0."""
    if anon_vma_compatible(a, b) and old.anon_vma and not old.anon_vma_fork_child:
        return old.anon_vma
    return 0


def find_mergeable_anon_vma(mm: MM, vma: VMA) -> int:
    """find_mergeable_anon_vma: the next VMA's anon_vma if reusable, else the previous one's,
    else 0: so that a later mprotect can merge what an earlier one split."""
    index = mm.vmas.index(vma)
    if index + 1 < len(mm.vmas):
        anon_vma = reusable_anon_vma(mm.vmas[index + 1], vma, mm.vmas[index + 1])
        if anon_vma:
            return anon_vma
    if index > 0:
        return reusable_anon_vma(mm.vmas[index - 1], mm.vmas[index - 1], vma)
    return 0


def anon_vma_fork(machine: Machine, vma: VMA, pvma: VMA) -> None:
    """anon_vma_fork: the child's copy vma of pvma gets an anon_vma of its own (linked under
    the parent's, so it is a fork child) if pvma has one. Model: anon_vma_clone's reuse of an
    ancestor's anon_vma no VMA uses any more is not modelled (docs/model.md #122)."""
    vma.anon_vma, vma.anon_vma_fork_child = (machine.anon_vma_alloc(), True) if pvma.anon_vma else (0, False)


def anon_vma_prepare(machine: Machine, mm: MM, vma: VMA) -> None:
    """Give vma its anon_vma before its first anon folio is mapped (vmf_anon_prepare,
    __anon_vma_prepare): a neighbour's if reusable, else a new one. A read fault's zero page
    needs none, and fork copies the page tables only of a VMA that has one."""
    if not vma.anon_vma:
        vma.anon_vma = find_mergeable_anon_vma(mm, vma) or machine.anon_vma_alloc()


def folio_add_new_anon_rmap(machine: Machine, folio: int, mm: MM, vma: VMA, addr: int,
                            exclusive: bool) -> None:
    """Account the first mappings of a brand-new folio mapped whole at addr.

    Context: the folio is fresh (unmapped, not anon); addr is where its first page is mapped.
    PTE-mapped: every page gets one mapping; PMD-mappable: one entire mapping, head exclusive.
    """
    anon_vma_prepare(machine, mm, vma)
    frames = machine.frames
    check(not frames.folio_anon[folio], "folio_add_new_anon_rmap on an anon folio")
    check(frames.folio_large_mapcount[folio] == 0 and frames.page_mapcount[folio] == 0,
          "new folio already mapped")
    __folio_set_anon(machine, folio, vma, addr)
    frames.folio_swapbacked[folio] = True  # __folio_set_swapbacked: not lazyfree until MADV_FREE
    nr_pages = folio_nr_pages(machine, folio)
    check(vma.start <= addr and addr + (nr_pages << PAGE_SHIFT) <= vma.end, "new folio leaves the VMA")
    if not folio_test_large(machine, folio):
        frames.page_mapcount[folio] = 1
        if exclusive:
            SetPageAnonExclusive(machine, folio)
    elif int(frames.folio_order[folio]) < HPAGE_PMD_ORDER:
        for page in range(folio, folio + nr_pages):
            frames.page_mapcount[page] = 1
            if exclusive:
                SetPageAnonExclusive(machine, page)
        folio_set_large_mapcount(machine, folio, nr_pages, mm)
    else:
        frames.folio_entire_mapcount[folio] = 1
        folio_set_large_mapcount(machine, folio, 1, mm)
        if exclusive:
            SetPageAnonExclusive(machine, folio)


def folio_add_anon_rmap_pte(machine: Machine, folio: int, page: int, mm: MM, exclusive: bool) -> None:
    """Account one more PTE mapping of page (PMD split, folio-split remap).

    Context: the folio is already anon; an exclusive page ends up mapped exactly once.
    """
    __folio_rmap_sanity_checks(machine, folio, page, 1)
    frames = machine.frames
    check(frames.folio_anon[folio], "folio_add_anon_rmap_pte on a non-anon folio")
    frames.page_mapcount[page] += 1
    if folio_test_large(machine, folio):
        folio_add_return_large_mapcount(machine, folio, 1, mm)
    if exclusive:
        SetPageAnonExclusive(machine, page)
    check(not PageAnonExclusive(machine, page) or frames.page_mapcount[page] == 1,
          f"exclusive page {page} mapped more than once")


def folio_remove_rmap_pte(machine: Machine, folio: int, page: int, mm: MM) -> None:
    """Account one PTE mapping of page less. Context: page is mapped (mapcount >= 1)."""
    __folio_rmap_sanity_checks(machine, folio, page, 1)
    frames = machine.frames
    check(frames.page_mapcount[page] >= 1, "page %s mapcount underflow", page)
    frames.page_mapcount[page] -= 1
    if folio_test_large(machine, folio):
        folio_sub_return_large_mapcount(machine, folio, 1, mm)


def folio_remove_rmap_pmd(machine: Machine, folio: int, mm: MM) -> None:
    """Account one PMD mapping less. Context: the folio is PMD-mapped (entire mapcount >= 1)."""
    frames = machine.frames
    check(int(frames.folio_order[folio]) == HPAGE_PMD_ORDER, "PMD unmapping of a non-PMD folio")
    check(frames.folio_entire_mapcount[folio] >= 1, "folio %s entire mapcount underflow", folio)
    frames.folio_entire_mapcount[folio] -= 1
    folio_sub_return_large_mapcount(machine, folio, 1, mm)


# fork: duplicate a mapping, refusing exclusive pages of a maybe-pinned folio.

def folio_try_dup_anon_rmap_pte(machine: Machine, folio: int, page: int, dst_mm: MM, src_mm: MM) -> str:
    """Share page with the child: clear its exclusivity and account the child's mapping.

    Fails with EBUSY, changing nothing, if page is exclusive and the folio may be
    pinned by the parent (the caller then copies the page for the child).
    Context: the parent maps page (mapcount >= 1); the folio is anon.
    """
    __folio_rmap_sanity_checks(machine, folio, page, 1)
    check(machine.frames.folio_anon[folio], "dup of a non-anon folio")
    check(machine.frames.page_mapcount[page] >= 1, "dup of unmapped page %s", page)
    if PageAnonExclusive(machine, page) and folio_needs_cow_for_dma(machine, src_mm, folio):
        return EBUSY
    ClearPageAnonExclusive(machine, page)
    machine.frames.page_mapcount[page] += 1
    if folio_test_large(machine, folio):
        folio_add_return_large_mapcount(machine, folio, 1, dst_mm)
    return OK


def folio_try_dup_anon_rmap_pmd(machine: Machine, folio: int, dst_mm: MM, src_mm: MM) -> str:
    """The PMD variant: exclusivity is the head's bit only.

    Context: the parent maps the folio with a PMD (entire mapcount >= 1).
    """
    frames = machine.frames
    check(int(frames.folio_order[folio]) == HPAGE_PMD_ORDER, "PMD dup of a non-PMD folio")
    check(frames.folio_anon[folio], "dup of a non-anon folio")
    check(frames.folio_entire_mapcount[folio] >= 1, "PMD dup of folio %s not PMD-mapped", folio)
    if PageAnonExclusive(machine, folio):
        if folio_needs_cow_for_dma(machine, src_mm, folio):
            return EBUSY
        ClearPageAnonExclusive(machine, folio)
    frames.folio_entire_mapcount[folio] += 1
    folio_add_return_large_mapcount(machine, folio, 1, dst_mm)
    return OK


# try_to_unmap: an exclusive page must be marked maybe-shared before its PTE becomes swap.

def folio_try_share_anon_rmap_pte(machine: Machine, folio: int, page: int) -> str:
    """Mark one exclusive page maybe shared; EBUSY, changing nothing, if the folio may be pinned.

    Context: the caller cleared the PTE but has not removed its rmap yet (mapcount >= 1).
    """
    __folio_rmap_sanity_checks(machine, folio, page, 1)
    check(machine.frames.folio_anon[folio], "sharing a page of non-anon folio %s", folio)
    check(machine.frames.page_mapcount[page] >= 1, "sharing page %s whose rmap is gone", page)
    check(PageAnonExclusive(machine, page), "sharing non-exclusive page %s", page)
    if folio_maybe_dma_pinned(machine, folio):
        return EBUSY
    ClearPageAnonExclusive(machine, page)
    return OK


def rmap_walk_vmas(machine: Machine, folio: int) -> list[tuple[MM, VMA, int, int]]:
    """Every (mm, vma, start, end) where the folio's pages may be mapped, in walk order.

    A folio's page i can only be mapped at linear address (index + i) << PAGE_SHIFT in a
    VMA of its lineage (pgoff == start >> PAGE_SHIFT holds for every VMA).
    """
    frames = machine.frames
    first = int(frames.folio_index[folio]) << PAGE_SHIFT
    last = first + (folio_nr_pages(machine, folio) << PAGE_SHIFT)
    lineage = int(frames.folio_lineage[folio])
    walk = []
    for pid in sorted(machine.processes):
        mm = machine.processes[pid]
        for vma in mm.vmas:
            if vma.lineage == lineage and vma.start < last and vma.end > first:
                walk.append((mm, vma, max(vma.start, first), min(vma.end, last)))
    return walk
