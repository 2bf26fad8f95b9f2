"""Descriptor values the machine tests build states from (SPEC §2.3)."""

from machine.pgtable import pfn_pte, pte_mkdirty, pte_mkwrite, vm_get_page_prot

BASE_PROT = vm_get_page_prot(True)


def fault_pte(pfn: int) -> int:
    """The fault value: base + DIRTY + WRITE - RDONLY."""
    return pte_mkwrite(pte_mkdirty(pfn_pte(pfn, BASE_PROT)))
