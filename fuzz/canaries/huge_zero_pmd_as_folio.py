"""fork copies the huge zero PMD as if it mapped an anon PMD THP (copy_huge_pmd without
its is_huge_zero_pmd case): the child's entry takes a reference and the entire mapping
on the huge zero folio's head, and counts 512 pages in the child's MM_ANONPAGES."""

from machine import check
from machine.errors import EBUSY, OK
from machine.pgtable import (
    HPAGE_PMD_NR,
    pmd_trans_huge,
    pte_clear_uffd_wp,
    pte_mkold,
    pte_pfn,
    pte_write,
    pte_wrprotect,
)

from . import load_batched_copy, plant, submodule

batched = load_batched_copy(__name__ + "_batched")
huge_memory = submodule(batched, "huge_memory")


def copy_huge_pmd(machine, dst_mm, dst_vma, src_mm, src_vma, haddr):
    pmd = machine.pmdp_get(src_mm, haddr)
    check(pmd_trans_huge(pmd), "copy_huge_pmd without a PMD block at %#x", haddr)
    folio = int(pte_pfn(pmd))   # planted: the huge zero folio taken for an anon THP
    huge_memory.folio_get(machine, folio)
    if huge_memory.folio_try_dup_anon_rmap_pmd(machine, folio, dst_mm, src_mm) == EBUSY:
        huge_memory.folio_put(machine, folio)
        huge_memory.split_huge_pmd_locked(machine, src_mm, src_vma, haddr)
        return huge_memory.FALLBACK
    dst_mm.rss_anon += HPAGE_PMD_NR
    if pte_write(pmd):
        machine.pmdp_set_wrprotect(src_mm, haddr)
        pmd = pte_wrprotect(pmd)
    if not dst_vma.uffd_wp:
        pmd = pte_clear_uffd_wp(pmd)
    machine.set_pmd_at(dst_mm, haddr, pte_mkold(pmd))
    return OK


plant(batched, "huge_memory", "copy_huge_pmd", copy_huge_pmd)
Kernel = batched.Kernel
