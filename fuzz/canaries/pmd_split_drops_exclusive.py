"""PMD split maps the 512 PTEs without propagating the head's PageAnonExclusive to the
tail pages (only the head stays exclusive)."""

import numpy as np

from machine.pgtable import HPAGE_PMD_NR, pte_pfn

from . import load_batched_copy, plant, submodule

batched = load_batched_copy(__name__ + "_batched")
huge_memory = submodule(batched, "huge_memory")


def split_huge_pmd_locked(machine, mm, vma, haddr):
    pmd = machine.pmdp_get_and_clear(mm, haddr)
    folio = int(pte_pfn(pmd))
    frames = machine.frames
    anon_exclusive = bool(frames.page_anon_exclusive[folio])
    frames.folio_refcount[folio] += HPAGE_PMD_NR - 1
    huge_memory.folios_add_anon_rmap_ptes(machine, np.array([folio]), np.array([folio]), np.array([HPAGE_PMD_NR]),
                                          mm, np.array([False]))  # planted: RMAP_NONE for every page
    frames.page_anon_exclusive[folio] = anon_exclusive  # ... and the head keeps its own bit
    machine.set_ptes(mm, haddr, int(huge_memory.split_entries(pmd, folio, vma)), HPAGE_PMD_NR)
    huge_memory.folio_remove_rmap_pmd(machine, folio, mm)


plant(batched, "huge_memory", "split_huge_pmd_locked", split_huge_pmd_locked)
Kernel = batched.Kernel
