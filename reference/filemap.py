"""File-backed memory, one page at a time: the page cache (mm/filemap.c, mm/shmem.c), file
faults (mm/memory.c do_read_fault, do_cow_fault, do_shared_fault, finish_fault,
wp_page_shared), file rmap (folio_add_file_rmap_pte, folio_dup_file_rmap_pte), writeback
(folio_mkclean) and the reclaim of page-cache folios (shrink_folio_list, try_to_unmap_one).
"""

from __future__ import annotations

from machine import MM, VMA, Machine, check
from machine.errors import EBADF, EBUSY, EEXIST, ENOMEM, OK, SIGBUS
from machine.files import File
from machine.pgtable import (
    pte_mknoncont, PAGE_SHIFT, PAGE_SIZE, PMD_SIZE, PTE_MARKER_UFFD_WP, PTRS_PER_TABLE, is_pte_marker, is_swap_pte,
    make_pte_marker, pfn_pte, pte_clear_uffd_wp, pte_dirty, pte_marker_uffd_wp, pte_mkclean, pte_mkdirty,
    pte_mkold, pte_mkuffd_wp, pte_mkwrite, pte_mkyoung, pte_none, pte_pfn, pte_present, pte_swp_uffd_wp,
    pte_uffd_wp, pte_write, pte_wrprotect, vm_get_page_prot, vm_get_page_prot_shared,
)

from .folio import (
    copy_user_page, folio_alloc, folio_get, folio_mark_dirty, folio_nr_pages, folio_put,
    folio_put_refs, folio_test_dirty, folio_test_large, page_folio,
)
from .pgtable import set_ptes
from .rmap import folio_add_new_anon_rmap, folio_add_return_large_mapcount, folio_remove_rmap_pte

MAX_PAGECACHE_ORDER = 8  # (model) page-cache folios are PTE-mapped: no do_set_pmd


def file_of_vma(machine: Machine, vma: VMA) -> File:
    check(vma.file is not None and vma.file in machine.files, "VMA %#x maps no file", vma.start)
    return machine.files[vma.file]


def folio_file(machine: Machine, folio: int) -> File | None:
    """folio->mapping: the file whose page cache holds the folio, None for anon memory."""
    mapping = int(machine.frames.folio_mapping[folio])
    return machine.files[mapping - 1] if mapping else None


def vma_needs_dirty_tracking(machine: Machine, vma: VMA) -> bool:
    """A shared mapping of a regular file: the filesystem hears of the first write
    (page_mkwrite) and writes back; shmem has neither (vma_needs_dirty_tracking)."""
    return vma.file is not None and vma.shared and not file_of_vma(machine, vma).shmem


def vma_wants_writenotify(machine: Machine, vma: VMA) -> bool:
    """A shared mapping that write-protects clean pages so a write faults first: a regular
    file's, and any registered for uffd-wp (userfaultfd_set_vm_flags recomputes
    vm_page_prot: "Do we need write faults for uffd-wp tracking?")."""
    return vma.shared and (vma_needs_dirty_tracking(machine, vma) or vma.uffd_wp)


def vma_page_prot(machine: Machine, vma: VMA) -> int:
    """vm_page_prot (vma_set_page_prot): PAGE_SHARED for a rw shared VMA without write-notify,
    else what a private VMA of that prot has."""
    if vma.file is not None and vma.shared and not vma_wants_writenotify(machine, vma):
        return vm_get_page_prot_shared(vma.writable)
    return vm_get_page_prot(vma.writable)


# Files and the page cache.

def file_create(machine: Machine, file_id: int, length: int, shmem: bool) -> str:
    """open(O_CREAT | O_EXCL) and ftruncate: an empty file of length bytes that reads zero."""
    if file_id in machine.files:
        return EEXIST
    machine.files[file_id] = File(file_id, length >> PAGE_SHIFT, shmem)
    return OK


def filemap_add_folio(machine: Machine, file: File, folio: int, index: int) -> None:
    """Put a fresh folio in the page cache at index: one reference per page
    (__filemap_add_folio's folio_ref_add), folio->mapping and ->index set; shmem folios are
    swap-backed."""
    frames = machine.frames
    nr_pages = folio_nr_pages(machine, folio)
    file.cache_add(index, folio, nr_pages)
    frames.folio_mapping[folio] = file.file_id + 1
    frames.folio_index[folio] = index
    frames.folio_swapbacked[folio] = file.shmem
    frames.folio_refcount[folio] += nr_pages - 1  # the allocation's reference is the first


def filemap_remove_folio(machine: Machine, file: File, folio: int) -> None:
    """Take a folio out of the page cache and drop the cache's references (the last frees it)."""
    nr_pages = folio_nr_pages(machine, folio)
    file.cache_delete(int(machine.frames.folio_index[folio]), nr_pages)
    folio_put_refs(machine, folio, nr_pages)


def pagecache_range_empty(file: File, index: int, nr_pages: int) -> bool:
    """No folio and no swap entry in the cache at index..index + nr_pages - 1, one at a time."""
    return all(i not in file.cache and i not in file.swap for i in range(index, index + nr_pages))


def filemap_get_folio(machine: Machine, file: File, index: int, order: int) -> int | None:
    """The page-cache folio holding index, read in (regular), swapped in (shmem) or made if
    the file has none there: the largest order K..0 (never 1) whose aligned range lies in the
    file, is empty in the cache and can be allocated. None: no memory.

    Context: index is below the file's size.
    """
    check(index < file.nr_pages, "page-cache lookup past the end of F%s", file.file_id)
    folio = file.cache.get(index)
    if folio is not None:
        return folio
    if index in file.swap:  # shmem_swapin_folio: a fresh order-0 folio, dirty
        folio = folio_alloc(machine, 0)
        if folio is None:
            return None
        slot = file.swap.pop(index)
        machine.frames.page_data[folio] = machine.swap.swap_data[slot]
        machine.swap.swap_count[slot] -= 1
        machine.swap.swap_free_slot(slot)
        filemap_add_folio(machine, file, folio, index)
        folio_mark_dirty(machine, folio)
        return folio
    for candidate in range(min(order, MAX_PAGECACHE_ORDER), -1, -1):
        if candidate == 1:
            continue
        nr_pages = 1 << candidate
        first = index & ~(nr_pages - 1)
        if first + nr_pages > file.nr_pages or not pagecache_range_empty(file, first, nr_pages):
            continue
        folio = folio_alloc(machine, candidate)
        if folio is None:
            continue
        for i in range(nr_pages):  # read from disk (regular) or zero (a new shmem folio)
            machine.frames.page_data[folio + i] = 0 if file.shmem else file.disk.get(first + i, 0)
        filemap_add_folio(machine, file, folio, first)
        return folio
    return None


# File rmap, one page at a time.

def folio_add_file_rmap_pte(machine: Machine, folio: int, page: int, mm: MM) -> None:
    """Account one PTE mapping of a page-cache page (folio_add_file_rmap_ptes, nr_pages 1)."""
    frames = machine.frames
    check(int(frames.page_folio[page]) == folio and frames.folio_mapping[folio] != 0,
          "file rmap of page %s outside page-cache folio %s", page, folio)
    frames.page_mapcount[page] += 1
    if folio_test_large(machine, folio):
        folio_add_return_large_mapcount(machine, folio, 1, mm)


def folio_dup_file_rmap_pte(machine: Machine, folio: int, page: int, dst_mm: MM) -> None:
    """fork: the child's mapping of a page-cache page (no exclusivity to clear)."""
    check(machine.frames.page_mapcount[page] >= 1, "dup of unmapped page %s", page)
    folio_add_file_rmap_pte(machine, folio, page, dst_mm)


# Faults (fault-around off: (model) fault_around_bytes = PAGE_SIZE).

def file_fault_index(machine: Machine, vma: VMA, addr: int) -> int | None:
    """The file index a fault at addr needs, None past the file's end (SIGBUS)."""
    index = vma.linear_page_index(addr)
    return index if index < file_of_vma(machine, vma).nr_pages else None


def set_pte_range(machine: Machine, mm: MM, vma: VMA, folio: int, page: int, nr_pages: int, addr: int,
                  write: bool, uffd_wp: bool = False) -> None:
    """Map nr_pages pages of a page-cache folio from page at addr, young; a write fault makes
    them dirty and writable, a read fault in a writable VMA dirty if the folio is; a fault on a
    uffd-wp marker (vmf_orig_pte_uffd_wp) gives them the bit, write-protected."""
    entry = pte_mkyoung(pfn_pte(page, vma_page_prot(machine, vma)))
    if write:
        entry = pte_mkdirty(entry)
        if vma.writable:
            entry = pte_mkwrite(entry)
    elif pte_write(entry) and folio_test_dirty(machine, folio):
        entry = pte_mkdirty(entry)
    if uffd_wp:
        entry = pte_mkuffd_wp(entry)
    for i in range(nr_pages):
        folio_add_file_rmap_pte(machine, folio, page + i, mm)
    set_ptes(machine, mm, addr, pfn_pte(page, entry), nr_pages)


def finish_fault(machine: Machine, mm: MM, vma: VMA, addr: int, folio: int, write: bool,
                 uffd_wp: bool = False) -> None:
    """Map the faulting page, or the whole folio when it lies inside the VMA and the PTE table
    and every entry it would take is none, and the VMA is not registered with userfaultfd
    ("per-page fault to maintain the uffd semantics"); the fault holds one reference, the
    mappings take nr_pages - 1 more."""
    index = vma.linear_page_index(addr)
    page = folio + index - int(machine.frames.folio_index[folio])
    nr_pages = folio_nr_pages(machine, folio)
    idx = page - folio
    vma_off = (addr - vma.start) >> PAGE_SHIFT
    pte_off = (addr >> PAGE_SHIFT) % PTRS_PER_TABLE
    vma_pages = (vma.end - vma.start) >> PAGE_SHIFT
    start = addr - (idx << PAGE_SHIFT)
    if (nr_pages == 1 or vma.uffd_wp or vma_off < idx or vma_off + (nr_pages - idx) > vma_pages
            or pte_off < idx or pte_off + (nr_pages - idx) > PTRS_PER_TABLE
            or not all(pte_none(machine.ptep_get(mm, start + (i << PAGE_SHIFT))) for i in range(nr_pages))):
        nr_pages, start = 1, addr
        page_first = page
    else:
        page_first = folio
    machine.frames.folio_refcount[folio] += nr_pages - 1
    set_pte_range(machine, mm, vma, folio, page_first, nr_pages, start, write, uffd_wp)
    mm.rss_file += nr_pages


def do_read_fault(machine: Machine, mm: MM, vma: VMA, addr: int, order: int = 0, uffd_wp: bool = False) -> str:
    """A read fault on a none entry (or a uffd-wp marker: uffd_wp) of a file VMA: the page-cache
    folio mapped per finish_fault."""
    index = file_fault_index(machine, vma, addr)
    if index is None:
        return SIGBUS
    folio = filemap_get_folio(machine, file_of_vma(machine, vma), index, order)
    if folio is None:
        return ENOMEM
    folio_get(machine, folio)
    finish_fault(machine, mm, vma, addr, folio, write=False, uffd_wp=uffd_wp)
    return OK


def do_cow_fault(machine: Machine, mm: MM, vma: VMA, addr: int, order: int = 0, uffd_wp: bool = False) -> str:
    """A write fault on a none entry (or a uffd-wp marker: uffd_wp) of a private file VMA: a new
    anon page allocated first (folio_prealloc), then the page-cache page (made if the file has
    none, of order K..0) copied into it, and the copy mapped exclusive (set_pte_range: with
    the marker's bit, write-protected)."""
    index = file_fault_index(machine, vma, addr)
    if index is None:
        return SIGBUS
    file = file_of_vma(machine, vma)
    new_folio = folio_alloc(machine, 0)
    if new_folio is None:
        return ENOMEM
    folio = filemap_get_folio(machine, file, index, order)
    if folio is None:
        folio_put(machine, new_folio)
        return ENOMEM
    copy_user_page(machine, new_folio, folio + index - int(machine.frames.folio_index[folio]))
    folio_add_new_anon_rmap(machine, new_folio, mm, vma, addr, exclusive=True)
    entry = pte_mkdirty(pfn_pte(new_folio, vm_get_page_prot(vma.writable)))
    if vma.writable:
        entry = pte_mkwrite(entry)
    machine.set_pte_at(mm, addr, pte_mkuffd_wp(entry) if uffd_wp else entry)
    mm.rss_anon += 1
    return OK


def do_shared_fault(machine: Machine, mm: MM, vma: VMA, addr: int, order: int = 0, uffd_wp: bool = False) -> str:
    """A write fault on a none entry (or a uffd-wp marker: uffd_wp) of a shared file VMA: the
    page-cache folio mapped dirty and writable (finish_fault; with the marker's bit,
    write-protected), then marked dirty (fault_dirty_shared_page)."""
    index = file_fault_index(machine, vma, addr)
    if index is None:
        return SIGBUS
    folio = filemap_get_folio(machine, file_of_vma(machine, vma), index, order)
    if folio is None:
        return ENOMEM
    folio_get(machine, folio)
    finish_fault(machine, mm, vma, addr, folio, write=True, uffd_wp=uffd_wp)
    folio_mark_dirty(machine, folio)
    return OK


def do_file_write_fault(machine: Machine, mm: MM, vma: VMA, addr: int, order: int, uffd_wp: bool = False) -> str:
    """do_fault for a write on a none entry (or a uffd-wp marker: uffd_wp) of a file VMA."""
    if vma.shared:
        return do_shared_fault(machine, mm, vma, addr, order, uffd_wp)
    return do_cow_fault(machine, mm, vma, addr, order, uffd_wp)


def wp_page_shared(machine: Machine, mm: MM, vma: VMA, addr: int, pte: int) -> str:
    """A write fault on a read-only entry of a shared file VMA: page_mkwrite, then the entry
    made young, dirty and writable (wp_page_reuse) and the folio dirty."""
    folio = page_folio(machine, int(pte_pfn(pte)))
    machine.ptep_set_access_flags(mm, addr, pte_mkwrite(pte_mkdirty(pte_mkyoung(pte))))  # wp_page_reuse
    folio_mark_dirty(machine, folio)
    return OK


# zap and fork of file pages.

def zap_present_file_pte(machine: Machine, mm: MM, addr: int) -> int:
    """Unmap one PTE of a page-cache page: a dirty entry marks the folio dirty (PG_referenced
    is not modelled); the cache's references keep the folio. Returns the entry cleared."""
    pte = machine.ptep_get_and_clear(mm, addr)
    page = int(pte_pfn(pte))
    folio = page_folio(machine, page)
    if pte_dirty(pte):
        folio_mark_dirty(machine, folio)
    mm.rss_file -= 1
    folio_remove_rmap_pte(machine, folio, page, mm)
    folio_put(machine, folio)
    return pte


def copy_present_file_pte(machine: Machine, dst_mm: MM, dst_vma: VMA, addr: int, pte: int,
                          in_batch: bool = False) -> None:
    """fork's copy of a page-cache page's PTE: shared with the child, made old, without the
    uffd-wp bit unless the child's VMA is registered (__copy_present_ptes)."""
    page = int(pte_pfn(pte))
    folio = page_folio(machine, page)
    folio_get(machine, folio)
    folio_dup_file_rmap_pte(machine, folio, page, dst_mm)
    dst_mm.rss_file += 1
    if not dst_vma.uffd_wp:  # userfaultfd_wp(dst_vma)
        pte = pte_clear_uffd_wp(pte)
    if in_batch:   # one entry of copy_present_ptes' set_ptes (memory.copy_batch_blocks folds)
        machine.set_pte_raw(dst_mm, addr, pte_mknoncont(pte_mkold(pte)))
    else:
        machine.set_pte_at(dst_mm, addr, pte_mkold(pte))


def pte_install_uffd_wp_if_needed(machine: Machine, mm: MM, vma: VMA, addr: int, pteval: int) -> None:
    """After an entry of a file VMA registered for uffd-wp was cleared: a marker where it was
    write-protected (the bit on a present or swap entry, or a marker), so the protection
    outlives the mapping. An anonymous VMA gets none.

    Context: the entry at addr is none.
    """
    check(pte_none(machine.ptep_get(mm, addr)), "uffd-wp marker over a live entry at %#x", addr)
    if vma.file is None or not vma.uffd_wp:  # vma_is_anonymous(vma) || !userfaultfd_wp(vma)
        return
    if pte_uffd_wp_any(pteval):
        machine.set_pte_at(mm, addr, make_pte_marker(PTE_MARKER_UFFD_WP))


def pte_uffd_wp_any(pteval: int) -> bool:
    """The entry was uffd-wp protected in any form: the bit of a present entry, the swap bit of
    a swap entry, or a uffd-wp marker (pte_uffd_wp, pte_swp_uffd_wp_any)."""
    if pte_present(pteval):
        return bool(pte_uffd_wp(pteval))
    if is_pte_marker(pteval):
        return bool(pte_marker_uffd_wp(pteval))
    return is_swap_pte(pteval) and bool(pte_swp_uffd_wp(pteval))


# The rmap walk of a page-cache folio (i_mmap).

def rmap_walk_file(machine: Machine, folio: int) -> list[tuple[MM, VMA, int, int]]:
    """Every (mm, vma, start, end) of a VMA mapping the folio's file indices, in walk order
    ((model) ascending process, then VMA address)."""
    frames = machine.frames
    file_id = int(frames.folio_mapping[folio]) - 1
    first = int(frames.folio_index[folio])
    last = first + folio_nr_pages(machine, folio)
    walk = []
    for pid in sorted(machine.processes):
        mm = machine.processes[pid]
        for vma in mm.vmas:
            if vma.file != file_id:
                continue
            vma_last = vma.linear_page_index(vma.end)
            if vma.file_pgoff < last and vma_last > first:
                start = vma.start + ((max(first, vma.file_pgoff) - vma.file_pgoff) << PAGE_SHIFT)
                end = vma.start + ((min(last, vma_last) - vma.file_pgoff) << PAGE_SHIFT)
                walk.append((mm, vma, start, end))
    return walk


def folio_mapped_at(machine: Machine, folio: int, mm: MM, addr: int) -> int | None:
    """The page of folio a present PTE maps at addr, else None."""
    pte = machine.ptep_get(mm, addr)
    if not pte_present(pte):
        return None
    page = int(pte_pfn(pte))
    return page if folio <= page < folio + folio_nr_pages(machine, folio) else None


def try_to_unmap_file(machine: Machine, folio: int) -> str:
    """try_to_unmap of a page-cache folio: every PTE mapping it cleared one at a time, a dirty
    one marking the folio dirty, a uffd-wp one leaving a marker in a registered VMA
    (pte_install_uffd_wp_if_needed); the cache keeps it."""
    for mm, vma, start, end in rmap_walk_file(machine, folio):
        for addr in range(start, end, PAGE_SIZE):
            if folio_mapped_at(machine, folio, mm, addr) is not None:
                pteval = zap_present_file_pte(machine, mm, addr)
                pte_install_uffd_wp_if_needed(machine, mm, vma, addr, pteval)
    return OK


def folio_mkclean(machine: Machine, folio: int) -> bool:
    """Write-protect and clean every shared mapping of the folio; whether one was dirty."""
    dirty = False
    for mm, vma, start, end in rmap_walk_file(machine, folio):
        if not vma.shared:
            continue
        for addr in range(start, end, PAGE_SIZE):
            if folio_mapped_at(machine, folio, mm, addr) is None:
                continue
            pte = machine.ptep_get(mm, addr)
            if not pte_dirty(pte) and not pte_write(pte):
                continue
            dirty = dirty or bool(pte_dirty(pte))
            machine.set_pte_at(mm, addr, pte_mkclean(pte_wrprotect(pte)))
    return dirty


def folio_write_back(machine: Machine, file: File, folio: int) -> None:
    """Write a clean-for-io folio's words to the disk (model: writeback is synchronous)."""
    index = int(machine.frames.folio_index[folio])
    for i in range(folio_nr_pages(machine, folio)):
        file.disk[index + i] = int(machine.frames.page_data[folio + i])


def file_sync(machine: Machine, file_id: int) -> str:
    """fsync: each dirty page-cache folio of a regular file in index order cleaned for io
    (folio_clear_dirty_for_io: folio_mkclean, then PG_dirty cleared) and written back;
    shmem's fsync does nothing (noop_fsync)."""
    file = machine.files.get(file_id)
    if file is None:
        return EBADF
    if file.shmem:
        return OK
    for index in sorted(file.cache):
        folio = file.cache[index]
        if int(machine.frames.folio_index[folio]) != index:
            continue  # a tail index of a large folio
        if not folio_test_dirty(machine, folio):
            continue
        if folio_mkclean(machine, folio):
            folio_mark_dirty(machine, folio)
        machine.frames.folio_dirty[folio] = False
        folio_write_back(machine, file, folio)
    return OK


def shrink_file_folio(machine: Machine, folio: int) -> str:
    """Reclaim a page-cache folio: unmap it everywhere; a dirty one is written back (regular:
    to the disk; shmem: each page to its own swap slot, the cache holding the swap entry);
    then it leaves the cache, unless something beyond the cache holds it (a pin): EBUSY."""
    frames = machine.frames
    file = folio_file(machine, folio)
    check(file is not None, "shrink_file_folio of anon folio %s", folio)
    assert file is not None
    try_to_unmap_file(machine, folio)
    nr_pages = folio_nr_pages(machine, folio)
    if int(frames.folio_refcount[folio]) != nr_pages:
        return EBUSY  # is_page_cache_freeable / __remove_mapping: a pin keeps it
    index = int(frames.folio_index[folio])
    if folio_test_dirty(machine, folio):
        if file.shmem:
            slots = machine.swap.find_free_slots_order0(nr_pages)
            if slots is None:
                return ENOMEM
            file.cache_delete(index, nr_pages)
            for i, slot in enumerate(slots.tolist()):
                machine.swap.swap_count[slot] += 1
                machine.swap.swap_data[slot] = frames.page_data[folio + i]
                file.swap[index + i] = slot
            folio_put_refs(machine, folio, nr_pages)
            return OK
        frames.folio_dirty[folio] = False
        folio_write_back(machine, file, folio)
    filemap_remove_folio(machine, file, folio)
    return OK


def check_file_vma_range(vma: VMA, addr: int) -> None:
    check(vma.start <= addr < vma.end and addr % PAGE_SIZE == 0 and vma.file is not None,
          "file fault outside a file VMA at %#x", addr)


__all__ = ["MAX_PAGECACHE_ORDER", "PMD_SIZE"]
