"""The runner's state checks share the oracles' verdict between two machines only when the
oracles read the same on both: a fault that compare_machines cannot see is still found on
the machine that has it."""

from __future__ import annotations

import types

import pytest

import reference
from fuzz.judge.compare import compare_machines
from fuzz.judge.oracles import check_oracles, same_oracle_inputs
from fuzz.judge.runner import run_script
from fuzz.judge.shadow import Shadow
from fuzz.script.ops import parse_script
from machine import Machine
from machine.pgtable import PAGE_SHIFT, PMD_TYPE_TABLE

SCRIPT = """\
frames 64
mmap P0 0x200000 64K
mmap P0 0x400000 64K ro
write P0 0x200000 7
fork P0
write P1 0x201000 9
read P0 0x200000
"""
FREE_PMD_INDEX = 7   # a PMD entry the script leaves empty (0xe00000 lies in no VMA)


class VmasReversedKernel(reference.Kernel):
    """The reference, but read leaves the process's VMA list out of order (same VMAs)."""

    def read(self, pid, addr):
        result = super().read(pid, addr)
        self.machine.processes[pid].vmas.reverse()
        return result


class OrphanTableKernel(reference.Kernel):
    """The reference, but read leaves a table descriptor that has no PTE table."""

    def read(self, pid, addr):
        result = super().read(pid, addr)
        pmd_table = next(self.machine.processes[pid].pmd_tables())
        pmd_table.entries[FREE_PMD_INDEX] = PMD_TYPE_TABLE | (0x1234 << PAGE_SHIFT)
        return result


def implementation(name, kernel_class):
    module = types.ModuleType(name)
    module.Kernel = kernel_class
    return module


def run_to_end(kernel_class) -> tuple[Machine, Shadow]:
    """The script's machine and shadow after running it on kernel_class alone."""
    script = parse_script(SCRIPT, "t.ops")
    machine = Machine(script.frames)
    kernel, shadow = kernel_class(machine), Shadow()
    for op in script.steps:
        result = getattr(kernel, op.name)(*_arguments(op))
        shadow.apply(op, result, machine)
    return machine, shadow


def _arguments(op):
    if op.name == "mmap":
        return op.process, op.addr, op.length, op.prot
    if op.name == "write":
        return op.process, op.addr, op.value
    if op.name == "fork":
        return (op.process,)
    return op.process, op.addr


def test_equal_machines_read_the_same():
    machine, shadow = run_to_end(reference.Kernel)
    other, other_shadow = run_to_end(reference.Kernel)
    assert compare_machines(machine, other) == []
    assert same_oracle_inputs(machine, shadow, other, other_shadow)
    assert check_oracles(machine, shadow) == check_oracles(other, other_shadow) == []


@pytest.mark.parametrize("kernel_class", [VmasReversedKernel, OrphanTableKernel])
def test_a_fault_compare_cannot_see_is_not_shared(kernel_class):
    machine, shadow = run_to_end(reference.Kernel)
    other, other_shadow = run_to_end(kernel_class)
    assert compare_machines(machine, other) == []
    assert not same_oracle_inputs(machine, shadow, other, other_shadow)
    assert [failure.oracle for failure in check_oracles(other, other_shadow)] == ["layout"]


def test_a_different_shadow_is_not_shared():
    machine, shadow = run_to_end(reference.Kernel)
    other, other_shadow = run_to_end(reference.Kernel)
    other_shadow.data[0][0x202000] = 5
    assert not same_oracle_inputs(machine, shadow, other, other_shadow)
    other_shadow = other_shadow.clone()
    other_shadow.data[0].pop(0x202000)
    other_shadow.released[0] = {1}
    assert not same_oracle_inputs(machine, shadow, other, other_shadow)


@pytest.mark.parametrize("check_every_op", [True, False])
@pytest.mark.parametrize("kernel_class, detail", [
    (VmasReversedKernel, "not sorted before or overlaps"),
    (OrphanTableKernel, "is neither a block nor a table with a PTE table"),
])
def test_the_runner_finds_the_oracle_on_the_machine_that_fails_it(kernel_class, detail, check_every_op):
    impl = implementation("faulty", kernel_class)
    result = run_script(parse_script(SCRIPT, "t.ops"), impl=impl, ref="reference",
                        check_every_op=check_every_op)
    [finding] = result.findings
    assert finding.signature == "oracle:read:layout"
    assert finding.impl == "faulty"
    assert detail in finding.detail and finding.detail.startswith("faulty: layout: ")


def test_the_runner_finds_nothing_on_equal_machines():
    result = run_script(parse_script(SCRIPT, "t.ops"), impl="reference", ref="reference",
                        check_every_op=True)
    assert result.findings == [] and result.ops_run == 6
