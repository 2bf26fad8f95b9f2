"""mprotect (mm/mprotect.c do_mprotect_pkey, mprotect_fixup, change_protection): every
present PTE of a table's range is changed with one vector expression and written back
with set_ptes over runs. Each entry keeps its own young and dirty bits (SPEC §2.3)."""

from __future__ import annotations

import numpy as np

from machine import MM, VMA, Machine
from machine.errors import ENOMEM, OK
from machine.pgtable import (
    PAGE_SHIFT,
    PMD_SIZE,
    pmd_trans_huge,
    pte_dirty,
    pte_mkwrite,
    pte_modify,
    pte_pfn,
    pte_present,
)

from .filemap import vma_page_prot, vma_wants_writenotify
from .folio import vm_normal_pages
from .huge_memory import change_huge_pmd, split_huge_pmd_locked
from .internal import set_pte_values
from .memory import pmd_ranges


def change_pte_range(machine: Machine, mm: MM, vma: VMA, start: int, end: int) -> None:
    """New protection for every present PTE of [start, end) (one PMD); an exclusive page in a
    rw VMA becomes writable (can_change_pte_writable: never the zero page, no anon page)."""
    if mm.pte_table(start) is None:
        return
    ptes = machine.ptes_get(mm, start, (end - start) >> PAGE_SHIFT)
    present = np.flatnonzero(pte_present(ptes))
    if len(present) == 0:
        return
    old = ptes[present]
    entries = pte_modify(old, vma_page_prot(machine, vma))
    if vma.file is not None and vma.shared:  # can_change_shared_pte_writable: dirty entries
        if vma.writable and vma_wants_writenotify(machine, vma):
            entries = np.where(pte_dirty(old), pte_mkwrite(entries), entries)
    elif vma.writable:
        exclusive = machine.frames.page_anon_exclusive[pte_pfn(old).astype(np.int64)] & vm_normal_pages(machine, old)
        entries = np.where(exclusive, pte_mkwrite(entries), entries)
    haddr = start & ~(PMD_SIZE - 1)
    set_pte_values(machine, mm, haddr, ((start - haddr) >> PAGE_SHIFT) + present, entries)


def change_protection(machine: Machine, mm: MM, vma: VMA, start: int, end: int) -> None:
    """Apply vma's protection to [start, end): a covered PMD whole, a partial one split first."""
    for addr, next_addr, whole_pmd in pmd_ranges(mm, start, end):
        haddr = addr & ~(PMD_SIZE - 1)
        if pmd_trans_huge(machine.pmdp_get(mm, haddr)):
            if whole_pmd:
                change_huge_pmd(machine, mm, vma, haddr)
                continue
            split_huge_pmd_locked(machine, mm, vma, haddr)
        change_pte_range(machine, mm, vma, addr, next_addr)


def mprotect_fixup(machine: Machine, mm: MM, vma: VMA, start: int, end: int, writable: bool) -> None:
    """Change [start, end) of vma: split it at the edges, change entries, merge neighbours."""
    if vma.writable == writable:
        return
    if vma.start < start:
        vma = mm.vma_split(vma, start)
    if vma.end > end:
        mm.vma_split(vma, end)
    vma.writable = writable
    change_protection(machine, mm, vma, start, end)
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
