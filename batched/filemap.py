"""File-backed memory, batched: the page cache (mm/filemap.c, mm/shmem.c), file faults
(finish_fault maps a whole folio with one set_ptes), file rmap of whole batches
(folio_add_file_rmap_ptes, folio_dup_file_rmap_ptes, folio_remove_rmap_ptes), writeback
(folio_mkclean) and try_to_unmap_one over file folios a folio_unmap_pte_batch at a time.
"""

from __future__ import annotations

import numpy as np

from machine import MM, VMA, Machine, PteRuns, any_set, check
from machine.errors import EBADF, EBUSY, EEXIST, ENOMEM, OK, SIGBUS
from machine.files import File
from machine.pgtable import (
    PAGE_SHIFT,
    PMD_SIZE,
    PTE_MARKER_UFFD_WP,
    PTRS_PER_TABLE,
    make_pte_marker,
    pfn_pte,
    pte_clear_uffd_wp,
    pte_dirty,
    pte_mkclean,
    pte_mkdirty,
    pte_mkold,
    pte_mkuffd_wp,
    pte_mkwrite,
    pte_mkyoung,
    pte_pfn,
    pte_present,
    pte_swp_uffd_wp,
    pte_uffd_wp,
    pte_write,
    pte_wrprotect,
    vm_get_page_prot,
    vm_get_page_prot_shared,
)

from .folio import folio_put, folios_put_refs, folios_ref_add
from .internal import FPB_UNMAP, PteBatches, add_at, batches_any, folio_pte_batch, set_pte_each
from .rmap import (
    batch_pages,
    folio_add_new_anon_rmap,
    folio_add_return_large_mapcount,
    folio_remove_rmap_pte,
    folios_add_large_mapcount,
    folios_remove_rmap_ptes,
    large_folio_diffs,
)

MAX_PAGECACHE_ORDER = 8  # (model) page-cache folios are PTE-mapped: no do_set_pmd


def file_of_vma(machine: Machine, vma: VMA) -> File:
    check(vma.file is not None and vma.file in machine.files, "VMA %#x maps no file", vma.start)
    return machine.files[vma.file]


def vma_needs_dirty_tracking(machine: Machine, vma: VMA) -> bool:
    """A shared regular-file mapping: page_mkwrite and writeback; shmem has neither."""
    return vma.file is not None and vma.shared and not file_of_vma(machine, vma).shmem


def vma_wants_writenotify(machine: Machine, vma: VMA) -> bool:
    """A shared mapping write-protecting clean pages: a regular file's, or one registered for
    uffd-wp (userfaultfd_set_vm_flags recomputes vm_page_prot)."""
    return vma.shared and (vma_needs_dirty_tracking(machine, vma) or vma.uffd_wp)


def vma_page_prot(machine: Machine, vma: VMA) -> int:
    """vm_page_prot: PAGE_SHARED for a rw shared VMA without write-notify, else the private one."""
    if vma.file is not None and vma.shared and not vma_wants_writenotify(machine, vma):
        return vm_get_page_prot_shared(vma.writable)
    return vm_get_page_prot(vma.writable)


def file_create(machine: Machine, file_id: int, length: int, shmem: bool) -> str:
    """open(O_CREAT | O_EXCL) and ftruncate: an empty file that reads zero."""
    if file_id in machine.files:
        return EEXIST
    machine.files[file_id] = File(file_id, length >> PAGE_SHIFT, shmem)
    return OK


def filemap_add_folio(machine: Machine, file: File, folio: int, index: int) -> None:
    """A fresh folio into the page cache: nr_pages references, mapping and index set."""
    frames = machine.frames
    nr_pages = frames.folio_nr_pages(folio)
    file.cache_add(index, folio, nr_pages)
    frames.folio_mapping[folio] = file.file_id + 1
    frames.folio_index[folio] = index
    frames.folio_swapbacked[folio] = file.shmem
    frames.folio_refcount[folio] += nr_pages - 1


def filemap_get_folio(machine: Machine, file: File, index: int, order: int) -> int | None:
    """The page-cache folio at index: found, swapped in (shmem, order 0, dirty) or made of the
    largest order K..0 (never 1) whose aligned range is inside the file and empty in the cache."""
    check(index < file.nr_pages, "page-cache lookup past the end of F%s", file.file_id)
    frames = machine.frames
    folio = file.cache.get(index)
    if folio is not None:
        return folio
    if index in file.swap:  # shmem_swapin_folio
        folio = frames.folio_alloc(0)
        if folio is None:
            return None
        slot = file.swap.pop(index)
        frames.page_data[folio] = machine.swap.swap_data[slot]
        machine.swap.swap_count[slot] -= 1
        machine.swap.swap_free_slot(slot)
        filemap_add_folio(machine, file, folio, index)
        frames.folio_dirty[folio] = True
        return folio
    filled = np.array(sorted(file.cache.keys() | file.swap.keys()), np.int64)
    for candidate in (k for k in range(min(order, MAX_PAGECACHE_ORDER), -1, -1) if k != 1):
        nr_pages = 1 << candidate
        first = index & ~(nr_pages - 1)
        if first + nr_pages > file.nr_pages or any_set((filled >= first) & (filled < first + nr_pages)):
            continue
        folio = frames.folio_alloc(candidate)
        if folio is None:
            continue
        if file.shmem:
            frames.page_data[folio:folio + nr_pages] = 0
        else:
            frames.page_data[folio:folio + nr_pages] = [file.disk.get(first + i, 0) for i in range(nr_pages)]
        filemap_add_folio(machine, file, folio, first)
        return folio
    return None


# File rmap of whole batches.

def folio_add_file_rmap_ptes(machine: Machine, folio: int, page: int, nr_pages: int, mm: MM) -> None:
    """nr_pages PTE mappings of consecutive pages of a page-cache folio from page."""
    frames = machine.frames
    check(nr_pages >= 1, "nr_pages must be positive")
    check(frames.page_folio.item(page) == folio and frames.page_folio.item(page + nr_pages - 1) == folio
          and frames.folio_mapping.item(folio) != 0, "file rmap outside page-cache folio %s", folio)
    frames.page_mapcount[page:page + nr_pages] += 1
    if frames.folio_order.item(folio):
        folio_add_return_large_mapcount(machine, folio, nr_pages, mm)


def folios_dup_file_rmap_ptes(machine: Machine, folio: np.ndarray, page: np.ndarray, nr_pages: np.ndarray,
                              dst_mm: MM) -> None:
    """folio_dup_file_rmap_ptes for every batch: the child's mappings of each batch's pages."""
    frames = machine.frames
    pages = batch_pages(page, nr_pages)
    check(all(frames.page_mapcount[pages] >= 1), "dup of unmapped pages")
    add_at(frames.page_mapcount, pages, 1)
    folios, diffs = large_folio_diffs(machine, folio, nr_pages)
    if len(folios):
        folios_add_large_mapcount(machine, folios, diffs, dst_mm)


# Faults (fault-around off: (model) fault_around_bytes = PAGE_SIZE).

def file_fault_index(machine: Machine, vma: VMA, addr: int) -> int | None:
    index = vma.linear_page_index(addr)
    return index if index < file_of_vma(machine, vma).nr_pages else None


def finish_fault(machine: Machine, mm: MM, vma: VMA, addr: int, folio: int, write: bool,
                 uffd_wp: bool = False) -> None:
    """Map the faulting page, or the whole folio with one set_ptes when it lies in the VMA and
    the PTE table over none entries and the VMA is not registered with userfaultfd; young,
    and dirty and writable on a write fault; with a marker's uffd-wp bit (write-protected)."""
    frames = machine.frames
    page = folio + vma.linear_page_index(addr) - frames.folio_index.item(folio)
    nr_pages = frames.folio_nr_pages(folio)
    idx = page - folio
    vma_off = (addr - vma.start) >> PAGE_SHIFT
    pte_off = (addr >> PAGE_SHIFT) % PTRS_PER_TABLE
    start = addr - (idx << PAGE_SHIFT)
    whole = (nr_pages > 1 and not vma.uffd_wp
             and vma_off >= idx and vma_off + nr_pages - idx <= (vma.end - vma.start) >> PAGE_SHIFT
             and pte_off >= idx and pte_off + nr_pages - idx <= PTRS_PER_TABLE
             and machine.ptes_none(mm, start, nr_pages))
    if not whole:
        nr_pages, start, page = 1, addr, page
    else:
        page = folio
    entry = pte_mkyoung(pfn_pte(page, vma_page_prot(machine, vma)))
    if write:
        entry = pte_mkdirty(entry)
        if vma.writable:
            entry = pte_mkwrite(entry)
    elif pte_write(entry) and frames.folio_dirty.item(folio):
        entry = pte_mkdirty(entry)
    if uffd_wp:  # vmf_orig_pte_uffd_wp
        entry = pte_mkuffd_wp(entry)
    frames.folio_refcount[folio] += nr_pages  # the fault's reference and nr_pages - 1 more
    folio_add_file_rmap_ptes(machine, folio, page, nr_pages, mm)
    machine.set_ptes(mm, start, entry, nr_pages)
    mm.rss_file += nr_pages


def do_read_fault(machine: Machine, mm: MM, vma: VMA, addr: int, order: int = 0, uffd_wp: bool = False) -> str:
    """A read fault on a none entry (or a uffd-wp marker: uffd_wp) of a file VMA."""
    index = file_fault_index(machine, vma, addr)
    if index is None:
        return SIGBUS
    folio = filemap_get_folio(machine, file_of_vma(machine, vma), index, order)
    if folio is None:
        return ENOMEM
    finish_fault(machine, mm, vma, addr, folio, write=False, uffd_wp=uffd_wp)
    return OK


def do_file_write_fault(machine: Machine, mm: MM, vma: VMA, addr: int, order: int, uffd_wp: bool = False) -> str:
    """A write fault on a none entry (or a uffd-wp marker: uffd_wp, the new entry then
    write-protected with the bit) of a file VMA: do_shared_fault (the cache's folio mapped
    dirty and writable, PG_dirty set) or do_cow_fault (an exclusive anon copy of the page)."""
    index = file_fault_index(machine, vma, addr)
    if index is None:
        return SIGBUS
    frames = machine.frames
    file = file_of_vma(machine, vma)
    if vma.shared:
        folio = filemap_get_folio(machine, file, index, order)
        if folio is None:
            return ENOMEM
        finish_fault(machine, mm, vma, addr, folio, write=True, uffd_wp=uffd_wp)
        frames.folio_dirty[folio] = True  # fault_dirty_shared_page
        return OK
    new_folio = frames.folio_alloc(0)  # do_cow_fault: folio_prealloc before __do_fault
    if new_folio is None:
        return ENOMEM
    folio = filemap_get_folio(machine, file, index, order)
    if folio is None:
        folio_put(machine, new_folio)
        return ENOMEM
    frames.page_data[new_folio] = frames.page_data[folio + index - frames.folio_index.item(folio)]
    folio_add_new_anon_rmap(machine, new_folio, mm, vma, addr, exclusive=True)
    entry = pte_mkdirty(pfn_pte(new_folio, vm_get_page_prot(vma.writable)))
    if vma.writable:
        entry = pte_mkwrite(entry)
    machine.set_pte_at(mm, addr, pte_mkuffd_wp(entry) if uffd_wp else entry)
    mm.rss_anon += 1
    return OK


def wp_page_shared(machine: Machine, mm: MM, vma: VMA, addr: int, pte: int) -> str:
    """A write fault on a read-only entry of a shared file VMA: reuse, and the folio dirty."""
    folio = machine.frames.page_folio.item(int(pte_pfn(pte)))
    machine.ptep_set_access_flags(mm, addr, pte_mkwrite(pte_mkdirty(pte_mkyoung(pte))))   # wp_page_reuse
    machine.frames.folio_dirty[folio] = True
    return OK


# zap, fork and try_to_unmap of page-cache batches.

def zap_present_file_ptes(machine: Machine, mm: MM, batches: PteBatches) -> np.ndarray:
    """zap_present_folio_ptes for page-cache batches: get_and_clear_full_ptes gathers each
    batch's dirty bit, which marks its folio dirty; rmap, references and MM_FILEPAGES.
    Returns each batch's gathered entry."""
    if len(batches) == 0:
        return np.zeros(0, np.uint64)
    ptes = machine.get_and_clear_full_ptes_runs(mm, batches.runs)
    machine.frames.folio_dirty[batches.folio[pte_dirty(ptes)]] = True
    mm.rss_file -= int(batches.nr_pages.sum())
    folios_remove_rmap_ptes(machine, batches.folio, batches.page, batches.nr_pages, mm)
    folios_put_refs(machine, batches.folio, batches.nr_pages)
    return ptes


def install_uffd_wp_ptes_if_needed(machine: Machine, mm: MM, vma: VMA, runs: PteRuns, ptevals: np.ndarray) -> None:
    """pte_install_uffd_wp_if_needed for whole batches (zap_install_uffd_wp_if_needed, the
    series' install_uffd_wp_ptes_if_needed): in a file VMA registered for uffd-wp, every entry
    of each batch whose value (present or swap: one vouches for its batch, as folio_pte_batch
    and swap_pte_batch never span a change of the bit) was protected gets a marker, with
    set_pte_at in a loop (set_ptes cannot write non-present entries).

    Context: the batches' entries were cleared.
    """
    if vma.file is None or not vma.uffd_wp or len(runs.index) == 0:
        return  # vma_is_anonymous(vma) || !userfaultfd_wp(vma)
    ptevals = np.asarray(ptevals, np.uint64)
    protected = np.where(pte_present(ptevals), pte_uffd_wp(ptevals), pte_swp_uffd_wp(ptevals)).astype(bool)
    if not any_set(protected):
        return
    entries = PteRuns(runs.addr, runs.index[protected], runs.nr_pages[protected]).entry_indices().astype(np.int64)
    check(not any_set(machine.ptes_get(mm, runs.addr, PTRS_PER_TABLE)[entries]), "uffd-wp marker over a live entry")
    machine.set_ptes_runs(mm, PteRuns(runs.addr, entries, np.ones(len(entries), np.int64)),
                          np.full(len(entries), make_pte_marker(PTE_MARKER_UFFD_WP), np.uint64))


def copy_present_file_ptes(machine: Machine, dst_mm: MM, dst_vma: VMA, src_mm: MM, batches: PteBatches) -> None:
    """fork's copy of page-cache batches: references, folio_dup_file_rmap_ptes, and the child's
    entries old (write-protected in both if writable: a COW mapping), without the uffd-wp bit
    unless the child's VMA is registered (__copy_present_ptes)."""
    if len(batches) == 0:
        return
    folios_ref_add(machine, batches.folio, batches.nr_pages)
    folios_dup_file_rmap_ptes(machine, batches.folio, batches.page, batches.nr_pages, dst_mm)
    dst_mm.rss_file += int(batches.nr_pages.sum())
    writable = pte_write(batches.pte)
    if any_set(writable):
        machine.wrprotect_ptes_runs(src_mm, batches.select(writable).runs)
    child = np.where(writable, pte_wrprotect(batches.pte), batches.pte)
    if not dst_vma.uffd_wp:  # userfaultfd_wp(dst_vma)
        child = pte_clear_uffd_wp(child)
    machine.set_ptes_runs(dst_mm, batches.runs, pte_mkold(child))


def rmap_walk_file(machine: Machine, folio: int) -> list[tuple[MM, VMA, int, int]]:
    """(mm, vma, start, end) of every VMA mapping the folio's file indices, in walk order."""
    frames = machine.frames
    file_id = frames.folio_mapping.item(folio) - 1
    first = frames.folio_index.item(folio)
    last = first + frames.folio_nr_pages(folio)
    walk = []
    for pid in sorted(machine.processes):
        mm = machine.processes[pid]
        for vma in mm.vmas:
            if vma.file != file_id:
                continue
            vma_last = vma.linear_page_index(vma.end)
            if vma.file_pgoff < last and vma_last > first:
                walk.append((mm, vma, vma.start + ((max(first, vma.file_pgoff) - vma.file_pgoff) << PAGE_SHIFT),
                             vma.start + ((min(last, vma_last) - vma.file_pgoff) << PAGE_SHIFT)))
    return walk


def pmd_pieces(start: int, end: int) -> list[tuple[int, int]]:
    """[start, end) cut at PMD boundaries: a page-cache folio's range in a VMA need not lie in
    one PTE table (its file index, not its address, is aligned), page_vma_mapped_walk's
    steps are one table each."""
    pieces = []
    while start < end:
        next_start = min(end, (start | (PMD_SIZE - 1)) + 1)
        pieces.append((start, next_start))
        start = next_start
    return pieces


def folio_file_ptes(machine: Machine, mm: MM, folio: int, start: int, end: int) -> tuple[np.ndarray, np.ndarray]:
    """The PTEs of [start, end) and which of them map folio (present)."""
    ptes = machine.ptes_get(mm, start, (end - start) >> PAGE_SHIFT)
    pfns = pte_pfn(ptes).astype(np.int64)
    return ptes, pte_present(ptes) & (pfns >= folio) & (pfns < folio + machine.frames.folio_nr_pages(folio))


def try_to_unmap_one_file(machine: Machine, folio: int, mm: MM, vma: VMA, start: int, end: int) -> None:
    """try_to_unmap_one for a page-cache folio in [start, end) of one VMA and PTE table: each
    folio_unmap_pte_batch batch (FPB_RESPECT_WRITE; the uffd-wp bit always respected, so a
    batch stops where it changes) cleared by get_and_clear_ptes, a gathered dirty bit marking
    the folio dirty; rmap, references and MM_FILEPAGES; then, in a VMA registered for uffd-wp,
    a marker on every entry of a protected batch (the series batches uffd-wp VMAs too)."""
    ptes, of_folio = folio_file_ptes(machine, mm, folio, start, end)
    if not any_set(of_folio):
        return
    batches = folio_pte_batch(machine, mm, start, ptes, FPB_UNMAP, candidate=of_folio)
    ptevals = zap_present_file_ptes(machine, mm, batches)
    install_uffd_wp_ptes_if_needed(machine, mm, vma, batches.runs, ptevals)


def try_to_unmap_file(machine: Machine, folio: int) -> str:
    """try_to_unmap of a page-cache folio: every mapping cleared; the cache keeps it."""
    for mm, vma, start, end in rmap_walk_file(machine, folio):
        for piece_start, piece_end in pmd_pieces(start, end):
            try_to_unmap_one_file(machine, folio, mm, vma, piece_start, piece_end)
    return OK


def folio_mkclean(machine: Machine, folio: int) -> bool:
    """Write-protect and clean the folio's entries in shared VMAs; whether one was dirty."""
    dirty = False
    for mm, vma, start, end in rmap_walk_file(machine, folio):
        if not vma.shared:
            continue
        for piece_start, piece_end in pmd_pieces(start, end):
            ptes, of_folio = folio_file_ptes(machine, mm, folio, piece_start, piece_end)
            touched = of_folio & (pte_dirty(ptes) | pte_write(ptes))
            if not any_set(touched):
                continue
            dirty = dirty or any_set(pte_dirty(ptes[touched]))
            table_index = ((piece_start >> PAGE_SHIFT) % PTRS_PER_TABLE) + np.flatnonzero(touched)
            set_pte_each(machine, mm, piece_start, table_index.astype(np.int64),
                           pte_mkclean(pte_wrprotect(ptes[touched])))
    return dirty


def folio_write_back(machine: Machine, file: File, folio: int) -> None:
    frames = machine.frames
    index = frames.folio_index.item(folio)
    for i, word in enumerate(frames.page_data[folio:folio + frames.folio_nr_pages(folio)].tolist()):
        file.disk[index + i] = word


def file_sync(machine: Machine, file_id: int) -> str:
    """fsync: dirty folios of a regular file cleaned for io and written back; shmem: nothing."""
    file = machine.files.get(file_id)
    if file is None:
        return EBADF
    if file.shmem:
        return OK
    frames = machine.frames
    heads = sorted({folio for folio in file.cache.values() if frames.folio_dirty.item(folio)},
                   key=lambda folio: frames.folio_index.item(folio))
    for folio in heads:
        if folio_mkclean(machine, folio):
            frames.folio_dirty[folio] = True
        frames.folio_dirty[folio] = False
        folio_write_back(machine, file, folio)
    return OK


def shrink_file_folio(machine: Machine, folio: int) -> str:
    """Reclaim a page-cache folio: unmapped everywhere; a dirty one written back (regular) or
    each page swapped to its own slot (shmem); out of the cache unless pinned (EBUSY)."""
    frames = machine.frames
    file = machine.files[frames.folio_mapping.item(folio) - 1]
    try_to_unmap_file(machine, folio)
    nr_pages = frames.folio_nr_pages(folio)
    if frames.folio_refcount.item(folio) != nr_pages:
        return EBUSY
    index = frames.folio_index.item(folio)
    if frames.folio_dirty.item(folio):
        if file.shmem:
            slots = machine.swap.find_free_slots_order0(nr_pages)
            if slots is None:
                return ENOMEM
            file.cache_delete(index, nr_pages)
            machine.swap.swap_count[slots] += 1
            machine.swap.swap_data[slots] = frames.page_data[folio:folio + nr_pages]
            file.swap.update(zip(range(index, index + nr_pages), slots.tolist(), strict=True))
            folios_put_refs(machine, np.array([folio]), np.array([nr_pages]))
            return OK
        frames.folio_dirty[folio] = False
        folio_write_back(machine, file, folio)
    file.cache_delete(index, nr_pages)
    folios_put_refs(machine, np.array([folio]), np.array([nr_pages]))
    return OK


__all__ = ["MAX_PAGECACHE_ORDER", "PteRuns", "batches_any", "folio_put", "folio_remove_rmap_pte"]
