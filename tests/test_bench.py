"""`rmapfuzz bench`: size parsing, the workload, and the reference timed against itself.

The runs use the smallest useful size (4M) so the whole file stays fast; the
workload's coverage is checked on 64M, which is only built, never run.
"""

from __future__ import annotations

import json
import sys
import types
from collections import Counter

import pytest

import reference
from fuzz.errors import UsageError
from fuzz.front import cli
from fuzz.front.bench import (
    BASE,
    DEFAULT_SIZES,
    SKIPPED,
    SizeResult,
    bench_json,
    bench_size,
    build_workload,
    fault_layout,
    file_layout,
    format_table,
    machine_frames,
    parse_sizes,
)

M = 1 << 20
BENCH_KEYS = {"size", "ops", "reference_s", "batched_s", "speedup", "reference_peak_mib",
              "batched_peak_mib"}
WORKLOAD_OPS = {"mmap", "fault", "free", "write", "pin", "fork", "reclaim", "split_pmd", "split",
                "munmap", "exit", "file", "read", "uffd", "wp", "sync"}


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, err
    return lines[0]


# ---------------------------------------------------------------------------
# Sizes


def test_sizes_with_k_m_g_suffixes_are_parsed() -> None:
    assert parse_sizes("4M,64M,1G") == [4 * M, 64 * M, 1024 * M]
    assert parse_sizes("2048K, 2m") == [2 * M, 2 * M]


@pytest.mark.parametrize("text", ["3M", "0", "0M", "abc", "1T", "4M,,8M", "-2M", "1K"])
def test_bad_sizes_are_refused_naming_the_size(text: str) -> None:
    with pytest.raises(UsageError, match="bad size"):
        parse_sizes(text)


def test_bad_size_message_names_the_size() -> None:
    with pytest.raises(UsageError, match="'3M'"):
        parse_sizes("4M,3M")


# ---------------------------------------------------------------------------
# The workload


def test_workload_depends_only_on_size_and_seed() -> None:
    assert build_workload(16 * M, seed=3) == build_workload(16 * M, seed=3)
    assert build_workload(16 * M, seed=3) != build_workload(16 * M, seed=4)


def test_workload_covers_every_op_kind() -> None:
    counts = Counter(op.name for op in build_workload(64 * M))
    assert set(counts) == WORKLOAD_OPS
    assert counts["fork"] == 2 and counts["exit"] == 3 and counts["mmap"] == 3
    assert counts["file"] == counts["sync"] == counts["uffd"] == 2


def test_workload_follows_the_layout_and_sampling_rules() -> None:
    size = 64 * M
    nr_pages = size // 4096
    ops = build_workload(size)
    layout = fault_layout(size)
    files = file_layout(size)
    file_pages = files.file_size // 4096
    assert files.file_size == 8 * M and files.shmem_base == BASE + size and files.end == BASE + size + 16 * M
    faults = [op for op in ops if op.name == "fault"]
    shmem_folios = files.file_size // (64 << 10)
    assert Counter(op.order for op in faults) == {9: 16, 4: 12 * 32 + shmem_folios, 0: 4 * 512}
    assert len(layout.folios()) + shmem_folios == len(faults)
    for pid in (0, 1, 2):
        writes = [op.addr for op in ops if op.name == "write" and op.process == pid and op.addr < files.shmem_base]
        assert len(writes) == len(set(writes)) == nr_pages // 10
    for base in (files.shmem_base, files.file_base):
        writes = [op.addr for op in ops if op.name == "write" and base <= op.addr < base + files.file_size]
        assert len(writes) == len(set(writes)) == file_pages // 10
    assert sum(op.name == "read" for op in ops) == file_pages // 10
    wps = [op for op in ops if op.name == "wp"]
    assert [op.mode for op in wps].count("on") == 2 + 1 and [op.mode for op in wps].count("off") == 1
    assert all(op.addr % (64 << 10) == 32 << 10 for op in wps if op.addr < files.shmem_base)
    pins = [op for op in ops if op.name == "pin"]
    assert len(pins) == nr_pages // 100 // 8
    assert [op.prot for op in pins[:2]] == ["rw", "ro"] and all(op.addr % (32 << 10) == 0 for op in pins)
    assert sum(op.name == "reclaim" for op in ops) == (len(layout.folios()) // 10 + shmem_folios // 10
                                                       + len(layout.mthp_folios) // 10)
    assert sum(op.name == "free" for op in ops) == len(layout.mthp_folios) // 10
    assert sum(op.name == "split_pmd" for op in ops) == len(layout.pmd_chunks) // 10
    assert sum(op.name == "split" for op in ops) == len(layout.mthp_folios) // 10
    munmaps = [op for op in ops if op.name == "munmap"]
    assert len(munmaps) == 3 * size // (2 * M)
    assert all(op.length == M and (op.addr - BASE) % (2 * M) == 0 for op in munmaps)
    assert [op.process for op in ops[-3:]] == [2, 1, 0]


# ---------------------------------------------------------------------------
# Running the reference against itself


def test_reference_against_itself_has_equal_results_and_states() -> None:
    result = bench_size(4 * M, impl="reference")
    assert result.ok, result.report
    assert result.ops == len(build_workload(4 * M))
    assert result.reference_s > 0 and result.impl_s > 0
    assert result.reference_peak_mib >= 0 and result.impl_peak_mib >= 0
    # Both forks fit (2x the pages and 4096 spare frames): no op is skipped.
    assert machine_frames(4 * M) == 6144 + 256 and result.skipped == 0
    table = format_table([result], "reference")
    assert table.splitlines()[1].split()[:2] == ["4M", str(result.ops)]


def test_batched_matches_the_reference_on_the_bench_workload() -> None:
    result = bench_size(8 * M, impl="batched")
    assert result.ok, result.report
    assert result.skipped == 0


def test_cli_bench_prints_a_table_and_exits_0(capsys) -> None:
    assert cli.main(["bench", "--fuzz-seconds", "0", "--sizes", "4M", "--impl", "reference"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:2] == ["size", "ops"] and lines[1].split()[0] == "4M"


def test_cli_bench_json_is_one_object_with_the_keys(capsys) -> None:
    argv = ["bench", "--fuzz-seconds", "0", "--sizes", "4M", "--impl", "reference", "--json", "--seed", "1"]
    assert cli.main(argv) == 0
    output = json.loads(capsys.readouterr().out)
    assert output["impl"] == "reference"
    [size] = output["sizes"]
    assert set(size) >= BENCH_KEYS
    assert size["size"] == "4M" and size["ok"] is True


def test_bench_json_uses_batched_keys_whatever_the_impl() -> None:
    result = SizeResult(size=4 * M, ops=10, reference_s=2.0, impl_s=0.5, reference_peak_mib=3.0,
                        impl_peak_mib=1.0)
    output = bench_json([result], "some_module")
    assert output["impl"] == "some_module"
    assert set(output["sizes"][0]) >= BENCH_KEYS and output["sizes"][0]["speedup"] == 4.0


def test_bench_reports_each_implementations_time_per_page_and_the_ratio() -> None:
    result = SizeResult(size=4 * M, ops=10, reference_s=2.048, impl_s=0.512, reference_peak_mib=3.0,
                        impl_peak_mib=1.0)
    size = bench_json([result], "batched")["sizes"][0]
    assert size["reference_us_per_page"] == 2000.0 and size["batched_us_per_page"] == 500.0
    assert size["speedup"] == 4.0
    header, row = format_table([result], "batched").splitlines()
    assert "reference us/page" in header and "batched us/page" in header
    assert row.split()[:5] == ["4M", "10", "2.048", "0.512", "4.00x"]
    assert row.split()[5:7] == ["2000.00", "500.00"]


def test_default_sizes_reach_4g_on_a_machine_of_twice_its_pages_and_the_files() -> None:
    assert parse_sizes(DEFAULT_SIZES) == [64 * M, 256 * M, 1024 * M, 4096 * M]
    assert machine_frames(4096 * M) == 2 * (1 << 20) + 2 * (1 << 17) + 4096


# ---------------------------------------------------------------------------
# Planted differences are reported and exit 1


def planted(monkeypatch, name: str, **methods) -> str:
    """A module name whose Kernel is the reference with methods replaced."""
    kernel = type("PlantedKernel", (reference.Kernel,), methods)
    monkeypatch.setitem(sys.modules, name, types.SimpleNamespace(Kernel=kernel, __name__=name))
    return name


def test_differing_result_is_reported_with_its_op(monkeypatch, capsys) -> None:
    def munmap_says_einval(self, pid, addr, length):
        reference.Kernel.munmap(self, pid, addr, length)
        return "EINVAL"

    name = planted(monkeypatch, "bench_planted_result", munmap=munmap_says_einval)
    assert cli.main(["bench", "--fuzz-seconds", "0", "--sizes", "4M", "--impl", name]) == 1
    out = capsys.readouterr().out
    assert "DIFFERS" in out
    assert f"(munmap P0 {BASE:#x} 1M): result differs: reference=ok {name}=EINVAL" in out


def test_differing_final_state_is_reported(monkeypatch) -> None:
    def exit_counting_an_mmap(self, pid):
        self.machine.nr_mmaps += pid == 0       # planted: a stray counter update
        return reference.Kernel.exit(self, pid)

    name = planted(monkeypatch, "bench_planted_state", exit=exit_counting_an_mmap)
    result = bench_size(4 * M, impl=name)
    assert not result.ok
    assert "final states differ" in result.report and "nr_mmaps" in result.report


def test_kernel_exception_is_a_finding_not_an_internal_error(monkeypatch, capsys) -> None:
    def fork_raises(self, pid):
        raise RuntimeError("planted")

    name = planted(monkeypatch, "bench_planted_raise", fork=fork_raises)
    assert cli.main(["bench", "--fuzz-seconds", "0", "--sizes", "4M", "--impl", name, "--json"]) == 1
    [size] = json.loads(capsys.readouterr().out)["sizes"]
    assert "raised in op" in size["report"] and "fork P0" in size["report"]


def test_skipped_is_not_a_kernel_result() -> None:
    from machine.errors import RESULTS
    assert SKIPPED not in RESULTS


# ---------------------------------------------------------------------------
# Bad input


@pytest.mark.parametrize("argv, message", [
    (["bench", "--frobnicate"], "rmapfuzz: unrecognized arguments: --frobnicate"),
    (["bench", "--sizes", "4M,3M"], "rmapfuzz: bad size '3M'"),
    (["bench", "--seed", "x"], "rmapfuzz: argument --seed"),
    (["bench", "--sizes", "4M", "--impl", "no_such_kernel"], "rmapfuzz: unknown implementation"),
])
def test_bad_flag_or_size_is_exit_2_with_one_line(argv, message, capsys) -> None:
    assert cli.main(argv) == 2
    assert one_error_line(capsys).startswith(message)


def test_cli_bench_reports_the_fuzz_loop_rate_with_and_without_resuming(capsys) -> None:
    assert cli.main(["bench", "--sizes", "2M", "--fuzz-seconds", "6", "--fuzz-rounds", "1", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["fuzz_exec_per_s"] > 0 and out["fuzz_exec_per_s_without_resume"] > 0
    assert out["fuzz_resume_speedup"] > 0 and 0 < out["fuzz_resumed_share"] <= 1 and out["fuzz_resumed_mean_ops"] >= 1
    parts = out["fuzz_ms_per_execution"]
    assert sorted(parts) == ["checks", "decoder", "implementation", "mutator", "reference", "rest", "snapshots"]
    assert parts["reference"] > 0 and parts["implementation"] > 0
    assert "snapshots" not in out["fuzz_ms_per_execution_without_resume"]
    assert out["fuzz_exec_per_cpu_s"] > 0 and out["fuzz_exec_per_cpu_s_without_resume"] > 0
    assert out["fuzz_ops_per_execution"] > out["fuzz_ops_run_per_execution"] > 0
    assert out["fuzz_ops_per_execution_without_resume"] > 0


def test_cli_bench_resume_check_compares_both_runs_of_each_input(capsys) -> None:
    assert cli.main(["bench", "--resume-check", "40", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["inputs"] == 40 and out["mismatches"] == []


def test_the_workers_bench_prints_exec_per_s_and_each_bugs_time_to_find_per_number_of_workers():
    from fuzz.engine.campaign import TimeToFindRow, WorkersRow
    from fuzz.front.bench import format_workers

    text = format_workers([WorkersRow(1, 3000, 30.5, 98.4), WorkersRow(2, 5000, 31.0, 161.3)],
                          [TimeToFindRow("pin_check_on_page", 1, True, 1.3),
                           TimeToFindRow("pin_check_on_page", 2, False, 60.0)])
    lines = text.splitlines()
    assert lines[1].split() == ["1", "3000", "30.5", "98.4"] and lines[2].split() == ["2", "5000", "31.0", "161.3"]
    assert lines[-1].split() == ["pin_check_on_page", "1.3", "s", "-"]


@pytest.mark.parametrize("argv", [["bench", "--workers", "--workers-seconds", "0"],
                                  ["bench", "--workers", "--find-budget", "-1"],
                                  ["bench", "--workers", "--canary", "no_such_bug"]])
def test_bad_workers_bench_flags_are_exit_2(argv, capsys):
    assert cli.main(argv) == 2
    assert capsys.readouterr().err.startswith("rmapfuzz: ")


def test_two_workers_stop_at_the_first_finding_of_either():
    import time

    from fuzz.engine.campaign import time_to_find

    started = time.monotonic()
    row = time_to_find("share_nr_pages_zero", 2, budget=90)
    assert row.found and row.workers == 2 and row.seconds < 60
    assert time.monotonic() - started < 75   # the other worker did not fuzz on to the end of the budget
