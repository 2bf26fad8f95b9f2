"""mprotect (mm/mprotect.c do_mprotect_pkey, mprotect_fixup, change_protection): every
present PTE of a table's range is changed with one vector expression and written back
with set_ptes over runs. Each entry keeps its own young and dirty bits (SPEC §2.3)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from machine import MM, VMA, Machine, PteRuns
from machine.errors import ENOMEM, OK
from machine.pgtable import (
    PAGE_SHIFT,
    PMD_SIZE,
    PTE_MARKER_UFFD_WP,
    is_pte_marker,
    is_swap_slot_pte,
    make_pte_marker,
    pmd_trans_huge,
    pte_clear_uffd_wp,
    pte_dirty,
    pte_mkdirty,
    pte_mkuffd_wp,
    pte_mkwrite,
    pte_mkyoung,
    pte_modify,
    pte_none,
    pte_pfn,
    pte_present,
    pte_swp_clear_uffd_wp,
    pte_swp_mkuffd_wp,
    pte_uffd_wp,
    pte_young,
)

from .filemap import vma_needs_dirty_tracking, vma_page_prot
from .folio import vm_normal_pages
from .huge_memory import (
    MM_CP_TRY_CHANGE_WRITABLE,
    MM_CP_UFFD_WP,
    MM_CP_UFFD_WP_RESOLVE,
    change_huge_pmd,
    split_huge_pmd_locked,
)
from .internal import FPB_MPROTECT, batches_any, folio_pte_batch, set_pte_each, set_pte_values
from .memory import pmd_ranges


def change_present_ptes(machine: Machine, vma: VMA, old: np.ndarray, cp_flags: int) -> np.ndarray:
    """New values of present entries: pte_modify, the uffd-wp bit per cp_flags, then
    writable where allowed (MM_CP_TRY_CHANGE_WRITABLE): entries without a uffd-wp bit of anon
    exclusive pages in a private VMA (can_change_pte_writable per page, as
    commit_anon_folio_batch; never the zero page, which has no anon page), dirty ones in a
    shared VMA (can_change_shared_pte_writable)."""
    entries = pte_modify(old, vma_page_prot(machine, vma))
    if cp_flags & MM_CP_UFFD_WP:
        entries = pte_mkuffd_wp(entries)
    elif cp_flags & MM_CP_UFFD_WP_RESOLVE:
        entries = pte_clear_uffd_wp(entries)
    if not cp_flags & MM_CP_TRY_CHANGE_WRITABLE or not vma.writable:
        return entries
    if vma.shared:      # can_change_shared_pte_writable: page_mkwrite has run for a dirty entry
        changeable = pte_dirty(entries).astype(bool)
    else:
        changeable = (machine.frames.page_anon_exclusive[pte_pfn(old).astype(np.int64)]
                      & vm_normal_pages(machine, old))
    if vma.uffd_wp:
        changeable = changeable & ~pte_uffd_wp(entries)
    return np.where(changeable, pte_mkwrite(entries), entries)


def modify_prot_start_ptes(old: np.ndarray, nr_pages: np.ndarray) -> np.ndarray:
    """The present entries old, in batches of nr_pages, each batch's entries given its gathered
    dirty and young (the one value the kernel's modify_prot_start_ptes returns per batch)."""
    dirty = batches_any(pte_dirty(old).astype(bool), nr_pages).repeat(nr_pages)
    young = batches_any(pte_young(old).astype(bool), nr_pages).repeat(nr_pages)
    old = np.where(dirty, pte_mkdirty(old), old)
    return np.where(young, pte_mkyoung(old), old)


def change_pte_range(machine: Machine, mm: MM, vma: VMA, start: int, end: int, cp_flags: int) -> None:
    """New protection for every PTE of [start, end) (one PMD): present entries with one
    vector expression, each batch of a large folio's (mprotect_folio_pte_batch) gathered
    first; swap entries' uffd-wp bit per cp_flags (change_softleaf_pte); with
    MM_CP_UFFD_WP a marker on each none entry, with MM_CP_UFFD_WP_RESOLVE markers dropped."""
    if mm.pte_table(start) is None:
        return
    ptes = machine.ptes_get(mm, start, (end - start) >> PAGE_SHIFT)
    haddr = start & ~(PMD_SIZE - 1)
    first = (start - haddr) >> PAGE_SHIFT
    present = np.flatnonzero(pte_present(ptes))
    if len(present):
        batches = folio_pte_batch(machine, mm, start, ptes, FPB_MPROTECT)
        old = modify_prot_start_ptes(ptes[present], batches.nr_pages)
        machine.clear_full_ptes_runs(mm, batches.runs)   # modify_prot_start_ptes: get_and_clear_ptes
        breaks = np.zeros(len(present), bool)            # modify_prot_commit_ptes: set_ptes per batch
        breaks[batches.nr_pages.cumsum() - batches.nr_pages] = True
        set_pte_values(machine, mm, haddr, first + present, change_present_ptes(machine, vma, old, cp_flags), breaks)
    if not cp_flags & (MM_CP_UFFD_WP | MM_CP_UFFD_WP_RESOLVE):
        return
    swap = np.flatnonzero(is_swap_slot_pte(ptes))
    if len(swap):  # change_softleaf_pte, one swap entry at a time as the kernel
        old = ptes[swap]
        new = pte_swp_mkuffd_wp(old) if cp_flags & MM_CP_UFFD_WP else pte_swp_clear_uffd_wp(old)
        changed = new != old
        for index, entry in zip((first + swap[changed]).tolist(), new[changed].tolist(), strict=True):
            machine.set_pte_at(mm, haddr + (index << PAGE_SHIFT), entry)
    if cp_flags & MM_CP_UFFD_WP and userfaultfd_wp_use_markers(vma):
        none = np.flatnonzero(pte_none(ptes))
        if len(none):
            set_pte_each(machine, mm, haddr, first + none,
                           np.full(len(none), make_pte_marker(PTE_MARKER_UFFD_WP), np.uint64))
    elif cp_flags & MM_CP_UFFD_WP_RESOLVE:
        markers = np.flatnonzero(is_pte_marker(ptes))
        if len(markers):
            machine.clear_full_ptes_runs(mm, PteRuns(haddr, first + markers, np.ones(len(markers), np.int64)))


def userfaultfd_wp_use_markers(vma: VMA) -> bool:
    """uffd-wp protects none entries with markers: anon needs UFFD_FEATURE_WP_UNPOPULATED,
    which every context of this model has."""
    return vma.uffd_wp


def change_pmd_ranges(machine: Machine, mm: MM, vma: VMA, start: int, end: int,
                      cp_flags: int) -> Iterator[tuple[int, int, bool]]:
    """The PMD ranges change_pmd_range visits: those that map something, and with markers to
    install (pgtable_populate_needed) every one, its PTE table allocated (change_pmd_prepare)."""
    if not (cp_flags & MM_CP_UFFD_WP and userfaultfd_wp_use_markers(vma)):
        yield from pmd_ranges(mm, start, end)
        return
    for haddr in range(start & ~(PMD_SIZE - 1), end, PMD_SIZE):
        addr, next_addr = max(start, haddr), min(haddr + PMD_SIZE, end)
        if machine.pmdp_get(mm, haddr) == 0:
            mm.pte_table(haddr, alloc=True)  # pte_alloc
        yield addr, next_addr, addr == haddr and next_addr == haddr + PMD_SIZE


def change_protection(machine: Machine, mm: MM, vma: VMA, start: int, end: int, cp_flags: int) -> None:
    """Apply vma's protection and cp_flags to [start, end): a covered PMD whole, a partial
    one split first (an anon VMA needs no split for uffd-wp: pgtable_split_needed)."""
    for addr, next_addr, whole_pmd in change_pmd_ranges(machine, mm, vma, start, end, cp_flags):
        haddr = addr & ~(PMD_SIZE - 1)
        if pmd_trans_huge(machine.pmdp_get(mm, haddr)):
            if whole_pmd:
                change_huge_pmd(machine, mm, vma, haddr, cp_flags)
                continue
            split_huge_pmd_locked(machine, mm, vma, haddr)
        change_pte_range(machine, mm, vma, addr, next_addr, cp_flags)


def vma_wants_manual_pte_write_upgrade(machine: Machine, vma: VMA) -> bool:
    """Whether change_protection may make entries writable by hand (MM_CP_TRY_CHANGE_WRITABLE):
    a private rw VMA (COW), or a shared rw one of a file with page_mkwrite, a regular file's
    (vma_wants_writenotify returns at vm_ops_needs_writenotify). Never a shmem one: there
    vma_wants_writenotify is asked with a vm_page_prot write-notify (uffd-wp) has already
    made the private read-only one, and its pgprot_modify check fails; a PAGE_SHARED VMA
    needs no upgrade (`rmapfuzz kernel`, scenarios 104 and 130)."""
    if vma.shared:
        return vma.writable and vma_needs_dirty_tracking(machine, vma)
    return vma.writable


def mprotect_vm_account(vma: VMA, writable: bool) -> bool:
    """mprotect_fixup's VM_ACCOUNT: set when a private VMA becomes writable, cleared when an
    anonymous VMA with no anon_vma yet becomes read-only, else kept."""
    if writable:
        return not vma.shared or vma.account
    return vma.account and (vma.file is not None or vma.anon_vma != 0)


def mprotect_fixup(machine: Machine, mm: MM, vma: VMA, start: int, end: int, writable: bool) -> None:
    """Change [start, end) of vma: split it at the edges, change entries, merge neighbours."""
    if vma.writable == writable:
        return
    account = mprotect_vm_account(vma, writable)
    if vma.start < start:
        vma = mm.vma_split(vma, start)
    if vma.end > end:
        mm.vma_split(vma, end)
    vma.writable = writable
    vma.account = account
    cp_flags = MM_CP_TRY_CHANGE_WRITABLE if vma_wants_manual_pte_write_upgrade(machine, vma) else 0
    change_protection(machine, mm, vma, start, end, cp_flags)
    mm.vma_merge(vma)


def do_mprotect_pkey(machine: Machine, mm: MM, start: int, length: int, writable: bool) -> str:
    """VMA by VMA from start; ENOMEM at the first hole, earlier VMAs staying changed."""
    end = start + length
    addr = start
    while addr < end:
        vma = mm.find_vma(addr)
        if vma is None:
            return ENOMEM
        next_addr = min(vma.end, end)
        mprotect_fixup(machine, mm, vma, addr, next_addr, writable)
        addr = next_addr
    return OK
