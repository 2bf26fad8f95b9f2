"""Known deviations: each (model) simplification of docs/model.md, with the one pattern it explains.

When the kernel and the model first differ after an op, every differing field
must be explained by a deviation here, or the script disagrees. A matcher
looks at one difference in the context of its op and says whether its
simplification accounts for it; it never hides a field or a script wholesale.
Once a deviation has explained an op, the two states have legitimately parted
and the script's later ops are not compared.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from fuzz.script.ops import Op
from machine.pgtable import PAGE_SIZE, PMD_SIZE

from .observe import PRESENT, SWAP, Difference, Observation


@dataclass(frozen=True)
class OpContext:
    """What a matcher may look at: the op, and both sides' observations around it."""

    op: Op
    model_before: Observation
    model_after: Observation
    kernel_before: Observation
    kernel_after: Observation
    model_vmas: tuple[tuple[int, int, int], ...] = ()   # the op's process's VMAs on the model after it:
    #                                                       (start, end, anon_vma)


@dataclass(frozen=True)
class Deviation:
    """A named simplification of the model and the differences it explains."""

    id: str
    model_rule: str                                        # the docs/model.md row, in short
    explains: Callable[[Difference, OpContext], bool]


def _pmd_fault_needs_pmd_none(difference: Difference, context: OpContext) -> bool:
    """An order-9 fault (or read: the huge zero folio) where a PTE table is left: the model
    maps a PMD, the kernel an mTHP (the zero page).

    Every difference on a page of that 2 MiB range of the faulting process is this one fact.
    """
    op = context.op
    if op.name not in ("fault", "read") or op.order != 9 or difference.process != op.process:
        return False
    start = (op.addr or 0) & ~(PMD_SIZE - 1)
    if not start <= difference.addr < start + PMD_SIZE:
        return False
    model = context.model_after.get((op.process, op.addr or 0))
    kernel = context.kernel_after.get((op.process, op.addr or 0))
    if op.name == "read":
        return model is not None and model.level == "pmd" and (kernel is None or kernel.level != "pmd")
    return (model is not None and model.level == "pmd" and
            (kernel is None or kernel.state != PRESENT or kernel.level != "pmd"))


def _swap_slot_placement(difference: Difference, context: OpContext) -> bool:
    """The model allocates the lowest free aligned run of slots, the kernel's cluster
    allocator others: a `fault`'s swap-in of a run of consecutive slots then passes
    thp_swap_suitable_orders (first slot aligned as the address) on one side only. Explains
    the op's process's pages of the kernel's larger folio, when on both sides every entry of
    its range was the swap PTE of consecutive slots and only the model's alignment fails."""
    op = context.op
    process, addr = op.process or 0, op.addr or 0
    if op.name != "fault":
        return False
    kernel, model = context.kernel_after.get((process, addr)), context.model_after.get((process, addr))
    if kernel is None or model is None or kernel.state != PRESENT or model.state != PRESENT:
        return False
    if kernel.order <= model.order:
        return False
    nr_pages = 1 << kernel.order
    start = addr & ~((PAGE_SIZE << kernel.order) - 1)
    if not start <= difference.addr < start + (PAGE_SIZE << kernel.order):
        return False
    runs = []
    for before in (context.model_before, context.kernel_before):
        views = [before.get((process, start + i * PAGE_SIZE)) for i in range(nr_pages)]
        if any(view is None or view.state != SWAP for view in views):
            return False
        slots = [view.slot for view in views if view is not None]
        if slots != list(range(slots[0], slots[0] + nr_pages)):
            return False
        runs.append(slots[0])
    model_first, kernel_first = runs
    return model_first % nr_pages != 0 and kernel_first % nr_pages == 0


def _vma_merge(difference: Difference, context: OpContext) -> bool:
    """The model never merges an mmap with its neighbours; the kernel does (vma_merge_new_range):
    a fault may find a larger aligned range inside the merged VMA (_vma_merge_fault), and fork
    copies the page tables of a part that had no anon_vma of its own (_vma_merge_fork)."""
    return _vma_merge_fault(difference, context) or _vma_merge_fork(difference, context)


def _vma_merge_fault(difference: Difference, context: OpContext) -> bool:
    """Explains every field of the pages of the kernel's (larger) folio when its range crosses
    a model VMA edge."""
    op = context.op
    if op.name != "fault" or difference.process != op.process:
        return False
    kernel = context.kernel_after.get((op.process, op.addr or 0))
    model = context.model_after.get((op.process, op.addr or 0))
    if kernel is None or kernel.state != PRESENT or (model is not None and model.order >= kernel.order):
        return False
    size = PAGE_SIZE << kernel.order
    start = (op.addr or 0) & ~(size - 1)
    crosses = any(start < vma_start < start + size for vma_start, _end, _anon_vma in context.model_vmas)
    return crosses and start <= difference.addr < start + size


def _vma_merge_fork(difference: Difference, context: OpContext) -> bool:
    """The kernel's merged VMA has the anon_vma one of its parts had, so fork copies the page
    tables of a part without one too (vma_needs_copy), where the model's child faults later:
    explains a child's page that is mapped on the kernel alone, in a model VMA of the parent
    without an anon_vma that touches one with an anon_vma."""
    op = context.op
    if op.name != "fork" or difference.process == op.process:
        return False
    model = context.model_after.get((difference.process, difference.addr))
    kernel = context.kernel_after.get((difference.process, difference.addr))
    if model is not None or kernel is None:
        return False
    vmas = context.model_vmas
    for index, (start, end, anon_vma) in enumerate(vmas):
        if start <= difference.addr < end:
            neighbours = vmas[max(index - 1, 0):index] + vmas[index + 1:index + 2]
            return not anon_vma and any(other_anon_vma and (other_end == start or other_start == end)
                                        for other_start, other_end, other_anon_vma in neighbours)
    return False


DEVIATIONS: tuple[Deviation, ...] = (
    Deviation("pmd-fault-needs-pmd-none", "An order-9 fault needs only no PMD block and all 512 entries 0",
              _pmd_fault_needs_pmd_none),
    Deviation("vma-merge", "mmap never merges (each call is a new lineage)", _vma_merge),
    Deviation("swap-slot-placement", "Swap slots: the lowest free aligned run", _swap_slot_placement),
)


def explain(difference: Difference, context: OpContext) -> str | None:
    """The id of the first deviation that explains difference, or None."""
    for deviation in DEVIATIONS:
        if deviation.explains(difference, context):
            return deviation.id
    return None
