"""Tests of the harness: machine comparison, expects, the runner and `rmapfuzz replay`.

The kernels here are tiny fakes (order-0 pages only) so that the harness is
tested on its own; oracles and the shadow are replaced by stand-ins.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from fuzz import implementation as interface
from fuzz.engine.decode import ENCODING_VERSION
from fuzz.errors import UsageError
from fuzz.front import cli
from fuzz.implementation import load_implementation
from fuzz.judge import runner
from fuzz.judge.compare import MAX_DIFFERENCES, compare_machines
from fuzz.judge.expects import check_expect
from fuzz.judge.runner import Finding, run_script
from fuzz.script.ops import Expect, Script, ScriptError, parse_script
from machine import VMA, Machine
from machine.errors import EFAULT, ENOMEM, OK, MachineBug
from machine.pgtable import (
    PTE_SWP_EXCLUSIVE,
    pfn_pte,
    pte_mkdirty,
    pte_mkwrite,
    pte_pmd,
    swp_entry_to_pte,
    vm_get_page_prot,
)

MAIN = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------------------
# Fake kernels


class OkKernel:
    """mmap, and order-0 faults on write/fault; every other op succeeds doing nothing."""

    def __init__(self, machine: Machine) -> None:
        self.machine = machine

    def mmap(self, pid, addr, length, prot):
        mm = self.machine.processes[pid]
        if mm.vmas_intersecting(addr, addr + length):
            return "EINVAL"
        mm.vma_insert(VMA(addr, addr + length, prot == "rw", self.machine.lineage_alloc(), account=prot == "rw"))
        return OK

    def _fault_page(self, pid, addr):
        mm = self.machine.processes[pid]
        vma = mm.find_vma(addr)
        if vma is None or not vma.writable:
            return EFAULT
        if self.machine.ptep_get(mm, addr) == 0:
            frames = self.machine.frames
            page = frames.folio_alloc(0)
            if page is None:
                return ENOMEM
            frames.folio_anon[page] = True
            frames.folio_swapbacked[page] = True
            frames.folio_index[page] = addr >> 12
            frames.folio_lineage[page] = vma.lineage
            frames.page_mapcount[page] = self.mapcount()
            frames.page_anon_exclusive[page] = True
            vma.anon_vma = vma.anon_vma or 1
            mm.rss_anon += 1
            self.machine.set_pte_at(mm, addr, self.fault_pte(page))
        return OK

    def mapcount(self):
        return 1

    def fault_pte(self, page):
        return pte_mkwrite(pte_mkdirty(pfn_pte(page, vm_get_page_prot(True))))

    def fault(self, pid, addr, order):
        return self._fault_page(pid, addr)

    def write(self, pid, addr, value):
        result = self._fault_page(pid, addr)
        if result == OK:
            self.machine.user_write(self.machine.processes[pid], addr, value)
        return result

    def read(self, pid, addr):
        mm = self.machine.processes[pid]
        if mm.find_vma(addr) is None:
            return EFAULT
        if self.machine.page_at(mm, addr) is not None:
            self.machine.user_read(mm, addr)
        return OK

    def fork(self, pid):
        child = self.machine.mm_alloc()
        for vma in self.machine.processes[pid].vmas:
            child.vma_insert(VMA(vma.start, vma.end, vma.writable, vma.lineage, anon_vma=vma.anon_vma,
                                 account=vma.account))
        return OK

    def __getattr__(self, name):
        return lambda *args: OK      # munmap, pin, reclaim, ...: nothing to do


class ReadFailsKernel(OkKernel):
    def read(self, pid, addr):
        return ENOMEM


class ForkRaisesKernel(OkKernel):
    def fork(self, pid):
        raise MachineBug("fork: mapcount underflow")


class CleanFaultKernel(OkKernel):
    """Forgets pte_mkdirty on fault: the entries differ in the DIRTY bit."""

    def fault_pte(self, page):
        return pte_mkwrite(pfn_pte(page, vm_get_page_prot(True)))


class DoubleMapcountKernel(OkKernel):
    def mapcount(self):
        return 2


class ForkFailsKernel(OkKernel):
    def fork(self, pid):
        return ENOMEM


def implementation(name, kernel_class):
    module = types.ModuleType(name)
    module.Kernel = kernel_class
    return module


OK_IMPL = implementation("fake_ok", OkKernel)


class StandInShadow:
    def __init__(self):
        self.applied = []

    def apply(self, op, result, machine):
        self.applied.append((op.name, result))


@pytest.fixture(autouse=True)
def stand_ins(monkeypatch):
    """Oracles that always hold and a shadow that only records: the runner is tested alone
    (and checks the oracles on both machines: tests/test_check_state.py covers sharing them)."""
    monkeypatch.setattr(runner, "check_oracles", lambda machine, shadow, contpte_verdicts: [])
    monkeypatch.setattr(runner, "same_oracle_inputs", lambda *machines_and_shadows: False)
    monkeypatch.setattr(runner, "Shadow", StandInShadow)


def script(text, path="t.ops"):
    return parse_script(text, path)


WRITE_SCRIPT = """\
frames 64
mmap P0 0x200000 64K
write P0 0x200000 7
read P0 0x200000
expect P0 0x200000 value=7 state=present
expect result=ok
"""


# ---------------------------------------------------------------------------
# The runner


def test_identical_implementations_give_no_finding():
    result = run_script(script(WRITE_SCRIPT), impl=OK_IMPL, ref=OK_IMPL)
    assert result.findings == []
    assert result.ok
    assert result.ops_run == 3
    assert result.results == [OK, OK, OK]


def test_differing_result_code_is_a_divergence_on_result():
    result = run_script(script(WRITE_SCRIPT), impl=implementation("fake_read", ReadFailsKernel),
                        ref=OK_IMPL)
    [finding] = result.findings
    assert (finding.kind, finding.op_name, finding.field) == ("divergence", "read", "result")
    assert finding.signature == "divergence:read:result"
    assert finding.line == 4 and finding.impl == "fake_read"
    assert "fake_ok=ok" in finding.detail and "fake_read=ENOMEM" in finding.detail


def test_kernel_that_raises_is_an_exception_finding():
    text = "mmap P0 0x200000 64K\nfork P0\nwrite P0 0x200000 1\n"
    result = run_script(script(text), impl=implementation("fake_raise", ForkRaisesKernel), ref=OK_IMPL)
    [finding] = result.findings
    assert finding.signature == "exception:fork:MachineBug"
    assert finding.impl == "fake_raise" and finding.line == 2
    assert "fork: mapcount underflow" in finding.detail
    assert result.ops_run == 2
    assert "fake_raise raised MachineBug" in finding.report()


def test_kernel_returning_a_non_result_is_an_exception_finding():
    class NoneKernel(OkKernel):
        def read(self, pid, addr):
            return None

    result = run_script(script(WRITE_SCRIPT), impl=implementation("fake_none", NoneKernel), ref=OK_IMPL)
    assert result.findings[0].signature == "exception:read:result"


def test_failing_expect_is_an_expect_finding():
    text = "mmap P0 0x200000 64K\nwrite P0 0x200000 7\nexpect P0 0x200000 state=present value=8\n"
    result = run_script(script(text), impl=OK_IMPL, ref=OK_IMPL)
    [finding] = result.findings
    assert finding.kind == "expect"
    assert finding.signature == "expect:write:value"
    assert finding.line == 3
    assert "expected 8, got 7" in finding.detail
    report = finding.report()
    assert report.startswith("t.ops:3: expect fails")
    assert "write P0 0x200000 7" in report


def test_failing_result_expect_names_the_result():
    text = "mmap P0 0x200000 4K\nwrite P0 0x900000 1\nexpect result=ok\n"
    [finding] = run_script(script(text), impl=OK_IMPL, ref=OK_IMPL).findings
    assert finding.signature == "expect:write:result"
    assert "expected ok, got EFAULT" in finding.detail


def test_state_difference_is_a_divergence_naming_the_entry():
    impl = implementation("fake_clean", CleanFaultKernel)
    result = run_script(script(WRITE_SCRIPT), impl=impl, ref=OK_IMPL)
    [finding] = result.findings
    assert finding.signature == "divergence:write:pte"
    assert finding.differences[0].where == "P0 0x200000"
    report = finding.report()
    assert "t.ops:3" in report and "P0 0x200000: pte: fake_ok=" in report
    assert "states first differ after op 2 (line 3): write P0 0x200000 7" in report


def test_final_difference_is_pinned_to_the_first_op_that_caused_it():
    impl = implementation("fake_mapcount", DoubleMapcountKernel)
    result = run_script(script(WRITE_SCRIPT), impl=impl, ref=OK_IMPL, check_every_op=False)
    [finding] = result.findings
    assert finding.signature == "divergence:write:page_mapcount"
    assert finding.line == 3
    assert finding.differences[0].where == "pfn 0"


class DoubleMapcountMunmapFailsKernel(DoubleMapcountKernel):
    def munmap(self, pid, addr, length):
        return "EINVAL"


@pytest.mark.parametrize("check_every_op", (True, False))
def test_a_later_result_divergence_gives_way_to_an_earlier_state_difference(check_every_op):
    """Fuzzing mode checks states only at the end, so it meets the munmap's result first; its
    finding is pinned by a replay checking every op, which meets the write's state difference
    first: both modes report the signature a replay of the script shows."""
    impl = implementation("fake_mapcount_munmap", DoubleMapcountMunmapFailsKernel)
    text = WRITE_SCRIPT + "munmap P0 0x200000 4K\n"
    [finding] = run_script(script(text), impl=impl, ref=OK_IMPL, check_every_op=check_every_op).findings
    assert finding.signature == "divergence:write:page_mapcount"
    assert finding.line == 3


def test_failing_oracle_is_an_oracle_finding(monkeypatch):
    failure = types.SimpleNamespace(oracle="refcount", detail="pfn 0: refcount 1, expected 2")
    monkeypatch.setattr(runner, "check_oracles",
                        lambda machine, shadow, contpte_verdicts: [failure] if machine.processes[0].rss_anon else [])
    [finding] = run_script(script(WRITE_SCRIPT), impl=OK_IMPL, ref=OK_IMPL).findings
    assert finding.signature == "oracle:write:refcount"
    assert "pfn 0: refcount 1, expected 2" in finding.detail


def test_shadow_sees_every_op_and_its_result(monkeypatch):
    shadows = []

    class RecordingShadow(StandInShadow):
        def __init__(self):
            super().__init__()
            shadows.append(self)

    monkeypatch.setattr(runner, "Shadow", RecordingShadow)
    run_script(script(WRITE_SCRIPT), impl=OK_IMPL, ref=OK_IMPL)
    assert [shadow.applied for shadow in shadows] == [[("mmap", OK), ("write", OK), ("read", OK)]] * 2


class FakeClock:
    """Stands in for the runner's time module: only what the test's kernels spend passes."""

    def __init__(self):
        self.now = 0.0

    def perf_counter(self):
        return self.now


def test_each_part_of_a_run_is_timed_apart(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(runner, "time", clock)

    class SlowWriteKernel(OkKernel):
        def write(self, pid, addr, value):
            clock.now += 5.0
            return super().write(pid, addr, value)

    class SlowReadKernel(OkKernel):
        def read(self, pid, addr):
            clock.now += 2.0
            return super().read(pid, addr)

    def slow_compare(*machines):
        clock.now += 0.25
        return []

    monkeypatch.setattr(runner, "compare_machines", slow_compare)
    result = run_script(script(WRITE_SCRIPT), impl=implementation("slow_write", SlowWriteKernel),
                        ref=implementation("slow_read", SlowReadKernel))
    assert result.ok
    assert result.seconds == {"reference": 2.0, "implementation": 5.0, "decoder": 0.0, "checks": 0.75}


def test_a_stream_run_times_the_decoder_and_a_raising_kernel(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(runner, "time", clock)
    ops = iter(script("mmap P0 0x200000 64K\nfork P0\n").steps)

    def next_op(machine):
        clock.now += 1.0
        return next(ops, None)

    class SlowForkRaisesKernel(OkKernel):
        def fork(self, pid):
            clock.now += 3.0
            raise MachineBug("fork: mapcount underflow")

    result = runner.run_stream(Script(path="t.ops", frames=64, steps=[]),
                               next_op, implementation("slow_raise", SlowForkRaisesKernel), OK_IMPL)
    assert result.findings[0].signature == "exception:fork:MachineBug"
    # the replay that pins the finding (every op checked) runs the raising fork again: a check
    assert result.seconds == {"reference": 0.0, "implementation": 3.0, "decoder": 2.0, "checks": 3.0}


def test_process_missing_at_run_time_is_a_script_error():
    text = "fork P0\nwrite P1 0x200000 1\n"
    impl = implementation("fake_nofork", ForkFailsKernel)
    with pytest.raises(ScriptError) as info:
        run_script(script(text), impl=impl, ref=impl)
    assert str(info.value) == "t.ops:2: unknown process P1"


def test_load_implementation_reports_unknown_names():
    with pytest.raises(UsageError, match="unknown implementation 'no_such_kernel'"):
        load_implementation("no_such_kernel")
    with pytest.raises(UsageError, match="does not expose a Kernel"):
        load_implementation("json")


def test_load_implementation_finds_entry_points(monkeypatch):
    monkeypatch.setitem(sys.modules, "rmapfuzz_test_variant", implementation("rmapfuzz_test_variant", OkKernel))
    entry_point = importlib.metadata.EntryPoint(
        name="variant", value="rmapfuzz_test_variant", group=interface.ENTRY_POINT_GROUP)
    monkeypatch.setattr(interface.importlib.metadata, "entry_points",
                        lambda group: [entry_point] if group == interface.ENTRY_POINT_GROUP else [])
    assert load_implementation("variant").Kernel is OkKernel


def test_finding_signature_is_kind_op_and_field():
    finding = Finding("oracle", "fork", "mapcount", "detail", 3, 4, "batched")
    assert finding.signature == "oracle:fork:mapcount"


# ---------------------------------------------------------------------------
# compare_machines


def test_equal_machines_have_no_difference():
    machine = Machine(64)
    OkKernel(machine).mmap(0, 0x200000, 0x10000, "rw")
    OkKernel(machine).write(0, 0x200000, 5)
    assert compare_machines(machine, machine.snapshot()) == []


def test_planted_frame_difference_names_pfn_and_field():
    machine = Machine(64)
    other = machine.snapshot()
    other.frames.page_mapcount[5] = 1
    other.frames.folio_mm_id[9, 1] = 3
    differences = compare_machines(machine, other)
    assert [(d.where, d.field, d.ref, d.other) for d in differences] == [
        ("pfn 5", "page_mapcount", "0", "1"),
        ("pfn 9", "folio_mm_id", "[0, 0]", "[0, 3]"),
    ]


def test_differences_in_processes_pins_and_slots_are_found():
    machine = Machine(64)
    other = machine.snapshot()
    other.swap.swap_count[2] = 1
    other.processes[0].rss_swap = 1
    other.processes[0].vmas.append(VMA(0x1000, 0x2000, False, 0))
    other.pin_add(0, 0x1000, "ro", (3,))
    other.mm_alloc()
    fields = {(d.where, d.field) for d in compare_machines(machine, other)}
    assert fields == {("machine", "processes"), ("P0 0x1000", "vma"), ("P0", "rss_swap"),
                      ("pin 0", "pin"), ("slot 2", "swap_count"), ("machine", "nr_processes"),
                      ("machine", "nr_pins")}


def test_leaf_differences_name_address_and_level():
    machine = Machine(1024)
    mm = machine.processes[0]
    block = pte_pmd(pfn_pte(512, vm_get_page_prot(True)))
    machine.set_pte_at(mm, 0x200000, pfn_pte(3, vm_get_page_prot(True)))
    machine.set_pmd_at(mm, 0x600000, block)
    other = machine.snapshot()
    other_mm = other.processes[0]
    other.set_pte_at(other_mm, 0x201000, pfn_pte(4, vm_get_page_prot(True)))   # a new entry
    other.set_pte_at(other_mm, 0x800000, pfn_pte(5, vm_get_page_prot(False)))  # in a new PTE table
    other.pmdp_get_and_clear(other_mm, 0x600000)
    other.set_pmd_at(other_mm, 0xa00000, block)
    differences = compare_machines(machine, other)
    assert [(d.where, d.field, d.ref.split(" (")[0], d.other.split(" (")[0]) for d in differences] == [
        ("P0 0x201000", "pte", "none", "pte pfn=4 RDONLY|AF"),
        ("P0 0x600000", "pmd", "pmd pfn=512 RDONLY|AF", "none"),
        ("P0 0x800000", "pte", "none", "pte pfn=5 RDONLY|AF"),
        ("P0 0xa00000", "pmd", "none", "pmd pfn=512 RDONLY|AF"),
    ]


def test_table_descriptors_are_not_compared():
    machine = Machine(64)
    mm = machine.processes[0]
    machine.set_pte_at(mm, 0x200000, pfn_pte(3, vm_get_page_prot(True)))
    other = machine.snapshot()
    pmd_table = next(other.processes[0].pmd_tables())
    pmd_table.entries[1] ^= np.uint64(0x5000)          # the table descriptor's address bits
    assert compare_machines(machine, other) == []


def test_difference_list_is_capped():
    machine = Machine(256)
    other = machine.snapshot()
    other.frames.page_data[:other.frames.nr_frames] = 1
    differences = compare_machines(machine, other)
    assert len(differences) == MAX_DIFFERENCES + 1
    assert differences[-1].where == f"... {256 - MAX_DIFFERENCES} more"


# ---------------------------------------------------------------------------
# Expects


def expect(text):
    """The one expect of text; an expect pin follows a pin op, as the parser asks."""
    *pins, step = parse_script(text if not text.startswith("expect pin") else "pin P0 0 1 rw\n" + text).steps
    assert len(pins) <= 1
    return step


def mapped_machine():
    machine = Machine(1024)
    kernel = OkKernel(machine)
    kernel.mmap(0, 0x200000, 0x400000, "rw")
    kernel.write(0, 0x200000, 7)
    return machine


def test_expect_on_a_present_pte_holds():
    line = ("expect P0 0x200000 value=7 state=present exclusive=yes writable=yes dirty=yes young=yes "
            "level=pte cont=no order=0 mapcount=1 shared=no pinned=no")
    assert check_expect(mapped_machine(), expect(line), OK) == []


def test_expect_reports_each_failing_key():
    failures = check_expect(mapped_machine(), expect("expect P0 0x200000 value=8 writable=no"), OK)
    assert failures == ["P0 0x200000: value: expected 8, got 7",
                        "P0 0x200000: writable: expected no, got yes"]


def test_expect_on_an_empty_entry():
    machine = mapped_machine()
    assert check_expect(machine, expect("expect P0 0x300000 state=none value=0"), OK) == []
    [failure] = check_expect(machine, expect("expect P0 0x300000 exclusive=no"), OK)
    assert "does not apply to an empty entry" in failure


def test_expect_on_a_swap_entry():
    machine = Machine(64)
    mm = machine.processes[0]
    machine.set_pte_at(mm, 0x200000, swp_entry_to_pte(3) | PTE_SWP_EXCLUSIVE)
    machine.swap.swap_data[3] = 9
    machine.swap.swap_count[3] = 1
    assert check_expect(machine, expect("expect P0 0x200000 state=swap value=9 exclusive=yes"), OK) == []
    [failure] = check_expect(machine, expect("expect P0 0x200000 writable=no"), OK)
    assert failure == "P0 0x200000: writable=no: does not apply to a swap entry"


def test_expect_on_a_pmd_block_uses_the_head_and_the_entire_mapcount():
    machine = Machine(1024)
    frames = machine.frames
    head = frames.folio_alloc(9)
    frames.page_anon_exclusive[head] = True
    frames.folio_entire_mapcount[head] = 1
    frames.folio_large_mapcount[head] = 1
    frames.page_data[head + 1] = 11
    pmd = pte_pmd(pte_mkwrite(pte_mkdirty(pfn_pte(head, vm_get_page_prot(True)))))
    machine.set_pmd_at(machine.processes[0], 0x200000, pmd)
    line = "expect P0 0x201000 level=pmd value=11 exclusive=yes mapcount=1 order=9 dirty=yes"
    assert check_expect(machine, expect(line), OK) == []
    [failure] = check_expect(machine, expect("expect P0 0x201000 cont=no"), OK)
    assert "does not apply at pmd level" in failure


def test_same_and_distinct_page():
    machine = mapped_machine()
    child = machine.mm_alloc()
    page = machine.page_at(machine.processes[0], 0x200000)
    machine.set_pte_at(child, 0x200000, pfn_pte(page, vm_get_page_prot(True)))
    machine.set_pte_at(child, 0x201000, pfn_pte(page, vm_get_page_prot(True)))
    script_text = "fork P0\nexpect P0 0x200000 same-page=P1\n"
    same = parse_script(script_text).steps[1]
    assert check_expect(machine, same, OK) == []
    distinct = parse_script("fork P0\nexpect P0 0x200000 distinct-page=P1\n").steps[1]
    assert check_expect(machine, distinct, OK) == ["P0 0x200000: distinct-page=P1: P1 maps the same pfn 0"]


def test_expect_pin():
    machine = mapped_machine()
    mm = machine.processes[0]
    machine.pin_add(0, 0x200000, "rw", (machine.page_at(mm, 0x200000),))
    assert check_expect(machine, expect("expect pin 0 value=7 coherent=yes"), OK) == []
    machine.set_pte_at(mm, 0x200000, 0)
    assert check_expect(machine, expect("expect pin 0 coherent=no"), OK) == []
    [failure] = check_expect(machine, Expect("pin", pin_id=1, keys=(("value", 7),)), OK)
    assert failure == "pin 1: value=7: never issued"
    machine.pin_remove(0)
    [failure] = check_expect(machine, expect("expect pin 0 value=7"), OK)
    assert failure == "pin 0: value=7: already unpinned"


# ---------------------------------------------------------------------------
# The command line


@pytest.fixture
def fake_implementations(monkeypatch):
    """`reference` and `fake_clean` resolve to fake kernels for the CLI."""
    monkeypatch.setitem(sys.modules, "reference", OK_IMPL)
    monkeypatch.setitem(sys.modules, "fake_clean", implementation("fake_clean", CleanFaultKernel))


def write_file(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def one_error_line(capsys):
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, err
    return lines[0]


def test_expect_of_a_pin_whose_pin_op_failed_is_a_script_error() -> None:
    """The parser lets `expect pin 0` follow a pin op; the pin failed, so no id 0 was issued."""
    script = parse_script("frames 16\nmmap P0 0x200000 2M\npin P0 0x200000 17 rw\n"
                          "expect result=ENOMEM\nexpect pin 0 value=0\n", "p.ops")
    with pytest.raises(ScriptError) as info:
        run_script(script, "batched", "reference")
    assert str(info.value) == "p.ops:5: expect pin 0 names a pin id never issued (0 pins issued)"


def test_cli_expect_of_a_pin_never_issued_is_exit_2_with_file_and_line(tmp_path, capsys):
    path = write_file(tmp_path, "pin.ops", "mmap P0 0x200000 2M\npin P0 0x200000 1 rw\nexpect pin 1 value=0\n")
    assert cli.main(["replay", path]) == 2
    assert one_error_line(capsys) == (f"rmapfuzz: {path}:3: expect pin 1 names a pin id never issued "
                                      "(1 pin ops come before it)")


def test_cli_caps_a_huge_token_in_its_error(capsys):
    assert cli.main(["fuzz", "--runs", "9" * 200_000]) == 2
    line = one_error_line(capsys)
    assert line.startswith("rmapfuzz: argument --runs: invalid int value: '9999") and len(line) < 120
    assert cli.main(["fuzz", "--runs", "-" + "9" * 4000]) == 2
    assert len(one_error_line(capsys)) < 120
    assert cli.main(["bench", "--sizes", "9" * 200_000 + "M"]) == 2
    assert len(one_error_line(capsys)) < 120
    assert cli.main(["replay", "--impl", "x" * 200_000, "none.ops"]) == 2
    assert len(one_error_line(capsys)) < 300


def test_cli_malformed_script_is_exit_2_with_one_line(tmp_path, capsys):
    path = write_file(tmp_path, "bad.ops", "mmap P0 0x200000 64K\nwrite P0 0x200001 1\n")
    assert cli.main(["replay", path]) == 2
    assert one_error_line(capsys) == f"rmapfuzz: {path}:2: address 0x200001 is not 4 KiB aligned"


def test_cli_unknown_impl_is_exit_2(tmp_path, capsys, fake_implementations):
    path = write_file(tmp_path, "good.ops", WRITE_SCRIPT)
    assert cli.main(["replay", path, "--impl", "no_such_kernel"]) == 2
    assert one_error_line(capsys).startswith("rmapfuzz: unknown implementation 'no_such_kernel'")


def test_cli_bad_flag_is_exit_2_with_one_line(capsys):
    assert cli.main(["replay", "x.ops", "--frobnicate"]) == 2
    assert one_error_line(capsys).startswith("rmapfuzz: unrecognized arguments: --frobnicate")
    assert cli.main([]) == 2
    assert one_error_line(capsys).startswith("rmapfuzz: ")


def test_cli_missing_and_raw_files_are_exit_2(tmp_path, capsys):
    assert cli.main(["replay", str(tmp_path / "missing.ops")]) == 2
    assert "cannot read" in one_error_line(capsys)
    raw = tmp_path / "input-1234"   # a stored input; libFuzzer's crash- files are read whatever this byte
    raw.write_bytes(b"\x00\xc8")  # the last byte is the encoding version (200)
    assert cli.main(["replay", str(raw)]) == 2
    assert one_error_line(capsys) == (f"rmapfuzz: {raw}: raw input of encoding version 200, "
                                      f"this rmapfuzz reads version {ENCODING_VERSION}")


def test_cli_replay_passes_and_prints_json(tmp_path, capsys, fake_implementations):
    path = write_file(tmp_path, "good.ops", WRITE_SCRIPT)
    assert cli.main(["replay", path, "--json"]) == 0
    output = json.loads(capsys.readouterr().out)
    assert output == {"files": [{"path": path, "ok": True, "ops": 3, "findings": []}]}


def test_cli_replay_finding_is_exit_1(tmp_path, capsys, fake_implementations):
    path = write_file(tmp_path, "diverge.ops", WRITE_SCRIPT)
    assert cli.main(["replay", path, "--impl", "fake_clean", "--json"]) == 1
    [file] = json.loads(capsys.readouterr().out)["files"]
    [finding] = file["findings"]
    assert file["ok"] is False
    assert finding["signature"] == "divergence:write:pte"
    assert (finding["kind"], finding["op"], finding["field"], finding["line"]) == ("divergence", "write", "pte", 3)
    assert cli.main(["replay", path, "--impl", "fake_clean", "--log-json"]) == 1
    captured = capsys.readouterr()
    assert f"{path}:3: states differ after op 2 (write P0 0x200000 7)" in captured.out
    assert all(json.loads(line) for line in captured.err.splitlines())


def test_cli_as_a_module_is_exit_2_with_one_line(tmp_path):
    path = write_file(tmp_path, "bad.ops", "frames 64\nfrobnicate P0\n")
    env = {key: value for key, value in os.environ.items() if key != "RMAPFUZZ_DEBUG"}
    completed = subprocess.run([sys.executable, "-m", "fuzz.front.cli", "replay", path], cwd=MAIN, env=env,
                               capture_output=True, text=True, timeout=120, check=False)
    assert completed.returncode == 2
    assert completed.stderr.splitlines() == [f"rmapfuzz: {path}:2: unknown op 'frobnicate'"]
