"""zap's batches are bounded by the PTE table only, not by the end of the range (the VMA or
the munmap/dontneed end), so entries past it are zapped too."""

from machine.pgtable import PAGE_SHIFT, PMD_SIZE, is_swap_pte, pte_present

from . import load_batched_copy, plant, submodule

batched = load_batched_copy(__name__ + "_batched")
memory = submodule(batched, "memory")
internal = submodule(batched, "internal")


def zap_pte_range(machine, mm, vma, start, end, drop_markers):
    if mm.pte_table(start) is None:
        return
    table_end = (start & ~(PMD_SIZE - 1)) + PMD_SIZE
    ptes = machine.ptes_get(mm, start, (table_end - start) >> PAGE_SHIFT)  # planted: not end
    if pte_present(ptes).any():
        batches = internal.folio_pte_batch(machine, mm, start, ptes, internal.FPB_ZAP)
        memory.zap_present_ptes(machine, mm, batches)
        if vma.file is not None and not drop_markers:
            memory.filemap.install_uffd_wp_ptes_if_needed(machine, mm, vma, batches.runs, batches.pte)
    if is_swap_pte(ptes).any():
        memory.zap_nonpresent_ptes(machine, mm, internal.swap_pte_batch(start, ptes))


plant(batched, "memory", "zap_pte_range", zap_pte_range)
Kernel = batched.Kernel
