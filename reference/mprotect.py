"""mprotect (mm/mprotect.c do_mprotect_pkey, mprotect_fixup, change_protection): one PTE at a time."""

from __future__ import annotations

from collections.abc import Iterator

from machine import MM, VMA, Machine, check
from machine.errors import ENOMEM, OK
from machine.pgtable import (
    CONT_PTE_SIZE, CONT_PTES, MASK64, PAGE_SHIFT, PAGE_SIZE, PMD_SIZE, PTE_CONT, PTE_MARKER_UFFD_WP,
    is_pte_marker, pte_advance_pfn, make_pte_marker, pmd_trans_huge,
    pte_clear_uffd_wp, pte_dirty, pte_mkdirty, pte_mkuffd_wp, pte_mkwrite, pte_mkyoung, pte_modify, pte_none,
    pte_pfn, pte_present, pte_special, pte_swp_clear_uffd_wp, pte_swp_mkuffd_wp, pte_uffd_wp, pte_young,
)

from .filemap import vma_needs_dirty_tracking, vma_page_prot
from .folio import PageAnonExclusive, folio_pte_batch, folio_test_large, page_folio
from .huge_memory import (
    MM_CP_TRY_CHANGE_WRITABLE, MM_CP_UFFD_WP, MM_CP_UFFD_WP_RESOLVE, change_huge_pmd, split_huge_pmd_locked,
)
from .memory import pmd_ranges
from .pgtable import get_and_clear_ptes
from .vmscan import pte_unmap_batch_bits


def can_change_pte_writable(machine: Machine, vma: VMA, pte: int) -> bool:
    """An rw VMA's entry may be made writable without a fault: not uffd-wp protected; in a
    private VMA not the zero page (no anon page) and its page anon exclusive; in a shared
    one dirty (the filesystem has had its page_mkwrite: can_change_shared_pte_writable)."""
    if not vma.writable:
        return False
    if vma.uffd_wp and pte_uffd_wp(pte):  # userfaultfd_pte_wp
        return False
    if vma.shared:
        return bool(pte_dirty(pte))
    return not pte_special(pte) and PageAnonExclusive(machine, int(pte_pfn(pte)))


def change_uffd_wp_bit(entry: int, cp_flags: int) -> int:
    """Set (MM_CP_UFFD_WP, write-protecting) or clear (MM_CP_UFFD_WP_RESOLVE) the uffd-wp bit."""
    if cp_flags & MM_CP_UFFD_WP:
        return pte_mkuffd_wp(entry)
    if cp_flags & MM_CP_UFFD_WP_RESOLVE:
        return pte_clear_uffd_wp(entry)
    return entry


def mprotect_folio_pte_batch(machine: Machine, mm: MM, addr: int, end: int) -> int:
    """How many present PTEs from addr change_pte_range changes as one batch: 1 for no folio
    (the zero page) or a small one; else those before end mapping consecutive pages of the
    folio that match but for dirty and young (FPB_RESPECT_WRITE), looked at one at a time."""
    pte = machine.ptep_get(mm, addr)
    check(pte_present(pte), "mprotect_folio_pte_batch of a non-present PTE at %#x", addr)
    if pte_special(pte):
        return 1
    folio = page_folio(machine, int(pte_pfn(pte)))
    if not folio_test_large(machine, folio):
        return 1
    return folio_pte_batch(machine, mm, folio, addr, end, pte_unmap_batch_bits)


def modify_prot_start_ptes(machine: Machine, mm: MM, addr: int, nr_pages: int) -> tuple[bool, bool]:
    """Whether any of the nr_pages PTEs from addr is dirty, and whether any is young: the
    kernel gathers both into the batch's one value, which every entry then takes."""
    dirty = young = False
    for index in range(nr_pages):
        pte = machine.ptep_get(mm, addr + (index << PAGE_SHIFT))
        dirty |= bool(pte_dirty(pte))
        young |= bool(pte_young(pte))
    return dirty, young


def change_pte(machine: Machine, mm: MM, vma: VMA, addr: int, pte: int, cp_flags: int, dirty: bool,
               young: bool) -> int:
    """New protection for one present PTE of a batch (change_present_ptes), pte as the batch's
    start cleared it: the batch's gathered dirty and young, pte_modify, the uffd-wp bit per
    cp_flags, then writable if allowed (MM_CP_TRY_CHANGE_WRITABLE: can_change_pte_writable)."""
    pte &= MASK64 ^ PTE_CONT
    if dirty:
        pte = pte_mkdirty(pte)
    if young:
        pte = pte_mkyoung(pte)
    entry = change_uffd_wp_bit(pte_modify(pte, vma_page_prot(machine, vma)), cp_flags)
    if cp_flags & MM_CP_TRY_CHANGE_WRITABLE and can_change_pte_writable(machine, vma, entry):
        entry = pte_mkwrite(entry)
    return entry


def commit_ptes_blocks(machine: Machine, mm: MM, addr: int, nr_pages: int) -> None:
    """modify_prot_commit_ptes' contpte effect on a batch of nr_pages entries from addr, written
    raw: set_ptes, called per run of entries that differ only by an advancing pfn, folds every
    block such a run covers wholly with its first pfn a multiple of 16 (contpte_set_ptes)."""
    end = addr + (nr_pages << PAGE_SHIFT)
    for block in range(-(-addr // CONT_PTE_SIZE) * CONT_PTE_SIZE, end - CONT_PTE_SIZE + 1, CONT_PTE_SIZE):
        first = machine.ptep_get_raw(mm, block)
        if pte_pfn(first) % CONT_PTES == 0 and all(
                machine.ptep_get_raw(mm, block + (i << PAGE_SHIFT)) == pte_advance_pfn(first, i)
                for i in range(CONT_PTES)):
            machine.contpte_mkcont_block(mm, block)


def change_softleaf_pte(machine: Machine, mm: MM, addr: int, cp_flags: int) -> None:
    """A swap PTE keeps everything but the swap uffd-wp bit, set or cleared per cp_flags; a
    uffd-wp marker is dropped by MM_CP_UFFD_WP_RESOLVE and else stays."""
    pte = machine.ptep_get(mm, addr)
    if is_pte_marker(pte):
        if cp_flags & MM_CP_UFFD_WP_RESOLVE:
            machine.ptep_get_and_clear(mm, addr)
        return
    entry = pte
    if cp_flags & MM_CP_UFFD_WP:
        entry = pte_swp_mkuffd_wp(pte)
    elif cp_flags & MM_CP_UFFD_WP_RESOLVE:
        entry = pte_swp_clear_uffd_wp(pte)
    if entry != pte:
        machine.set_pte_at(mm, addr, entry)


def userfaultfd_wp_use_markers(vma: VMA) -> bool:
    """uffd-wp protects none entries with markers: anon needs UFFD_FEATURE_WP_UNPOPULATED,
    which every context of this model has."""
    return vma.uffd_wp


def change_pte_range(machine: Machine, mm: MM, vma: VMA, start: int, end: int, cp_flags: int) -> None:
    """New protection for every PTE of [start, end) (one PMD), one at a time: each entry of a
    large folio's batch takes the batch's gathered dirty and young (modify_prot_start_ptes);
    MM_CP_UFFD_WP puts a marker on each none entry where markers are used."""
    if mm.pte_table(start) is None:
        return  # pmd_none: nothing mapped here
    batch_start = batch_end = start
    dirty = young = False
    cleared: list[int] = []
    for addr in range(start, end, PAGE_SIZE):
        pte = machine.ptep_get(mm, addr)
        if addr < batch_end or pte_present(pte):   # the batch's later entries were cleared at its start
            if addr >= batch_end:
                nr_pages = mprotect_folio_pte_batch(machine, mm, addr, end)
                dirty, young = modify_prot_start_ptes(machine, mm, addr, nr_pages)
                cleared = get_and_clear_ptes(machine, mm, addr, nr_pages)
                batch_start, batch_end = addr, addr + (nr_pages << PAGE_SHIFT)
            entry = change_pte(machine, mm, vma, addr, cleared[(addr - batch_start) >> PAGE_SHIFT], cp_flags,
                               dirty, young)
            if batch_end - batch_start == PAGE_SIZE:
                machine.set_pte_at(mm, addr, entry)
                continue
            machine.set_pte_raw(mm, addr, entry)
            if addr + PAGE_SIZE == batch_end:
                commit_ptes_blocks(machine, mm, batch_start, (batch_end - batch_start) >> PAGE_SHIFT)
        elif pte_none(pte):
            if cp_flags & MM_CP_UFFD_WP and userfaultfd_wp_use_markers(vma):
                machine.set_pte_at(mm, addr, make_pte_marker(PTE_MARKER_UFFD_WP))
        else:
            change_softleaf_pte(machine, mm, addr, cp_flags)


def change_pmd_ranges(machine: Machine, mm: MM, vma: VMA, start: int, end: int,
                      cp_flags: int) -> Iterator[tuple[int, int, bool]]:
    """The PMD ranges change_pmd_range visits: those that map something, and with markers to
    install (pgtable_populate_needed) every one, its PTE table allocated (change_pmd_prepare)."""
    if not (cp_flags & MM_CP_UFFD_WP and userfaultfd_wp_use_markers(vma)):
        yield from pmd_ranges(machine, mm, start, end)
        return
    addr = start
    while addr < end:
        haddr = addr & ~(PMD_SIZE - 1)
        next_addr = min(haddr + PMD_SIZE, end)
        if machine.pmdp_get(mm, haddr) == 0:
            mm.pte_table(haddr, alloc=True)  # pte_alloc
        yield addr, next_addr, addr == haddr and next_addr == haddr + PMD_SIZE
        addr = next_addr


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
    """VM_ACCOUNT after mprotect_fixup: a private mapping turning writable is charged; an
    anonymous one turning read-only is uncharged only while it has no anon_vma."""
    if writable:
        return vma.account or not vma.shared
    if vma.account and vma.file is None and not vma.anon_vma:
        return False
    return vma.account


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
