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

from .observe import MARKER, PRESENT, SWAP, ZERO, Difference, Observation


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


def _zero_page(difference: Difference, context: OpContext) -> bool:
    """A read fault maps the shared zero page where the model maps nothing (or keeps a uffd-wp
    marker, which the kernel's zero page takes over with its bit)."""
    return difference.field == "state" and difference.model in ("none", MARKER) and difference.kernel == ZERO


def _split_zero_page(difference: Difference, context: OpContext) -> bool:
    """A folio split to order 0 maps each all-zero page to the shared zero page
    (remap_page(..., RMP_USE_SHARED_ZEROPAGE)) where the model keeps the page: in a
    `split ... order=0`, in the split MADV_FREE makes of a large folio its range covers in
    part, or in the split MADV_PAGEOUT makes of a partially mapped large folio (where the
    model then swaps the zero page's data out)."""
    if difference.field != "state" or difference.kernel != ZERO:
        return False
    op = context.op
    key = (difference.process, difference.addr)
    if op.name == "split" and (op.order or 0) == 0 and difference.model == PRESENT:
        view = context.model_after.get(key)
        return view is not None and view.value == 0
    if op.name == "free" and difference.model == PRESENT:
        return _split_by_free(context, key) and context.model_after[key].value == 0
    if op.name == "reclaim" and difference.model == SWAP:
        before = context.model_before.get(key)
        return before is not None and before.state == PRESENT and before.order > 0 and before.value == 0
    return False


def _split_by_free(context: OpContext, key: tuple[int, int]) -> bool:
    """MADV_FREE split the large folio mapped at key (present before in a large folio, after in an order-0 one)."""
    before, after = context.model_before.get(key), context.model_after.get(key)
    return (before is not None and after is not None and before.state == PRESENT and after.state == PRESENT
            and before.order > 0 and after.order == 0)


def _split_old_ptes(difference: Difference, context: OpContext) -> bool:
    """The kernel's folio split remaps its PTEs old (access bit clear) where the model keeps them young
    (a `split`, or the split MADV_FREE makes of a large folio its range covers in part)."""
    if difference.field != "young" or difference.model is not True or difference.kernel is not False:
        return False
    return context.op.name == "split" or (
        context.op.name == "free" and _split_by_free(context, (difference.process, difference.addr)))


def _contpte_folding(difference: Difference, context: OpContext) -> bool:
    """The model folds contpte blocks canonically; the kernel only where its writers fold them.

    The CONT bit itself, and the young and dirty bits that ptep_get() gathers over a folded block.
    """
    if difference.field == "cont":
        return True
    if difference.field not in ("young", "dirty"):
        return False
    key = (difference.process, difference.addr)
    model, kernel = context.model_after.get(key), context.kernel_after.get(key)
    return (model is not None and kernel is not None and model.state == kernel.state == PRESENT
            and model.cont != kernel.cont)


def _mmap_overlap(difference: Difference, context: OpContext) -> bool:
    """mmap over an existing mapping: the model says EINVAL, MAP_FIXED_NOREPLACE says EEXIST."""
    return (context.op.name == "mmap" and difference.field == "result"
            and difference.model == "EINVAL" and difference.kernel == "EEXIST")


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


def _swap_cache(difference: Difference, context: OpContext) -> bool:
    """A swap-in of a non-exclusive swap entry (one fork shared) goes through the swap cache:
    the kernel finds or leaves the folio there and maps it not exclusive (so not writable,
    and a reference more while it stays cached); the model, without a swap cache, makes a
    fresh exclusive page, dirty as after folio_free_swap. Explains the faulting page's
    exclusivity, write bit, refcount and PG_dirty (clean while the swap cache holds it)."""
    if not _swap_in_of(context):
        return False
    op = context.op
    key = (op.process or 0, op.addr or 0)
    if (difference.process, difference.addr) != key:
        return False
    kernel = context.kernel_after.get(key)
    return (not context.model_before[key].exclusive and kernel is not None and kernel.state == PRESENT
            and not kernel.exclusive
            and difference.field in ("exclusive", "writable", "dirty", "refcount", "folio_dirty"))


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
    """A swap-in of an entry of a swapped-out large folio: the kernel brings the folio back whole
    (a 64 KiB one), the model one order-0 page."""
    if not _swap_in_of(context):
        return False
    key = (difference.process, difference.addr)
    before = context.model_before.get(key)
    kernel = context.kernel_after.get(key)
    return (before is not None and before.state == SWAP and kernel is not None and kernel.state == PRESENT
            and kernel.order > 0 and difference.process == context.op.process)


DEVIATIONS: tuple[Deviation, ...] = (
    Deviation("zero-page", "No zero page: a read of an unpopulated address maps nothing", _zero_page),
    Deviation("split-zero-page", "A folio split to order 0 keeps all-zero pages mapped", _split_zero_page),
    Deviation("split-old-ptes", "A folio split remaps PTEs with their access bit", _split_old_ptes),
    Deviation("mmap-overlap", "mmap over an existing mapping is EINVAL", _mmap_overlap),
    Deviation("pmd-fault-needs-pmd-none", "An order-9 fault needs only no PMD block and all 512 entries 0",
              _pmd_fault_needs_pmd_none),
    Deviation("swap-cache", "No swap cache: every swap-in makes a fresh exclusive order-0 folio", _swap_cache),
    Deviation("vma-merge", "mmap never merges (each call is a new lineage)", _vma_merge),
    Deviation("large-swapin", "Every swap-in makes an order-0 folio", _large_swapin),
    Deviation("contpte-folding", "contpte: canonical folding at the end of each op", _contpte_folding),
)


def explain(difference: Difference, context: OpContext) -> str | None:
    """The id of the first deviation that explains difference, or None."""
    for deviation in DEVIATIONS:
        if deviation.explains(difference, context):
            return deviation.id
    return None
