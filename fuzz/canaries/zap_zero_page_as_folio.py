"""zap batches the zero page as if it were an anon folio (vm_normal_page's special test
forgotten): its entries go through rmap removal and reference drops of the zero page's
frame, and count against MM_ANONPAGES."""

import numpy as np

from machine import any_set
from machine.pgtable import PAGE_SHIFT, is_pte_marker, is_swap_slot_pte, pte_present

from . import load_batched_copy, plant, submodule

batched = load_batched_copy(__name__ + "_batched")
memory = submodule(batched, "memory")
internal = submodule(batched, "internal")


def zap_pte_range(machine, mm, vma, start, end, drop_markers):
    if mm.pte_table(start) is None:
        return
    ptes = machine.ptes_get(mm, start, (end - start) >> PAGE_SHIFT)
    if not any_set(ptes):
        return
    keep_markers = vma.file is not None and not drop_markers
    if any_set(pte_present(ptes)):   # planted: the zero page batched with the folios
        batches = internal.folio_pte_batch(machine, mm, start, ptes, internal.FPB_ZAP)
        memory.zap_present_ptes(machine, mm, batches)
        if keep_markers:
            memory.filemap.install_uffd_wp_ptes_if_needed(machine, mm, vma, batches.runs, batches.pte)
    if any_set(is_swap_slot_pte(ptes)):
        swap_batches = internal.swap_pte_batch(start, ptes)
        memory.zap_nonpresent_ptes(machine, mm, swap_batches)
        if keep_markers:
            memory.filemap.install_uffd_wp_ptes_if_needed(machine, mm, vma, swap_batches.runs, swap_batches.pte)
    markers = is_pte_marker(ptes)
    if any_set(markers) and not keep_markers:
        memory.zap_pte_markers(machine, mm, start, np.flatnonzero(markers))


plant(batched, "memory", "zap_pte_range", zap_pte_range)
Kernel = batched.Kernel
