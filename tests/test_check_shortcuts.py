"""The checks' shortcuts (issue 16) still fire: a difference planted where a shortcut does
not look in detail (the reserved frames' fields; any frame, swap slot, leaf or counter the
comparison first compares whole) is caught as the whole check catches it."""

from __future__ import annotations

import numpy as np
import pytest

from fuzz.judge.compare import compare_machines
from fuzz.judge.oracles import ORACLES
from fuzz.judge.scan import PageTableScan, reserved_frames_pristine
from fuzz.judge.shadow import Shadow
from machine import VMA, Machine
from machine.frames import FrameTable

NR_FRAMES = (256, 300, 4096)


def planted(array: np.ndarray, index: int) -> None:
    """Change array's value at index (a whole row for a two-dimensional field)."""
    if array.dtype == np.bool_:
        array[index] = ~array[index]
    else:
        array[index] = array[index] + 1


@pytest.mark.parametrize("nr_frames", NR_FRAMES)
@pytest.mark.parametrize("name", FrameTable.ARRAYS)
def test_a_field_changed_on_any_reserved_frame_is_caught(nr_frames, name):
    for pfn in ("padding", "huge_zero", "zero"):
        machine = Machine(nr_frames)
        frames = machine.frames
        index = {"padding": frames.nr_frames, "huge_zero": frames.huge_zero_pfn + 5, "zero": frames.zero_pfn}[pfn]
        if pfn == "padding" and index == frames.huge_zero_pfn:
            continue   # no padding frame at this size
        assert reserved_frames_pristine(frames)
        planted(getattr(frames, name), index)
        assert not reserved_frames_pristine(frames)
        failures = ORACLES["zero_page"].check(machine, Shadow(), PageTableScan(machine))
        assert any(f"pfn {index} " in failure and name in failure for failure in failures), failures


@pytest.mark.parametrize("name", FrameTable.ARRAYS)
def test_the_comparison_catches_a_field_changed_on_any_frame(name):
    for pfn, where in ((0, ""), (1234, ""), (4095, ""), (4096 + 5, " (huge zero folio)"), (4096 + 512, " (zero page)")):
        a, b = Machine(4096), Machine(4096)
        planted(getattr(b.frames, name), pfn)
        assert [(difference.where, difference.field) for difference in compare_machines(a, b)] == \
            [(f"pfn {pfn}{where}", name)]


@pytest.mark.parametrize("name", ("swap_data", "swap_count"))
def test_the_comparison_catches_a_swap_slot_changed_anywhere(name):
    a, b = Machine(4096), Machine(4096)
    planted(getattr(b.swap, name), 4000)
    assert [(difference.where, difference.field) for difference in compare_machines(a, b)] == [("slot 4000", name)]


@pytest.mark.parametrize("field", ("anon_vma", "anon_vma_fork_child", "account"))
def test_the_comparison_catches_a_vmas_anon_vma_fork_child_mark_or_vm_account(field):
    a, b = Machine(256), Machine(256)
    for machine in (a, b):
        machine.processes[0].vma_insert(VMA(0x200000, 0x210000, True, 0, anon_vma=1))
    vma = b.processes[0].vmas[0]
    setattr(vma, field, 2 if field == "anon_vma" else True)
    differences = compare_machines(a, b)
    assert differences and all(difference.where.startswith("P0") for difference in differences), differences
