"""mmap, munmap, MADV_DONTNEED, exit and fork's VMA copy (mm/mmap.c, mm/vma.c,
mm/madvise.c, kernel/fork.c dup_mmap): loops over VMAs; the page work is batched."""

from __future__ import annotations

from machine import MM, VMA, Machine
from machine.errors import EBADF, EEXIST, ENOMEM, OK
from machine.pgtable import PAGE_SHIFT

from .memory import copy_page_range, unmap_page_range
from .rmap import anon_vma_fork


def accountable_mapping(writable: bool, shared: bool) -> bool:
    """accountable_mapping: a private writable mapping is charged to the commit (VM_ACCOUNT)."""
    return writable and not shared


def do_mmap(machine: Machine, mm: MM, addr: int, length: int, writable: bool, file: int | None = None,
            offset: int = 0, shared: bool = False) -> str:
    """A new VMA of a new lineage, anonymous or mapping a file from offset (model: never
    merged); overlap is EEXIST, as MAP_FIXED_NOREPLACE says. A file mapping may reach past the
    file's end (SIGBUS on access)."""
    if file is not None and file not in machine.files:
        return EBADF
    if mm.vmas_intersecting(addr, addr + length):
        return EEXIST
    mm.vma_insert(VMA(addr, addr + length, writable, machine.lineage_alloc(), file,
                      offset >> PAGE_SHIFT, shared, account=accountable_mapping(writable, shared)))
    return OK


def unmap_vmas(machine: Machine, mm: MM, start: int, end: int, drop_markers: bool) -> bool:
    """Zap every mapping in [start, end), VMA by VMA (unmap_page_range each; drop_markers:
    ZAP_FLAG_DROP_MARKER, munmap's and exit's, else uffd-wp markers stay in file VMAs);
    returns whether VMAs covered it all (madvise_dontneed's ENOMEM for a hole)."""
    covered = mm.vmas_cover(start, end)
    for vma in mm.vmas_intersecting(start, end):
        unmap_page_range(machine, mm, vma, max(vma.start, start), min(vma.end, end), drop_markers)
    return covered


def do_munmap(machine: Machine, mm: MM, start: int, length: int) -> str:
    """Zap [start, start + length) and remove it from the VMAs, splitting them at the edges."""
    end = start + length
    unmap_vmas(machine, mm, start, end, drop_markers=True)
    for vma in mm.vmas_intersecting(start, end):
        if vma.start < start:
            vma = mm.vma_split(vma, start)
        if vma.end > end:
            mm.vma_split(vma, end)
        mm.vma_remove(vma)
    return OK


def madvise_dontneed(machine: Machine, mm: MM, start: int, length: int) -> str:
    """Zap the mapped parts of the range; ENOMEM if it had a hole. VMAs stay."""
    return OK if unmap_vmas(machine, mm, start, start + length, drop_markers=False) else ENOMEM


def exit_mmap(machine: Machine, mm: MM) -> str:
    """Zap everything in ascending address order; the process is gone, its pins stay."""
    for vma in list(mm.vmas):
        unmap_page_range(machine, mm, vma, vma.start, vma.end, drop_markers=True)
        mm.vma_remove(vma)
    machine.mm_destroy(mm)
    return OK


def dup_mmap(machine: Machine, mm: MM) -> str:
    """fork: a child with a copy of every VMA and its mappings, in ascending address order.
    copy_page_range leaves the page tables of a VMA without an anon_vma behind (vma_needs_copy);
    the child's VMA gets an anon_vma of its own only if the parent's has one (anon_vma_fork)."""
    child = machine.mm_alloc()
    for vma in mm.vmas:
        child_vma = vma.copy()
        child_vma.uffd_ctx = 0  # dup_userfaultfd without UFFD_FEATURE_EVENT_FORK: userfaultfd_reset_ctx
        anon_vma_fork(machine, child_vma, vma)
        child.vma_insert(child_vma)
        result = copy_page_range(machine, child, child_vma, mm, vma)
        if result != OK:
            return result
    return OK
