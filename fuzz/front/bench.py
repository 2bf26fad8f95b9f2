"""`rmapfuzz bench`: the reference against an implementation on big deterministic workloads (SPEC §7).

Three separate pieces, so tests can use each alone:

- `build_workload(size, seed)`: the op list for one size, as `fuzz.ops.Op`s
  (the representation the runner and the script printer already use), drawn
  from one `random.Random(seed)` in a fixed order;
- `bench_size` / `run_bench`: each workload on a fresh machine per
  implementation, the reference first, timing the kernel calls and sampling
  the process RSS, then comparing the op results and the final states;
- `format_table` / `bench_json`: the printed forms.

Peak memory is the high-water mark of the process RSS while one
implementation runs, minus the RSS when its run started; before each run
freed memory is handed back to the system (gc, malloc_trim) so the second run
does not look smaller by reusing what the first one freed.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import os
import random
import statistics
import threading
import time
import traceback
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import structlog

from fuzz.engine.campaign import CampaignSummary, TimeToFindRow, WorkersRow, ms_per_execution, run_default_campaign
from fuzz.engine.loop import ResumeCheck
from fuzz.engine.session import RESUME_ENV
from fuzz.engine.snapshots import DEFAULT_BUDGET
from fuzz.errors import UsageError, quote_token, shown_number
from fuzz.implementation import (
    DEFAULT_IMPL,
    OP_DISPATCH,
    REFERENCE_IMPL,
    load_implementation,
)
from fuzz.judge.compare import compare_machines
from fuzz.script.ops import Op, format_op
from machine import Machine
from machine.pgtable import HPAGE_PMD_ORDER, PAGE_SIZE, PMD_SIZE, TASK_SIZE

log = structlog.get_logger()

DEFAULT_SIZES = "64M,256M,1G,4G"

MTHP_ORDER = 4
MTHP_SIZE = PAGE_SIZE << MTHP_ORDER
HALF_PMD = PMD_SIZE // 2
BASE = 0x40000000                  # 1 GiB aligned start of the one mapping
PIN_NR_PAGES = 8
PIN_ALIGN = 32 << 10
CHUNK_PATTERNS = 8                 # chunk i is faulted by pattern i % 8
PMD_PATTERNS = range(0, 4)         # one PMD THP
MTHP_PATTERNS = range(4, 7)        # 32 order-4 mTHPs; pattern 7: 512 base pages
CHILDREN = (1, 2)                  # the pids the two forks of P0 create
FILE_FRACTION = 8                  # each file is an eighth of the size
UFFD_WP_SKEW = 32 << 10            # a write-protected range starts inside a 64K mTHP
SIZE_UNITS = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}

SKIPPED = "skipped"                # the result of an op naming a process this machine lacks
SAMPLE_INTERVAL = 0.005            # seconds between RSS samples
REPORT_DIFFERENCES = 5             # state differences shown per size
IMPL_RUNS = 3                      # the implementation's time is the median of this many runs
MIB = 1 << 20
MAX_SIZE_DIGITS = 20               # more digits than any size below the VA limit (int() refuses 4,300)


# ---------------------------------------------------------------------------
# Sizes


def parse_size(text: str) -> int:
    """One size, digits then K, M or G: bytes; UsageError unless a positive multiple of 2 MiB."""
    digits, unit = text[:-1], SIZE_UNITS.get(text[-1:].upper())
    if unit is None or not digits.isascii() or not digits.isdigit() or len(digits) > MAX_SIZE_DIGITS:
        raise UsageError(f"bad size {quote_token(text)}: write a number with K, M or G, e.g. 64M")
    size = int(digits) * unit
    check_size(size, text)
    return size


def check_size(size: int, text: str = "") -> None:
    """UsageError unless size is a positive multiple of 2 MiB whose mapping fits the VA space."""
    name = quote_token(text) if text else shown_number(size)
    if size <= 0 or size % PMD_SIZE:
        raise UsageError(f"bad size {name}: not a positive multiple of 2M")
    if file_layout(size).end > TASK_SIZE:
        raise UsageError(f"bad size {name}: the mappings would end past the 48-bit VA limit")


def parse_sizes(text: str) -> list[int]:
    """A comma-separated list of sizes (parse_size each); UsageError names the first bad one."""
    return [parse_size(item.strip()) for item in text.split(",")]


def format_size(size: int) -> str:
    """Bytes as the largest of G, M, K that divides them exactly."""
    for suffix in ("G", "M", "K"):
        if size % SIZE_UNITS[suffix] == 0:
            return f"{size // SIZE_UNITS[suffix]}{suffix}"
    return str(size)


def machine_frames(size: int) -> int:
    """nr_frames of a bench machine: twice the mapping and 4096 spare frames, room for
    every copy: fork copies each exclusive page of a pinned folio (512 per pinned THP)
    and the children's writes copy on write (the workload peaks near 1.7x the pages,
    2.1x at 4M); and the two files' page cache with the private mapping's copies."""
    return size // PAGE_SIZE * 2 + 2 * file_layout(size).file_size // PAGE_SIZE + 4096


# ---------------------------------------------------------------------------
# The workload


@dataclass(frozen=True)
class FaultLayout:
    """Where step 2 puts folios: the start address of each, by kind."""

    pmd_chunks: list[int]      # one PMD THP per chunk
    mthp_folios: list[int]     # order-4 folios, 32 per chunk
    base_pages: list[int]      # order-0 folios, 512 per chunk

    def folios(self) -> list[int]:
        """Every folio start address, ascending."""
        return sorted(self.pmd_chunks + self.mthp_folios + self.base_pages)


def fault_layout(size: int) -> FaultLayout:
    """The folios of step 2: 2 MiB chunk i gets pattern i % 8."""
    layout = FaultLayout([], [], [])
    for index, chunk in enumerate(range(BASE, BASE + size, PMD_SIZE)):
        pattern = index % CHUNK_PATTERNS
        if pattern in PMD_PATTERNS:
            layout.pmd_chunks.append(chunk)
        elif pattern in MTHP_PATTERNS:
            layout.mthp_folios.extend(range(chunk, chunk + PMD_SIZE, MTHP_SIZE))
        else:
            layout.base_pages.extend(range(chunk, chunk + PMD_SIZE, PAGE_SIZE))
    return layout


@dataclass(frozen=True)
class FileLayout:
    """The file part: a shmem file mapped shared and a regular file mapped private, each an
    eighth of the size, side by side after the anonymous mapping."""

    file_size: int
    shmem_base: int            # F0, shmem, MAP_SHARED
    file_base: int             # F1, a regular file, MAP_PRIVATE

    @property
    def end(self) -> int:
        """The end of the last mapping."""
        return self.file_base + self.file_size


def file_layout(size: int) -> FileLayout:
    """Where the file part lies for a mapping of size bytes."""
    file_size = size // FILE_FRACTION
    return FileLayout(file_size, BASE + size, BASE + size + file_size)


def _file_setup_ops(size: int) -> list[Op]:
    """The two files and their mappings, F0's folios faulted in as 64K mTHPs of its page cache."""
    files = file_layout(size)
    ops = [Op("file", file=0, length=files.file_size, shmem=True), Op("file", file=1, length=files.file_size),
           Op("mmap", process=0, addr=files.shmem_base, length=files.file_size, prot="rw", file=0, shared=True),
           Op("mmap", process=0, addr=files.file_base, length=files.file_size, prot="rw", file=1)]
    ops += [Op("fault", process=0, addr=addr, order=MTHP_ORDER)
            for addr in range(files.shmem_base, files.shmem_base + files.file_size, MTHP_SIZE)]
    return ops


def _file_access_ops(rng: random.Random, size: int) -> list[Op]:
    """P0 reads 10% of F1's private mapping (page cache mapped), then writes 10% of it (copy on
    write into anon folios) and 10% of F0's shared mapping (the page cache itself)."""
    files = file_layout(size)
    nr_pages = files.file_size // PAGE_SIZE
    ops = [Op("read", process=0, addr=files.file_base + page * PAGE_SIZE)
           for page in rng.sample(range(nr_pages), nr_pages // 10)]
    for base in (files.file_base, files.shmem_base):
        ops += [Op("write", process=0, addr=base + page * PAGE_SIZE, value=rng.randrange(1, 1 << 64))
                for page in rng.sample(range(nr_pages), nr_pages // 10)]
    return ops


def _uffd_wp_ranges(size: int) -> list[int]:
    """The starts of the write-protected ranges: one MiB from 32K into every fourth chunk of the
    anonymous mapping's registered quarter from the third, a PMD THP's and an mTHP chunk's by
    turns (so a range covers part of a PMD THP or of an mTHP); the first two chunks keep their
    PMD THPs whole for the forks, whatever the size."""
    return [chunk + UFFD_WP_SKEW for chunk in range(BASE + 2 * PMD_SIZE, BASE + uffd_length(size), 4 * PMD_SIZE)]


def uffd_length(size: int) -> int:
    """The registered part of the anonymous mapping: its first quarter in whole 2 MiB chunks, at
    least one (a registration ending inside a chunk would split its VMA and so its PMD THP)."""
    return max(PMD_SIZE, size // 4 // PMD_SIZE * PMD_SIZE)


def _uffd_register_ops(size: int) -> list[Op]:
    """uffd-wp over the anonymous mapping's registered part and F0's mapping, then F0's first
    half write-protected."""
    files = file_layout(size)
    return [Op("uffd", process=0, addr=BASE, length=uffd_length(size)),
            Op("uffd", process=0, addr=files.shmem_base, length=files.file_size),
            Op("wp", process=0, addr=files.shmem_base, length=files.file_size // 2, mode="on")]


def _wp_ops(mode: str, ranges: list[int]) -> list[Op]:
    """UFFDIO_WRITEPROTECT with mode over one MiB from each start in ranges."""
    return [Op("wp", process=0, addr=addr, length=HALF_PMD, mode=mode) for addr in ranges]


def _fault_ops(size: int) -> list[Op]:
    """Step 2, chunk by chunk in ascending address order."""
    layout = fault_layout(size)
    folios = ([(addr, HPAGE_PMD_ORDER) for addr in layout.pmd_chunks]
              + [(addr, MTHP_ORDER) for addr in layout.mthp_folios]
              + [(addr, 0) for addr in layout.base_pages])
    return [Op("fault", process=0, addr=addr, order=order) for addr, order in sorted(folios)]


def _write_ops(rng: random.Random, pid: int, size: int) -> list[Op]:
    """Writes to 10% of the pages, distinct and in drawn order; then one non-zero value per write."""
    nr_pages = size // PAGE_SIZE
    pages = rng.sample(range(nr_pages), nr_pages // 10)
    return [Op("write", process=pid, addr=BASE + page * PAGE_SIZE, value=rng.randrange(1, 1 << 64))
            for page in pages]


def _pin_ops(rng: random.Random, size: int) -> list[Op]:
    """Pins of 8 pages covering 1% of the pages, at distinct 32 KiB-aligned addresses, rw/ro alternating."""
    nr_pins = size // PAGE_SIZE // 100 // PIN_NR_PAGES
    slots = rng.sample(range(size // PIN_ALIGN), nr_pins)
    return [Op("pin", process=0, addr=BASE + slot * PIN_ALIGN, nr_pages=PIN_NR_PAGES,
               prot="rw" if number % 2 == 0 else "ro")
            for number, slot in enumerate(slots)]


def _tenth(rng: random.Random, addrs: list[int]) -> list[int]:
    """A random 10% of addrs (rounded down), in drawn order."""
    return rng.sample(addrs, len(addrs) // 10)


def _munmap_ops(size: int) -> list[Op]:
    """Step 9: in P0, P1, P2, the first MiB of every 2 MiB chunk."""
    return [Op("munmap", process=pid, addr=chunk, length=HALF_PMD)
            for pid in (0, *CHILDREN) for chunk in range(BASE, BASE + size, PMD_SIZE)]


def build_workload(size: int, seed: int = 0) -> list[Op]:
    """The bench's op list for a mapping of size bytes; depends only on (size, seed).

    In order: mmap; fault everything (PMD THPs, mTHPs, base pages by chunk);
    the file part's two files, their mappings and F0's faults; uffd-wp on the
    anonymous mapping's first quarter (whole chunks) and F0's mapping, a MiB write-protected in
    every fourth chunk of the quarter and F0's first half; P0 writes 10% of the
    pages (some trapped: UFFD); P0 reads and writes 10% of the files' pages;
    pins of 1% of the pages; fork twice; each child writes 10%; wp off for
    every other protected MiB; reclaim 10% of the folios, then 10% of F0's;
    sync both files; split_pmd 10% of the PMD
    chunks and split to order 0 10% of the mTHPs; MADV_FREE of 10% of the
    mTHPs in P0, then reclaim of each (lazyfree: P0's clean entries are
    discarded, the children's dirty ones keep the folio); munmap the first MiB
    of every chunk in each process; exit P2, P1, P0. Random draws, in this
    order: P0's pages, P0's values, F1's read pages, F1's written pages and
    values, F0's, the pins, P1's pages and values, P2's pages and values, the
    reclaimed folios, F0's reclaimed folios, the split PMDs, the split mTHPs,
    the freed mTHPs.
    """
    check_size(size)
    rng = random.Random(seed)
    layout = fault_layout(size)
    ops = [Op("mmap", process=0, addr=BASE, length=size, prot="rw")]
    ops += _fault_ops(size)
    ops += _file_setup_ops(size)
    ops += _uffd_register_ops(size) + _wp_ops("on", _uffd_wp_ranges(size))
    ops += _write_ops(rng, 0, size)
    ops += _file_access_ops(rng, size)
    ops += _pin_ops(rng, size)
    ops += [Op("fork", process=0) for _child in CHILDREN]
    for pid in CHILDREN:
        ops += _write_ops(rng, pid, size)
    ops += _wp_ops("off", _uffd_wp_ranges(size)[::2])
    ops += [Op("reclaim", process=0, addr=addr) for addr in _tenth(rng, layout.folios())]
    files = file_layout(size)
    ops += [Op("reclaim", process=0, addr=addr)
            for addr in _tenth(rng, list(range(files.shmem_base, files.file_base, MTHP_SIZE)))]
    ops += [Op("sync", file=file) for file in (0, 1)]
    ops += [Op("split_pmd", process=0, addr=addr) for addr in _tenth(rng, layout.pmd_chunks)]
    ops += [Op("split", process=0, addr=addr, order=0) for addr in _tenth(rng, layout.mthp_folios)]
    for addr in _tenth(rng, layout.mthp_folios):
        ops += [Op("free", process=0, addr=addr, length=MTHP_SIZE), Op("reclaim", process=0, addr=addr)]
    ops += _munmap_ops(size)
    ops += [Op("exit", process=pid) for pid in (*reversed(CHILDREN), 0)]
    return ops


# ---------------------------------------------------------------------------
# Running one implementation


def _rss_bytes() -> int:
    """The process's resident set size, from /proc/self/statm."""
    with open("/proc/self/statm", "rb") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class _PeakRss:
    """Samples the RSS from a daemon thread every SAMPLE_INTERVAL while the with-block runs.

    peak_mib: the highest sample minus the RSS at the start, in MiB.
    """

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="bench-rss", daemon=True)
        self.start_rss = self.peak_rss = 0

    def _sample(self) -> None:
        while not self._stop.wait(SAMPLE_INTERVAL):
            self.peak_rss = max(self.peak_rss, _rss_bytes())

    def __enter__(self) -> _PeakRss:
        self.start_rss = self.peak_rss = _rss_bytes()
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_rss = max(self.peak_rss, _rss_bytes())

    @property
    def peak_mib(self) -> float:
        return (self.peak_rss - self.start_rss) / MIB


def _release_free_memory() -> None:
    """Collect garbage and hand free heap back to the system, so a run starts from a settled RSS."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):   # not glibc: the peak may read a little low
        ctypes.CDLL("libc.so.6").malloc_trim(0)


@dataclass
class ImplementationRun:
    """One implementation's run of a workload.

    results: one per op run (SKIPPED for an op naming a process the machine
    lacks); error: the traceback if a kernel call raised (the run stopped there).
    """

    name: str
    machine: Machine
    results: list[str]
    seconds: float
    peak_mib: float
    error: str = ""


def _run_ops(kernel: Any, machine: Machine, ops: Sequence[Op], results: list[str]) -> None:
    """Call each op on kernel, appending its result."""
    for op in ops:
        if op.process is not None and op.process not in machine.processes:
            results.append(SKIPPED)     # its fork failed (ENOMEM): no process to name
            continue
        results.append(OP_DISPATCH[op.name](kernel, op))


def run_workload(implementation: Any, name: str, ops: Sequence[Op], nr_frames: int) -> ImplementationRun:
    """ops on a fresh Machine(nr_frames) with implementation.Kernel: results, seconds, peak RSS.

    Only the kernel calls are timed, in CPU time of the thread running them: on a shared
    machine a neighbour's load lengthens the wall-clock time, not this (it is logged too).
    A kernel exception stops the run and is kept in `error` (a finding, as in replay), not
    raised.
    """
    _release_free_memory()
    machine = Machine(nr_frames)
    results: list[str] = []
    error = ""
    with _PeakRss() as rss:
        start, wall_start = time.thread_time(), time.perf_counter()
        try:
            kernel = implementation.Kernel(machine)
            _run_ops(kernel, machine, ops, results)
        except Exception:  # noqa: BLE001 - any kernel exception is a finding
            error = traceback.format_exc().rstrip()
        seconds, wall_seconds = time.thread_time() - start, time.perf_counter() - wall_start
    log.info("bench_run", impl=name, ops=len(results), seconds=round(seconds, 3), wall_seconds=round(wall_seconds, 3),
             peak_mib=round(rss.peak_mib, 1), skipped=results.count(SKIPPED), raised=bool(error))
    return ImplementationRun(name, machine, results, seconds, rss.peak_mib, error)


# ---------------------------------------------------------------------------
# One size, compared


@dataclass(frozen=True)
class SizeResult:
    """The bench of one size: op count, both times and peaks, and a report if they differ."""

    size: int
    ops: int
    reference_s: float
    impl_s: float
    reference_peak_mib: float
    impl_peak_mib: float
    skipped: int = 0           # ops on a process whose fork failed, on the reference
    report: str = ""           # empty when results and final states are identical

    @property
    def ok(self) -> bool:
        return not self.report

    @property
    def speedup(self) -> float:
        """The reference's time over the implementation's: the ratio at this size."""
        return self.reference_s / self.impl_s if self.impl_s > 0 else float("inf")

    @property
    def nr_pages(self) -> int:
        """The pages of the workload's mapping."""
        return self.size // PAGE_SIZE

    @property
    def reference_us_per_page(self) -> float:
        """The reference's time per page of the mapping, in microseconds: flat when it grows linearly."""
        return self.reference_s * 1e6 / self.nr_pages

    @property
    def impl_us_per_page(self) -> float:
        """The implementation's time per page of the mapping, in microseconds."""
        return self.impl_s * 1e6 / self.nr_pages

    def to_json(self) -> dict[str, Any]:
        """The JSON form; the implementation's keys are batched_* whatever it is."""
        out: dict[str, Any] = {
            "size": format_size(self.size), "ops": self.ops,
            "reference_s": round(self.reference_s, 4), "batched_s": round(self.impl_s, 4),
            "speedup": round(self.speedup, 3) if self.impl_s > 0 else None,
            "reference_us_per_page": round(self.reference_us_per_page, 3),
            "batched_us_per_page": round(self.impl_us_per_page, 3),
            "reference_peak_mib": round(self.reference_peak_mib, 1),
            "batched_peak_mib": round(self.impl_peak_mib, 1),
            "skipped": self.skipped, "ok": self.ok,
        }
        if self.report:
            out["report"] = self.report
        return out


def _run_error_report(run: ImplementationRun, ops: Sequence[Op]) -> str:
    op = ops[len(run.results)]
    return f"{run.name} raised in op {len(run.results) + 1} ({format_op(op)}):\n{run.error}"


def _result_report(ref: ImplementationRun, other: ImplementationRun, ops: Sequence[Op]) -> str:
    """The first op whose results differ, or "" if the result lists are equal."""
    for number, (op, ref_result, other_result) in enumerate(zip(ops, ref.results, other.results, strict=False), 1):
        if ref_result != other_result:
            return (f"op {number} ({format_op(op)}): result differs: "
                    f"{ref.name}={ref_result} {other.name}={other_result}")
    if len(ref.results) != len(other.results):
        return f"{ref.name} ran {len(ref.results)} ops, {other.name} {len(other.results)}"
    return ""


def _state_report(ref: ImplementationRun, other: ImplementationRun) -> str:
    """The first few differences between the final states, or ""."""
    differences = compare_machines(ref.machine, other.machine, limit=REPORT_DIFFERENCES)
    if not differences:
        return ""
    lines = [difference.describe(ref.name, other.name) for difference in differences]
    return "final states differ:\n" + "\n".join(f"  {line}" for line in lines)


def compare_runs(ref: ImplementationRun, other: ImplementationRun, ops: Sequence[Op]) -> str:
    """A readable report of the first thing that differs between two runs of ops; "" if none."""
    for run in (ref, other):
        if run.error:
            return _run_error_report(run, ops)
    return _result_report(ref, other, ops) or _state_report(ref, other)


def _side_names(impl: str) -> tuple[str, str]:
    return (f"{REFERENCE_IMPL}(ref)", f"{impl}(impl)") if impl == REFERENCE_IMPL else (REFERENCE_IMPL, impl)


def bench_size(size: int, impl: str = DEFAULT_IMPL, seed: int = 0) -> SizeResult:
    """Build the workload of size, run it on the reference once, then IMPL_RUNS times on impl,
    comparing each run with the reference's.

    The implementation's time is the median of its runs and its peak the highest: a run of a
    few seconds on a shared machine can be slowed by half by a neighbour, while the
    reference's minutes average such spells out (running it again would cost minutes more).
    """
    ops = build_workload(size, seed)
    nr_frames = machine_frames(size)
    ref_name, impl_name = _side_names(impl)
    log.info("bench_size", size=format_size(size), ops=len(ops), frames=nr_frames, impl=impl, seed=seed)
    ref = run_workload(load_implementation(REFERENCE_IMPL), ref_name, ops, nr_frames)
    seconds, peaks, report = [], [], ""
    for _run in range(IMPL_RUNS):
        other = run_workload(load_implementation(impl), impl_name, ops, nr_frames)
        seconds.append(other.seconds)
        peaks.append(other.peak_mib)
        report = compare_runs(ref, other, ops)
        if report:
            log.info("bench_differs", size=format_size(size), impl=impl)
            break
        del other  # one implementation machine at a time
    return SizeResult(size=size, ops=len(ops), reference_s=ref.seconds, impl_s=statistics.median(seconds),
                      reference_peak_mib=ref.peak_mib, impl_peak_mib=max(peaks),
                      skipped=ref.results.count(SKIPPED), report=report)


def run_bench(sizes: Sequence[int], impl: str = DEFAULT_IMPL, seed: int = 0) -> list[SizeResult]:
    """bench_size for each size, in order."""
    return [bench_size(size, impl, seed) for size in sizes]


# ---------------------------------------------------------------------------
# Output


def bench_json(results: Sequence[SizeResult], impl: str) -> dict[str, Any]:
    """The one JSON object `rmapfuzz bench --json` prints."""
    return {"impl": impl, "sizes": [result.to_json() for result in results]}


def format_table(results: Sequence[SizeResult], impl: str) -> str:
    """One row per size, then the report of every size whose runs differ."""
    ref_name, impl_name = _side_names(impl)
    header = ("size", "ops", f"{ref_name} s", f"{impl_name} s", "speedup", f"{ref_name} us/page",
              f"{impl_name} us/page", f"{ref_name} MiB", f"{impl_name} MiB", "")
    rows = [header] + [
        (format_size(result.size), str(result.ops), f"{result.reference_s:.3f}", f"{result.impl_s:.3f}",
         f"{result.speedup:.2f}x", f"{result.reference_us_per_page:.2f}", f"{result.impl_us_per_page:.2f}",
         f"{result.reference_peak_mib:.1f}", f"{result.impl_peak_mib:.1f}", "" if result.ok else "DIFFERS")
        for result in results]
    widths = [max(len(row[column]) for row in rows) for column in range(len(header))]
    lines = ["  ".join(cell.rjust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows]
    for result in results:
        if result.skipped:
            lines.append(f"{format_size(result.size)}: {result.skipped} ops skipped "
                         "(they name a process whose fork failed)")
        if not result.ok:
            lines.append(f"{format_size(result.size)}: {result.report}")
    return "\n".join(lines)


__all__ = [
    "BASE",
    "LoopAB",
    "combined",
    "format_loop_ab",
    "format_resume_check",
    "fuzz_loop_ab",
    "DEFAULT_SIZES",
    "FaultLayout",
    "ImplementationRun",
    "SizeResult",
    "bench_json",
    "bench_size",
    "build_workload",
    "check_size",
    "compare_runs",
    "fault_layout",
    "format_size",
    "format_table",
    "machine_frames",
    "parse_size",
    "parse_sizes",
    "run_bench",
    "run_workload",
]


def format_workers(workers: Sequence[WorkersRow], finds: Sequence[TimeToFindRow]) -> str:
    """The workers bench as two tables: exec/s per number of workers, and the seconds to each
    planted bug's first finding per number of workers ("-" where it was not found)."""
    lines = [f"{'workers':>7s} {'executions':>10s} {'seconds':>8s} {'exec/s':>8s}"]
    lines += [f"{row.workers:7d} {row.executions:10d} {row.seconds:8.1f} {row.exec_per_s:8.1f}" for row in workers]
    counts = sorted({row.workers for row in finds})
    if counts:
        lines += ["", f"{'planted bug':32s} " + " ".join(f"{f'{count} worker(s)':>12s}" for count in counts)]
        for bug in dict.fromkeys(row.bug for row in finds):
            cells = {row.workers: (f"{row.seconds:.1f} s" if row.found else "-") for row in finds if row.bug == bug}
            lines.append(f"{bug:32s} " + " ".join(f"{cells.get(count, ''):>12s}" for count in counts))
    return "\n".join(lines)


# ---------------------------------------------------------------------------
# The fuzz loop with and without resuming from snapshots (issue 16)


@dataclass(frozen=True)
class LoopAB:
    """The default campaign run in alternating rounds with resuming from snapshots and without
    (every input from its first op), each arm's rounds summed."""

    resuming: CampaignSummary
    plain: CampaignSummary
    rounds: int

    @property
    def speedup(self) -> float:
        return self.resuming.exec_per_s / self.plain.exec_per_s if self.plain.exec_per_s else 0.0

    @property
    def resumed_share(self) -> float:
        """The share of the resuming arm's executions that resumed from a snapshot."""
        executions = self.resuming.executions
        return self.resuming.snapshots.get("resumed", 0) / executions if executions else 0.0

    @property
    def mean_resumed_ops(self) -> float:
        """The ops a resumed execution skipped, on average: it ran from the op after."""
        resumed = self.resuming.snapshots.get("resumed", 0)
        return self.resuming.snapshots.get("resumed_ops", 0) / resumed if resumed else 0.0

    def to_json(self) -> dict[str, Any]:
        return {"fuzz_exec_per_s": round(self.resuming.exec_per_s, 1),
                "fuzz_exec_per_s_without_resume": round(self.plain.exec_per_s, 1),
                "fuzz_resume_speedup": round(self.speedup, 3),
                "fuzz_resumed_share": round(self.resumed_share, 3),
                "fuzz_resumed_mean_ops": round(self.mean_resumed_ops, 2),
                "fuzz_exec_per_cpu_s": round(per_cpu_second(self.resuming), 1),
                "fuzz_exec_per_cpu_s_without_resume": round(per_cpu_second(self.plain), 1),
                "fuzz_ops_per_execution": round(ops_per_execution(self.resuming), 2),
                "fuzz_ops_run_per_execution": round(ops_per_execution(self.resuming, run_only=True), 2),
                "fuzz_ops_per_execution_without_resume": round(ops_per_execution(self.plain), 2),
                "fuzz_snapshots": self.resuming.snapshots,
                "fuzz_ms_per_execution": ms_per_execution(self.resuming),
                "fuzz_ms_per_execution_without_resume": ms_per_execution(self.plain)}


def combined(summaries: Sequence[CampaignSummary]) -> CampaignSummary:
    """Campaigns run one after another as one: counts, seconds and parts summed."""
    executions = sum(summary.executions for summary in summaries)
    seconds = sum(summary.seconds for summary in summaries)
    parts: Counter[str] = Counter()
    snapshots: Counter[str] = Counter()
    for summary in summaries:
        parts.update(summary.seconds_by_part)
        snapshots.update(summary.snapshots)
    return CampaignSummary(executions=executions, seconds=round(seconds, 2),
                           exec_per_s=executions / seconds if seconds else 0.0,
                           findings=[finding for summary in summaries for finding in summary.findings],
                           fuzzing_seconds=round(sum(summary.fuzzing_seconds for summary in summaries), 2),
                           seconds_by_part=dict(parts), snapshots=dict(snapshots))


def fuzz_loop_ab(impl: str, seconds: int, rounds: int = 2) -> LoopAB:
    """The default campaign for seconds with resuming and seconds without, in rounds
    alternating between the two (a neighbour's load falls on both alike)."""
    arms: dict[bool, list[CampaignSummary]] = {True: [], False: []}
    per_round = max(1, round(seconds / rounds))
    before = os.environ.get(RESUME_ENV)
    try:
        for _round in range(rounds):
            for resuming in (False, True):
                os.environ[RESUME_ENV] = str(DEFAULT_BUDGET >> 20) if resuming else "0"
                arms[resuming].append(run_default_campaign(impl, per_round))
    finally:
        if before is None:
            os.environ.pop(RESUME_ENV, None)
        else:
            os.environ[RESUME_ENV] = before
    return LoopAB(combined(arms[True]), combined(arms[False]), rounds)


def per_cpu_second(summary: CampaignSummary) -> float:
    """Executions per second of the fuzzing processes' CPU time."""
    cpu = summary.snapshots.get("cpu_seconds", 0)
    return summary.executions / cpu if cpu else 0.0


def ops_per_execution(summary: CampaignSummary, run_only: bool = False) -> float:
    """The ops of an execution's input on average, or (run_only) those it ran, not resumed after."""
    ops = summary.snapshots.get("ops", 0) - (summary.snapshots.get("resumed_ops", 0) if run_only else 0)
    return ops / summary.executions if summary.executions else 0.0


def format_loop_ab(ab: LoopAB, seconds: int) -> str:
    """The A/B's rates, how often and from where executions resumed, and where each arm's time goes."""
    lines = [f"fuzz loop: {ab.resuming.exec_per_s:.0f} exec/s resuming from snapshots, "
             f"{ab.plain.exec_per_s:.0f} exec/s from the first op: {ab.speedup:.2f}x "
             f"(default campaign, one core, {seconds} s each in {ab.rounds} alternating rounds)",
             f"  resumed: {ab.resumed_share:.0%} of executions, after {ab.mean_resumed_ops:.1f} ops on average "
             f"({ab.resuming.snapshots.get('points', 0):.0f} snapshots taken, "
             f"{ab.resuming.snapshots.get('evicted', 0):.0f} dropped)",
             f"  per CPU second: {per_cpu_second(ab.resuming):.0f} exec resuming, {per_cpu_second(ab.plain):.0f} "
             f"from the first op: {per_cpu_second(ab.resuming) / max(per_cpu_second(ab.plain), 1e-9):.2f}x "
             f"(what a loaded machine's share of the core does not change)",
             f"  ops per execution: {ops_per_execution(ab.resuming):.1f} resuming (of which "
             f"{ops_per_execution(ab.resuming, run_only=True):.1f} run), {ops_per_execution(ab.plain):.1f} "
             f"from the first op"]
    for name, summary in (("resuming", ab.resuming), ("from the first op", ab.plain)):
        parts = ms_per_execution(summary)
        if parts:
            shares = ", ".join(f"{part} {ms:.2f}" for part, ms in sorted(parts.items(), key=lambda item: -item[1]))
            lines.append(f"  ms per execution {name}: {sum(parts.values()):.2f} = {shares}")
    return "\n".join(lines)


def format_resume_check(check: ResumeCheck) -> str:
    """check_resume's result: inputs, resumed share and mean op, and any input whose runs differ."""
    lines = [f"{check.inputs} mutated inputs run from snapshots and from the first op: "
             f"{len(check.mismatches)} differ; {check.resumed_share:.0%} resumed, after "
             f"{check.mean_resumed_op:.1f} ops on average ({check.ops / max(check.inputs, 1):.1f} ops per input, "
             f"{check.findings} with a finding)"]
    lines += [f"  {data.hex()}: {why}" for data, why in check.mismatches[:REPORT_DIFFERENCES]]
    return "\n".join(lines)
