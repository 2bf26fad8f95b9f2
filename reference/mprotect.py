"""mprotect (mm/mprotect.c do_mprotect_pkey, mprotect_fixup, change_protection): one PTE at a time."""

from __future__ import annotations

from machine import MM, VMA, Machine
from machine.errors import ENOMEM, OK
from machine.pgtable import (
    PAGE_SIZE, PMD_SIZE, pmd_trans_huge, pte_dirty, pte_mkwrite, pte_modify, pte_pfn, pte_present,
    pte_special,
)

from .filemap import vma_page_prot, vma_wants_writenotify
from .folio import PageAnonExclusive
from .huge_memory import change_huge_pmd, split_huge_pmd_locked
from .memory import pmd_ranges


def change_pte(machine: Machine, mm: MM, vma: VMA, addr: int) -> None:
    """New protection for one present PTE; an exclusive page in a rw VMA becomes writable
    (can_change_pte_writable: never the zero page, which has no anon page)."""
    pte = machine.ptep_get(mm, addr)
    entry = pte_modify(pte, vma_page_prot(machine, vma))
    if vma.file is not None and vma.shared:  # can_change_shared_pte_writable
        if vma.writable and vma_wants_writenotify(machine, vma) and pte_dirty(pte):
            entry = pte_mkwrite(entry)
    elif vma.writable and not pte_special(pte) and PageAnonExclusive(machine, int(pte_pfn(pte))):
        entry = pte_mkwrite(entry)
    machine.set_pte_at(mm, addr, entry)


def change_pte_range(machine: Machine, mm: MM, vma: VMA, start: int, end: int) -> None:
    """New protection for every present PTE of [start, end) (one PMD), one at a time."""
    if mm.pte_table(start) is None:
        return  # pmd_none: nothing mapped here
    for addr in range(start, end, PAGE_SIZE):
        if pte_present(machine.ptep_get(mm, addr)):
            change_pte(machine, mm, vma, addr)


def change_protection(machine: Machine, mm: MM, vma: VMA, start: int, end: int) -> None:
    """Apply vma's protection to [start, end): a covered PMD whole, a partial one split first."""
    for addr, next_addr, whole_pmd in pmd_ranges(machine, mm, start, end):
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
