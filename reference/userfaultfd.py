"""userfaultfd write-protect on anonymous memory and shmem (mm/userfaultfd.c userfaultfd_register,
mwriteprotect_range, uffd_wp_range), one VMA and one PTE at a time.

Each `uffd` op opens its own context (UFFDIO_API with UFFD_FEATURE_WP_UNPOPULATED and
UFFD_FEATURE_WP_HUGETLBFS_SHMEM, without UFFD_FEATURE_EVENT_FORK) and registers its range
with UFFDIO_REGISTER_MODE_WP.
"""

from __future__ import annotations

from machine import MM, VMA, Machine
from machine.errors import EBUSY, EINVAL, ENOENT, OK
from machine.pgtable import PMD_SIZE, pmd_trans_huge

from .huge_memory import MM_CP_TRY_CHANGE_WRITABLE, MM_CP_UFFD_WP, MM_CP_UFFD_WP_RESOLVE, split_huge_pmd_locked
from .mprotect import change_protection, vma_wants_manual_pte_write_upgrade


def vma_can_userfault(machine: Machine, vma: VMA) -> bool:
    """uffd-wp registration is allowed on anonymous memory and shmem (private or shared
    mappings of it), not on a regular file's mapping (vma_can_userfault)."""
    return vma.file is None or machine.files[vma.file].shmem


def vma_split_at(machine: Machine, mm: MM, vma: VMA, addr: int) -> VMA:
    """__split_vma: a PMD block across addr is split first (vma_adjust_trans_huge), then the
    VMA; returns the part from addr on."""
    haddr = addr & ~(PMD_SIZE - 1)
    if haddr != addr and pmd_trans_huge(machine.pmdp_get(mm, haddr)):
        split_huge_pmd_locked(machine, mm, vma, haddr)
    return mm.vma_split(vma, addr)


def userfaultfd_register(machine: Machine, mm: MM, start: int, end: int) -> str:
    """Register [start, end) with a new context: EINVAL without a VMA in it; then VMA by VMA,
    the first that cannot be registered (a regular file's) is EINVAL, the first registered
    already (by another context) EBUSY; else each VMA's part in the range (split at the
    edges) gets the context and merges with neighbours as vma_modify_flags_uffd does.
    Holes are skipped."""
    vmas = mm.vmas_intersecting(start, end)
    if not vmas:
        return EINVAL
    for vma in vmas:
        if not vma_can_userfault(machine, vma):
            return EINVAL
        if vma.uffd_wp:
            return EBUSY
    ctx = machine.uffd_ctx_alloc()
    for vma in vmas:
        if vma.start < start:
            vma = vma_split_at(machine, mm, vma, start)
        if vma.end > end:
            vma_split_at(machine, mm, vma, end)
        vma.uffd_ctx = ctx
        mm.vma_merge(vma)
    return OK


def uffd_wp_range(machine: Machine, mm: MM, vma: VMA, start: int, end: int, enable_wp: bool) -> None:
    """change_protection of [start, end) in vma with MM_CP_UFFD_WP, or with
    MM_CP_UFFD_WP_RESOLVE and (vma_wants_manual_pte_write_upgrade: a private rw VMA here) a try
    to make the entries writable again."""
    if enable_wp:
        cp_flags = MM_CP_UFFD_WP
    else:
        upgrade = vma_wants_manual_pte_write_upgrade(machine, vma)
        cp_flags = MM_CP_UFFD_WP_RESOLVE | (MM_CP_TRY_CHANGE_WRITABLE if upgrade else 0)
    change_protection(machine, mm, vma, start, end, cp_flags)


def mwriteprotect_range(machine: Machine, mm: MM, start: int, end: int, enable_wp: bool) -> str:
    """UFFDIO_WRITEPROTECT: VMA by VMA (holes skipped); ENOENT if there is none, or at the
    first VMA not registered for uffd-wp (the VMAs before it stay changed)."""
    vmas = mm.vmas_intersecting(start, end)
    if not vmas:
        return ENOENT
    for vma in vmas:
        if not vma.uffd_wp:
            return ENOENT
        uffd_wp_range(machine, mm, vma, max(vma.start, start), min(vma.end, end), enable_wp)
    return OK
