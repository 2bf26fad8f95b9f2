"""arm64's range writers (arch/arm64/include/asm/pgtable.h, arch/arm64/mm/contpte.c) as the
reference writes them: each entry through a single-entry primitive, then the writer's effect
on the contpte blocks stated one block at a time (docs/model.md #93)."""

from __future__ import annotations

from machine import Machine
from machine.mm import MM
from machine.pgtable import (
    CONT_PTE_SIZE, CONT_PTES, PAGE_SHIFT, PAGE_SIZE, pte_advance_pfn, pte_mknoncont, pte_pfn,
    pte_present,
)


def set_ptes(machine: Machine, mm: MM, addr: int, pte: int, nr_pages: int) -> None:
    """set_ptes: one entry is set_pte_at (which may fold its block); more (contpte_set_ptes,
    over none entries) are written as they are, then CONT set on each block the run covers
    wholly whose first pfn is a multiple of 16."""
    if nr_pages == 1:
        machine.set_pte_at(mm, addr, pte)
        return
    pte = pte_mknoncont(pte)
    for i in range(nr_pages):
        machine.set_pte_raw(mm, addr + (i << PAGE_SHIFT), pte_advance_pfn(pte, i))
    if not pte_present(pte):
        return
    end = addr + (nr_pages << PAGE_SHIFT)
    for block in range(addr, end, PAGE_SIZE):
        first_pfn = pte_pfn(pte) + ((block - addr) >> PAGE_SHIFT)
        if block % CONT_PTE_SIZE == 0 and block + CONT_PTE_SIZE <= end and first_pfn % CONT_PTES == 0:
            machine.contpte_mkcont_block(mm, block)


def get_and_clear_ptes(machine: Machine, mm: MM, addr: int, nr_pages: int) -> list[int]:
    """get_and_clear_full_ptes' clearing, entry by entry: one entry is ptep_get_and_clear
    (unfolding its block); more unfold only the blocks they cover partly
    (contpte_try_unfold_partial) and clear whole blocks folded. Returns each entry cleared."""
    if nr_pages == 1:
        return [machine.ptep_get_and_clear(mm, addr)]
    machine.contpte_try_unfold_partial(mm, addr, nr_pages)
    return [machine.ptep_get_and_clear_raw(mm, addr + (i << PAGE_SHIFT)) for i in range(nr_pages)]
