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
    model_vmas: tuple[tuple[int, int], ...] = ()   # the op's process's VMAs on the model after it


@dataclass(frozen=True)
class Deviation:
    """A named simplification of the model and the differences it explains."""

    id: str
    model_rule: str                                        # the docs/model.md row, in short
    explains: Callable[[Difference, OpContext], bool]


def _pmd_fault_needs_pmd_none(difference: Difference, context: OpContext) -> bool:
    """An order-9 fault where a PTE table is left: the model maps a PMD, the kernel an mTHP.

    Every difference on a page of that 2 MiB range of the faulting process is this one fact.
    """
    op = context.op
    if op.name != "fault" or op.order != 9 or difference.process != op.process:
        return False
    start = (op.addr or 0) & ~(PMD_SIZE - 1)
    if not start <= difference.addr < start + PMD_SIZE:
        return False
    model = context.model_after.get((op.process, op.addr or 0))
    kernel = context.kernel_after.get((op.process, op.addr or 0))
    return (model is not None and model.level == "pmd" and
            (kernel is None or kernel.state != PRESENT or kernel.level != "pmd"))


def _swap_in_of(context: OpContext) -> bool:
    """The op swaps in the page at its address on the model (a write, read or fault at a swap entry)."""
    op = context.op
    view = context.model_before.get((op.process or 0, op.addr or 0))
    return op.name in ("write", "read", "fault", "pin") and view is not None and view.state == SWAP


def _vma_merge(difference: Difference, context: OpContext) -> bool:
    """The model never merges an mmap with its neighbours; the kernel merges VMAs without an
    anon_vma yet, so a fault may find a larger aligned range inside one VMA. Explains every
    field of the pages of the kernel's (larger) folio when its range crosses a model VMA edge."""
    op = context.op
    if op.name != "fault" or difference.process != op.process:
        return False
    kernel = context.kernel_after.get((op.process, op.addr or 0))
    model = context.model_after.get((op.process, op.addr or 0))
    if kernel is None or kernel.state != PRESENT or (model is not None and model.order >= kernel.order):
        return False
    size = PAGE_SIZE << kernel.order
    start = (op.addr or 0) & ~(size - 1)
    crosses = any(start < vma_start < start + size for vma_start, _end in context.model_vmas)
    return crosses and start <= difference.addr < start + size


def _large_swapin(difference: Difference, context: OpContext) -> bool:
    """A swap-in of an entry of a swapped-out large folio whose slots other processes' entries
    share: the kernel brings the folio back whole into the swap cache (a write fault then
    copies the faulting page), the model one order-0 page (it swaps in whole only a run no
    other entry shares). Explains the op's process's pages of the kernel folio around the op's
    address that were swap entries, and the slot identities of the other processes' entries
    there (named by the op's process's entries on the model, by their own on the kernel)."""
    if not _swap_in_of(context):
        return False
    op = context.op
    process, addr = op.process or 0, op.addr or 0
    kernel = context.kernel_after.get((process, difference.addr))
    before = context.model_before.get((process, difference.addr))
    if kernel is None or kernel.state != PRESENT or kernel.order == 0 or before is None or before.state != SWAP:
        return False
    size = PAGE_SIZE << kernel.order
    if difference.addr & ~(size - 1) != addr & ~(size - 1):
        return False
    return difference.process == process or difference.field == "slot"


DEVIATIONS: tuple[Deviation, ...] = (
    Deviation("pmd-fault-needs-pmd-none", "An order-9 fault needs only no PMD block and all 512 entries 0",
              _pmd_fault_needs_pmd_none),
    Deviation("vma-merge", "mmap never merges (each call is a new lineage)", _vma_merge),
    Deviation("large-swapin", "A run of swap entries other entries share is swapped in one page at a time",
              _large_swapin),
)


def explain(difference: Difference, context: OpContext) -> str | None:
    """The id of the first deviation that explains difference, or None."""
    for deviation in DEVIATIONS:
        if deviation.explains(difference, context):
            return deviation.id
    return None
