"""fork copies the zero page as if it were an anon folio (copy_present_ptes without the
vm_normal_page NULL case): the child's entries take references and rmap on the zero
page's frame, and count in the child's MM_ANONPAGES."""

from machine import any_set
from machine.errors import OK
from machine.pgtable import PAGE_SHIFT, is_swap_slot_pte, pte_present

from . import load_batched_copy, plant, submodule

batched = load_batched_copy(__name__ + "_batched")
memory = submodule(batched, "memory")
internal = submodule(batched, "internal")


def copy_pte_range(machine, dst_mm, dst_vma, src_mm, start, end):
    if src_mm.pte_table(start) is None:
        return OK
    ptes = machine.ptes_get(src_mm, start, (end - start) >> PAGE_SHIFT)
    if not any_set(ptes):
        return OK
    if any_set(is_swap_slot_pte(ptes)):
        memory.copy_nonpresent_ptes(machine, dst_mm, dst_vma, src_mm, internal.swap_pte_batch(start, ptes))
    if not any_set(pte_present(ptes)):
        return OK
    batches = internal.folio_pte_batch(machine, src_mm, start, ptes, internal.FPB_FORK)  # planted: zero page too
    failed = memory.copy_present_ptes(machine, dst_mm, dst_vma, src_mm, batches)
    if not any_set(failed):
        return OK
    singles, addrs, exclusive_pages = memory.split_failed_batches(machine, batches.select(failed))
    memory.copy_present_ptes(machine, dst_mm, dst_vma, src_mm, singles)
    return memory.copy_present_pages(machine, dst_mm, dst_vma, addrs, exclusive_pages, batches.runs.addr)


plant(batched, "memory", "copy_pte_range", copy_pte_range)
Kernel = batched.Kernel
