"""Reverse mapping, as mm/rmap.c and include/linux/rmap.h: batches of PTEs at once.

A function named folios_* takes arrays describing batches of many folios at once
(folio, first page, nr_pages) and handles all of them with array operations; one
named folio_* takes one folio, as the kernel's of that name. A try_ function of one
folio returns OK or EBUSY (the kernel's 0 or -EBUSY); a folios_try_ one returns a
BusyPerBatch mask. Counts are plain (the kernel's accessor values): a slot count of 0
with MM_ID_DUMMY is a free slot.
"""

from __future__ import annotations

import numpy as np

from machine import MM, MM_ID_DUMMY, VMA, Machine, all_set, any_set, check
from machine.errors import EBUSY, OK
from machine.pgtable import HPAGE_PMD_ORDER, PAGE_SHIFT, PAGE_SIZE

from .folio import (
    ClearPageAnonExclusive,
    ClearPagesAnonExclusive,
    PageAnonExclusive,
    SetPageAnonExclusive,
    SetPagesAnonExclusive,
    folio_maybe_dma_pinned,
    folio_needs_cow_for_dma,
)
from .internal import (
    add_at,
    batches_any,
    distinct,
    pte_offsets_in_batches,
    totals_by_value,
)

BusyPerBatch = np.ndarray
"""What a folios_try_ function returns: bool per batch, True where the batch failed with
EBUSY and was left as it was (the kernel's -EBUSY), False where it succeeded (0)."""


def __folio_rmap_sanity_checks(machine: Machine, folio: int, page: int, nr_pages: int) -> None:
    """nr_pages >= 1 and [page, page + nr_pages) inside folio."""
    frames = machine.frames
    check(nr_pages >= 1, "nr_pages must be positive")
    check(frames.page_folio.item(page) == folio, "page %s is not in folio %s", page, folio)
    check(frames.page_folio.item(page + nr_pages - 1) == folio, "range leaves the folio")


def __folios_rmap_sanity_checks(machine: Machine, folio: np.ndarray, page: np.ndarray,
                                nr_pages: np.ndarray) -> None:
    """__folio_rmap_sanity_checks for each batch."""
    frames = machine.frames
    if len(folio) == 1:
        __folio_rmap_sanity_checks(machine, int(folio[0]), int(page[0]), int(nr_pages[0]))
        return
    check(all_set(nr_pages >= 1), "nr_pages must be positive")
    check(all_set(frames.page_folio[page] == folio), "batch pages not in their folios")
    check(all_set(frames.page_folio[page + nr_pages - 1] == folio), "batch leaves its folio")


def batch_pages(page: np.ndarray, nr_pages: np.ndarray) -> np.ndarray:
    """Every page of every batch, concatenated."""
    if len(page) == 1:
        return np.arange(int(page[0]), int(page[0] + nr_pages[0]), dtype=np.int64)
    return page.repeat(nr_pages) + pte_offsets_in_batches(nr_pages)


def large_folio_diffs(machine: Machine, folio: np.ndarray, nr_pages: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The large folios among the batches' and each one's total nr_pages (per-batch MM_ID
    updates of one process may be summed: SPEC §3)."""
    large = machine.frames.folio_order[folio] > 0
    if len(folio) == 1:
        return folio[large], nr_pages[large].astype(np.int64)
    return totals_by_value(folio[large], nr_pages[large])


# MM_ID: who maps a large folio (CONFIG_MM_ID), for many folios of one mm at once.

def folio_set_large_mapcount(machine: Machine, folio: int, mapcount: int, mm: MM) -> None:
    """A new large folio's mapcount, all of it in mm's slot 0."""
    frames = machine.frames
    check(frames.folio_order.item(folio) > 0, "large mapcount of small folio %s", folio)
    check(1 <= mapcount <= frames.folio_nr_pages(folio), "bad large mapcount")
    check(not any_set(frames.folio_mm_id[folio]), "new folio already has MM_ID slots")
    frames.folio_large_mapcount[folio] = mapcount
    frames.folio_mm_id_mapcount[folio, 0] = mapcount
    frames.folio_mm_id[folio, 0] = mm.mm_id


def folio_add_return_large_mapcount(machine: Machine, folio: int, diff: int, mm: MM) -> int:
    """Add diff mappings by mm to one large folio; claim a slot or mark it maybe mapped shared."""
    frames = machine.frames
    check(frames.folio_order.item(folio) > 0, "large mapcount of small folio %s", folio)
    check(1 <= diff <= frames.folio_nr_pages(folio), "bad large mapcount diff")
    new_mapcount = frames.folio_large_mapcount.item(folio) + diff
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
        if new_mapcount != diff:
            frames.folio_mm_ids_shared[folio] = True
    elif mm_ids[1] == MM_ID_DUMMY:
        mm_ids[1] = mm.mm_id
        mapcounts[1] = diff
        frames.folio_mm_ids_shared[folio] = True
    return new_mapcount


def folio_sub_return_large_mapcount(machine: Machine, folio: int, diff: int, mm: MM) -> int:
    """Remove diff mappings by mm from one large folio; clear "maybe mapped shared" once
    one slot owns every mapping."""
    frames = machine.frames
    check(frames.folio_order.item(folio) > 0, "large mapcount of small folio %s", folio)
    check(1 <= diff <= frames.folio_nr_pages(folio), "bad large mapcount diff")
    new_mapcount = frames.folio_large_mapcount.item(folio) - diff
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


def folios_add_large_mapcount(machine: Machine, folios: np.ndarray, diffs: np.ndarray, mm: MM) -> None:
    """folio_add_large_mapcount (folio_add_return_large_mapcount, result unused) for many
    distinct large folios at once."""
    if len(folios) == 1:
        folio_add_return_large_mapcount(machine, int(folios[0]), int(diffs[0]), mm)
        return
    frames = machine.frames
    check(len(distinct(folios)) == len(folios), "MM_ID update names a folio twice")
    check(all_set(frames.folio_order[folios] > 0), "large mapcount of small folios")
    check(all_set(diffs >= 1) and all_set(diffs <= 1 << frames.folio_order[folios].astype(np.int64)),
          "bad large mapcount diff")
    new_mapcount = frames.folio_large_mapcount[folios] + diffs
    frames.folio_large_mapcount[folios] = new_mapcount
    mm_ids = frames.folio_mm_id[folios]
    mapcounts = frames.folio_mm_id_mapcount[folios]
    in_slot0 = mm_ids[:, 0] == mm.mm_id
    in_slot1 = ~in_slot0 & (mm_ids[:, 1] == mm.mm_id)
    take_slot0 = ~in_slot0 & ~in_slot1 & (mm_ids[:, 0] == MM_ID_DUMMY)
    take_slot1 = ~in_slot0 & ~in_slot1 & ~take_slot0 & (mm_ids[:, 1] == MM_ID_DUMMY)
    mapcounts[:, 0] += np.where(in_slot0, diffs, 0)
    mapcounts[:, 1] += np.where(in_slot1, diffs, 0)
    mm_ids[take_slot0, 0] = mm.mm_id
    mapcounts[take_slot0, 0] = diffs[take_slot0]
    mm_ids[take_slot1, 1] = mm.mm_id
    mapcounts[take_slot1, 1] = diffs[take_slot1]
    frames.folio_mm_id[folios] = mm_ids
    frames.folio_mm_id_mapcount[folios] = mapcounts
    # Slot 0 taken with other mappings already there, or slot 1 taken at all: maybe shared.
    frames.folio_mm_ids_shared[folios[(take_slot0 & (new_mapcount != diffs)) | take_slot1]] = True


def folios_sub_large_mapcount(machine: Machine, folios: np.ndarray, diffs: np.ndarray, mm: MM) -> None:
    """folio_sub_large_mapcount (folio_sub_return_large_mapcount, result unused) for many
    distinct large folios at once."""
    if len(folios) == 1:
        folio_sub_return_large_mapcount(machine, int(folios[0]), int(diffs[0]), mm)
        return
    frames = machine.frames
    check(len(distinct(folios)) == len(folios), "MM_ID update names a folio twice")
    check(all_set(frames.folio_order[folios] > 0), "large mapcount of small folios")
    check(all_set(diffs >= 1) and all_set(diffs <= 1 << frames.folio_order[folios].astype(np.int64)),
          "bad large mapcount diff")
    new_mapcount = frames.folio_large_mapcount[folios] - diffs
    check(all_set(new_mapcount >= 0), "large mapcount underflow")
    frames.folio_large_mapcount[folios] = new_mapcount
    mm_ids = frames.folio_mm_id[folios]
    mapcounts = frames.folio_mm_id_mapcount[folios]
    in_slot0 = mm_ids[:, 0] == mm.mm_id
    in_slot1 = ~in_slot0 & (mm_ids[:, 1] == mm.mm_id)
    mapcounts[:, 0] -= np.where(in_slot0, diffs, 0)
    mapcounts[:, 1] -= np.where(in_slot1, diffs, 0)
    still_mapped = (in_slot0 & (mapcounts[:, 0] >= 1)) | (in_slot1 & (mapcounts[:, 1] >= 1))
    for slot, owned in ((0, in_slot0), (1, in_slot1)):
        emptied = owned & (mapcounts[:, slot] < 1)
        mapcounts[emptied, slot] = 0
        mm_ids[emptied, slot] = MM_ID_DUMMY
    frames.folio_mm_id[folios] = mm_ids
    frames.folio_mm_id_mapcount[folios] = mapcounts
    one_owner = (mapcounts[:, 0] == new_mapcount) | (mapcounts[:, 1] == new_mapcount)
    frames.folio_mm_ids_shared[folios[~still_mapped & one_owner]] = False


# Adding mappings.

def __folio_set_anon(machine: Machine, folio: int, vma: VMA, addr: int) -> None:
    """Make a new folio anon in vma's lineage with index = linear page index of addr."""
    frames = machine.frames
    frames.folio_anon[folio] = True
    frames.folio_index[folio] = vma.pgoff + ((addr - vma.start) >> PAGE_SHIFT)
    frames.folio_lineage[folio] = vma.lineage


def __folios_set_anon(machine: Machine, folios: np.ndarray, vma: VMA, addrs: np.ndarray) -> None:
    """__folio_set_anon for many new folios at once, each at its addr."""
    frames = machine.frames
    frames.folio_anon[folios] = True
    frames.folio_index[folios] = vma.pgoff + ((addrs - vma.start) >> PAGE_SHIFT)
    frames.folio_lineage[folios] = vma.lineage


def anon_vma_compatible(a: VMA, b: VMA) -> bool:
    """anon_vma_compatible: adjacent, the same file (or none) at consecutive offsets, flags
    equal but for the access flags (VM_UFFD_WP and VM_ACCOUNT count; VM_WRITE does not)."""
    return (a.end == b.start and a.file == b.file and a.shared == b.shared
            and (a.uffd_ctx != 0) == (b.uffd_ctx != 0) and a.account == b.account
            and (a.file is None or a.linear_page_index(b.start) == b.file_pgoff))


def reusable_anon_vma(old: VMA, a: VMA, b: VMA) -> int:
    """reusable_anon_vma: old's anon_vma when a and b are compatible and old's chain is
    singular (old is no fork child); 0 otherwise."""
    return old.anon_vma if anon_vma_compatible(a, b) and not old.anon_vma_fork_child else 0


def find_mergeable_anon_vma(mm: MM, vma: VMA) -> int:
    """find_mergeable_anon_vma: the next VMA's reusable anon_vma, else the previous one's, else 0."""
    after = mm.find_vma(vma.end)
    anon_vma = reusable_anon_vma(after, vma, after) if after is not None else 0
    if anon_vma:
        return anon_vma
    before = mm.find_vma(vma.start - PAGE_SIZE) if vma.start else None
    return reusable_anon_vma(before, before, vma) if before is not None else 0


def anon_vma_fork(machine: Machine, vma: VMA, pvma: VMA) -> None:
    """anon_vma_fork: vma, the child's copy of pvma, gets its own anon_vma chained under the
    parent's (a fork child) when pvma has one; anon_vma_clone's reuse of an unused ancestor
    anon_vma is not modelled (docs/model.md #122)."""
    if pvma.anon_vma:
        vma.anon_vma = machine.anon_vma_alloc()
        vma.anon_vma_fork_child = True
    else:
        vma.anon_vma, vma.anon_vma_fork_child = 0, False


def anon_vma_prepare(machine: Machine, mm: MM, vma: VMA) -> None:
    """Give vma its anon_vma before its first anon folio is mapped (vmf_anon_prepare,
    __anon_vma_prepare): a neighbour's reusable one (find_mergeable_anon_vma) or a new one.
    A read fault's zero page needs none; fork copies page tables only of a VMA that has one."""
    if not vma.anon_vma:
        vma.anon_vma = find_mergeable_anon_vma(mm, vma) or machine.anon_vma_alloc()


def folio_add_new_anon_rmap(machine: Machine, folio: int, mm: MM, vma: VMA, addr: int,
                            exclusive: bool) -> None:
    """Account the first mappings of a brand-new folio mapped whole at addr.

    PTE-mapped: every page one mapping (exclusive if exclusive); PMD-mappable: one entire
    mapping (head exclusive if exclusive). Context: the folio is fresh (unmapped, not anon).
    """
    anon_vma_prepare(machine, mm, vma)
    frames = machine.frames
    check(not frames.folio_anon.item(folio), "folio_add_new_anon_rmap on an anon folio")
    check(frames.folio_large_mapcount.item(folio) == 0 and frames.page_mapcount.item(folio) == 0,
          "new folio already mapped")
    __folio_set_anon(machine, folio, vma, addr)
    frames.folio_swapbacked[folio] = True  # __folio_set_swapbacked: not lazyfree until MADV_FREE
    order = frames.folio_order.item(folio)
    nr_pages = 1 << order
    check(vma.start <= addr and addr + (nr_pages << PAGE_SHIFT) <= vma.end, "new folio leaves the VMA")
    if order == HPAGE_PMD_ORDER:
        frames.folio_entire_mapcount[folio] = 1
        folio_set_large_mapcount(machine, folio, 1, mm)
        if exclusive:
            SetPageAnonExclusive(machine, folio)
        return
    if order == 0:  # plain element stores: a one-element slice store costs several times more
        frames.page_mapcount[folio] = 1
        if exclusive:
            SetPageAnonExclusive(machine, folio)
        return
    frames.page_mapcount[folio:folio + nr_pages] = 1
    if exclusive:
        SetPagesAnonExclusive(machine, slice(folio, folio + nr_pages))
    folio_set_large_mapcount(machine, folio, nr_pages, mm)


def folios_add_new_anon_rmap_order0(machine: Machine, folios: np.ndarray, mm: MM, vma: VMA,
                                    addrs: np.ndarray) -> None:
    """folio_add_new_anon_rmap for many fresh order-0 folios (fork's copies), exclusive."""
    anon_vma_prepare(machine, mm, vma)
    frames = machine.frames
    check(not any_set(frames.folio_anon[folios]), "folio_add_new_anon_rmap on an anon folio")
    check(not any_set(frames.folio_order[folios]), "order-0 folios expected")
    check(not any_set(frames.page_mapcount[folios]), "new folio already mapped")
    check(all_set(addrs >= vma.start) and all_set(addrs < vma.end), "new folios leave the VMA")
    __folios_set_anon(machine, folios, vma, addrs)
    frames.folio_swapbacked[folios] = True
    frames.page_mapcount[folios] = 1
    SetPagesAnonExclusive(machine, folios)


def folios_add_anon_rmap_ptes(machine: Machine, folio: np.ndarray, page: np.ndarray, nr_pages: np.ndarray,
                              mm: MM, exclusive: np.ndarray) -> None:
    """Account one more PTE mapping of every page of each batch (PMD split, split remap);
    exclusive[i] sets PageAnonExclusive on all of batch i's pages.

    Context: the folios are anon; an exclusive page ends up mapped exactly once.
    """
    __folios_rmap_sanity_checks(machine, folio, page, nr_pages)
    frames = machine.frames
    check(all_set(frames.folio_anon[folio]), "folios_add_anon_rmap_ptes on a non-anon folio")
    pages = batch_pages(page, nr_pages)
    add_at(frames.page_mapcount, pages, 1)
    folios, diffs = large_folio_diffs(machine, folio, nr_pages)
    if len(folios):
        folios_add_large_mapcount(machine, folios, diffs, mm)
    exclusive_pages = pages[exclusive.repeat(nr_pages)]
    SetPagesAnonExclusive(machine, exclusive_pages)
    check(all_set(frames.page_mapcount[exclusive_pages] == 1), "exclusive page mapped more than once")


def folios_remove_rmap_ptes(machine: Machine, folio: np.ndarray, page: np.ndarray, nr_pages: np.ndarray,
                            mm: MM) -> None:
    """Account one PTE mapping less of every page of each batch. Context: they are mapped."""
    __folios_rmap_sanity_checks(machine, folio, page, nr_pages)
    frames = machine.frames
    pages = batch_pages(page, nr_pages)
    check(all_set(frames.page_mapcount[pages] >= 1), "page mapcount underflow")
    add_at(frames.page_mapcount, pages, -1)
    folios, diffs = large_folio_diffs(machine, folio, nr_pages)
    if len(folios):
        folios_sub_large_mapcount(machine, folios, diffs, mm)


def folio_remove_rmap_pte(machine: Machine, folio: int, page: int, mm: MM) -> None:
    """Account one PTE mapping of page less (COW's unmap of the old page).

    Context: page is mapped (mapcount >= 1).
    """
    __folio_rmap_sanity_checks(machine, folio, page, 1)
    frames = machine.frames
    check(frames.page_mapcount[page] >= 1, "page %s mapcount underflow", page)
    frames.page_mapcount[page] -= 1
    if frames.folio_order[folio] > 0:
        folio_sub_return_large_mapcount(machine, folio, 1, mm)


def folio_remove_rmap_pmd(machine: Machine, folio: int, mm: MM) -> None:
    """Account one PMD mapping less. Context: the folio is PMD-mapped (entire mapcount >= 1)."""
    frames = machine.frames
    check(frames.folio_order.item(folio) == HPAGE_PMD_ORDER, "PMD unmapping of a non-PMD folio")
    check(frames.folio_entire_mapcount[folio] >= 1, "folio %s entire mapcount underflow", folio)
    frames.folio_entire_mapcount[folio] -= 1
    folio_sub_return_large_mapcount(machine, folio, 1, mm)


# fork: duplicate mappings, refusing exclusive pages of a maybe-pinned folio.

def folios_try_dup_anon_rmap_ptes(machine: Machine, folio: np.ndarray, page: np.ndarray, nr_pages: np.ndarray,
                                  dst_mm: MM, src_mm: MM) -> BusyPerBatch:
    """folio_try_dup_anon_rmap_ptes for each batch: share it with the child, clearing its
    pages' exclusivity and accounting the child's mappings. A batch fails as a whole with
    EBUSY, changing nothing, when its folio may be pinned and any of its pages is exclusive
    (the caller falls back page by page).

    Context: the parent maps every page of the batches; the folios are anon.
    """
    __folios_rmap_sanity_checks(machine, folio, page, nr_pages)
    frames = machine.frames
    check(all_set(frames.folio_anon[folio]), "dup of a non-anon folio")
    pages = batch_pages(page, nr_pages)
    check(all_set(frames.page_mapcount[pages] >= 1), "dup of an unmapped page")
    any_exclusive = batches_any(frames.page_anon_exclusive[pages], nr_pages)
    busy = any_exclusive & folio_needs_cow_for_dma(machine, src_mm, folio)
    shared_pages = pages[(~busy).repeat(nr_pages)]
    ClearPagesAnonExclusive(machine, shared_pages)
    add_at(frames.page_mapcount, shared_pages, 1)
    folios, diffs = large_folio_diffs(machine, folio[~busy], nr_pages[~busy])
    if len(folios):
        folios_add_large_mapcount(machine, folios, diffs, dst_mm)
    return busy


def folio_try_dup_anon_rmap_pmd(machine: Machine, folio: int, dst_mm: MM, src_mm: MM) -> str:
    """The PMD variant: exclusivity is the head's bit only. EBUSY, changing nothing,
    when the head is exclusive and the folio may be pinned; else OK.

    Context: the parent maps the folio with a PMD (entire mapcount >= 1).
    """
    frames = machine.frames
    check(frames.folio_order.item(folio) == HPAGE_PMD_ORDER, "PMD dup of a non-PMD folio")
    check(frames.folio_anon.item(folio), "dup of a non-anon folio")
    check(frames.folio_entire_mapcount[folio] >= 1, "PMD dup of folio %s not PMD-mapped", folio)
    if PageAnonExclusive(machine, folio):
        if folio_needs_cow_for_dma(machine, src_mm, folio):
            return EBUSY
        ClearPageAnonExclusive(machine, folio)
    frames.folio_entire_mapcount[folio] += 1
    folio_add_return_large_mapcount(machine, folio, 1, dst_mm)
    return OK


# try_to_unmap: exclusive pages must be marked maybe shared before their PTEs become swap.

def folio_try_share_anon_rmap_pte(machine: Machine, folio: int, page: int) -> str:
    """Mark one exclusive page maybe shared; EBUSY, changing nothing, if the folio may be
    pinned, else OK.

    Context: the caller cleared the PTE but has not removed its rmap yet (mapcount >= 1).
    """
    __folio_rmap_sanity_checks(machine, folio, page, 1)
    frames = machine.frames
    check(frames.folio_anon.item(folio), "sharing a page of non-anon folio %s", folio)
    check(frames.page_mapcount.item(page) >= 1, "sharing page %s whose rmap is gone", page)
    check(PageAnonExclusive(machine, page), "sharing non-exclusive page %s", page)
    if folio_maybe_dma_pinned(machine, folio):
        return EBUSY
    ClearPageAnonExclusive(machine, page)
    return OK


def folios_try_share_anon_rmap_ptes(machine: Machine, folio: np.ndarray, page: np.ndarray,
                                    nr_pages: np.ndarray) -> BusyPerBatch:
    """folio_try_share_anon_rmap_ptes for each batch: mark its exclusive pages maybe
    shared, with one pin check per batch. A batch whose folio may be pinned fails with
    EBUSY and is left as it was.

    Context: the caller cleared the PTEs but has not removed their rmap yet.
    """
    __folios_rmap_sanity_checks(machine, folio, page, nr_pages)
    frames = machine.frames
    check(all_set(frames.folio_anon[folio]), "sharing pages of a non-anon folio")
    pages = batch_pages(page, nr_pages)
    check(all_set(frames.page_mapcount[pages] >= 1), "sharing pages whose rmap is gone")
    check(all_set(frames.page_anon_exclusive[pages]), "sharing non-exclusive pages")
    busy = folio_maybe_dma_pinned(machine, folio)
    ClearPagesAnonExclusive(machine, pages[(~busy).repeat(nr_pages)])
    return busy


def rmap_walk_vmas(machine: Machine, folio: int) -> list[tuple[MM, VMA, int, int]]:
    """Every (mm, vma, start, end) where the folio's pages may be mapped, in walk order:
    ascending process, then VMA (page i maps only at linear address index + i)."""
    frames = machine.frames
    first = frames.folio_index.item(folio) << PAGE_SHIFT
    last = first + (machine.frames.folio_nr_pages(folio) << PAGE_SHIFT)
    lineage = frames.folio_lineage.item(folio)
    return [(mm, vma, max(vma.start, first), min(vma.end, last))
            for pid, mm in sorted(machine.processes.items())
            for vma in mm.vmas_intersecting(first, last)
            if vma.lineage == lineage]
