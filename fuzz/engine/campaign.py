"""A campaign: seeds prepared, the harness started in a child process with libFuzzer's flags,
its progress followed, and the summary of its fuzzing processes; the default campaign and
the self-test of the planted bugs."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fuzz.canaries import CANARIES
from fuzz.engine.decode import encode
from fuzz.engine.findings import SavedFinding
from fuzz.engine.session import (
    CRASH_DIR_ENV,
    IMPL_ENV,
    STOP_ENV,
    SUMMARY_DIR_ENV,
    read_summaries,
)
from fuzz.errors import UsageError
from fuzz.implementation import load_implementation
from fuzz.script.ops import parse_file

PROGRESS = re.compile(r"^#(\d+)\s+(\w+).*?exec/s: (\d+)")
PROJECT_DIR = Path(__file__).resolve().parents[2]
DEFAULT_CORPUS = "corpus/seeds"
DEFAULT_SEED = 1           # libFuzzer's seed of the default campaign and the self-test
RSS_LIMIT_MB = 8192        # libFuzzer's default 2048 was reached once in a 600 s campaign
REST_PART = "rest"         # libFuzzer, atheris' coverage bookkeeping, the harness's own code
LAST_LINES = 5             # of the fuzzer's output, kept to explain a failure

Progress = Callable[[int, int], None]   # (executions, exec/s) at each libFuzzer status line


@dataclass(frozen=True)
class CampaignSummary:
    """A campaign's result: executions, wall seconds and rate, the findings it saved, the
    seconds its fuzzing processes spent fuzzing, in all and in each part of the loop."""

    executions: int
    seconds: float
    exec_per_s: float
    findings: list[SavedFinding] = field(default_factory=list)
    fuzzing_seconds: float = 0.0
    seconds_by_part: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return dict(asdict(self), findings=[finding.to_json() for finding in self.findings])


@dataclass(frozen=True)
class SelftestRow:
    """One planted bug's campaign: found or not, the seconds and executions to the first
    finding (or of the whole campaign), its minimised op count and signature."""

    bug: str
    found: bool
    seconds: float
    executions: int
    ops: int | None
    signature: str | None

    @property
    def passed(self) -> bool:
        """Found and minimised to at most MAX_SELFTEST_OPS ops."""
        return self.found and self.ops is not None and self.ops <= MAX_SELFTEST_OPS

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


MAX_SELFTEST_OPS = 8


def prepare_seeds(paths: list[str], directory: Path) -> int:
    """Copy seeds into a libFuzzer corpus directory: raw inputs as they are, op scripts
    encoded. Returns how many were written."""
    count = 0
    for given in paths:
        path = Path(given)
        if not path.exists():
            raise UsageError(f"{given}: no such file or directory")
        files = sorted(item for item in path.rglob("*") if item.is_file()) if path.is_dir() else [path]
        for item in files:
            data = encode(parse_file(str(item))) if item.suffix == ".ops" else item.read_bytes()
            (directory / f"seed-{count:05d}").write_bytes(data)
            count += 1
    return count


def libfuzzer_flags(seconds: int | None, runs: int | None, jobs: int, seed: int | None) -> list[str]:
    """libFuzzer's flags for a campaign of at most seconds or runs, jobs processes, seed."""
    flags = [f"-rss_limit_mb={RSS_LIMIT_MB}"]
    if seconds is not None:
        flags.append(f"-max_total_time={seconds}")
    if runs is not None:
        flags.append(f"-runs={runs}")
    if seed is not None:
        flags.append(f"-seed={seed}")
    if jobs > 1:
        flags += [f"-jobs={jobs}", f"-workers={jobs}"]
    return flags


def run_campaign(corpus: list[str], impl: str, seconds: int | None, runs: int | None, jobs: int,
                 seed: int | None, crash_dir: str, extra_flags: list[str], progress: Progress | None = None,
                 stop_on_finding: bool = False) -> CampaignSummary:
    """Fuzz impl against the reference; progress, if given, hears of each status line."""
    load_implementation(impl)
    with tempfile.TemporaryDirectory(prefix="rmapfuzz-") as work:
        work_dir = Path(work)
        seeds, summaries = work_dir / "seeds", work_dir / "summaries"
        seeds.mkdir()
        summaries.mkdir()
        prepare_seeds(corpus, seeds)
        python_path = os.pathsep.join(filter(None, [str(PROJECT_DIR), os.environ.get("PYTHONPATH")]))
        env = dict(os.environ, **{IMPL_ENV: impl, CRASH_DIR_ENV: str(Path(crash_dir).resolve()),
                                  SUMMARY_DIR_ENV: str(summaries), "PYTHONPATH": python_path,
                                  STOP_ENV: "1" if stop_on_finding else "0"})
        command = [sys.executable, "-m", "fuzz.engine.harness", *libfuzzer_flags(seconds, runs, jobs, seed),
                   *extra_flags, str(seeds)]
        started = time.monotonic()
        process = subprocess.Popen(command, env=env, cwd=work_dir, stderr=subprocess.PIPE, text=True,
                                   stdout=subprocess.DEVNULL)
        assert process.stderr is not None
        last_lines: list[str] = []
        for line in process.stderr:
            last_lines = [*last_lines[-(LAST_LINES - 1):], line.rstrip()]
            match = PROGRESS.match(line)
            if progress is not None and match:
                progress(int(match.group(1)), int(match.group(3)))
        process.wait()
        summary = merge_summaries(summaries, time.monotonic() - started)
        if process.returncode != 0 and not summary.findings:
            raise UsageError(f"the fuzzer stopped with status {process.returncode}: "
                             f"{last_lines[-1] if last_lines else 'no output'}")
        return summary


def run_default_campaign(impl: str, seconds: int, crash_dir: str | None = None, stop_on_finding: bool = False,
                         corpus: list[str] | None = None) -> CampaignSummary:
    """The default campaign (the gate's, the self-test's and the bench's): the seed corpus,
    libFuzzer seed DEFAULT_SEED, one process, for seconds; findings go to crash_dir, or to a
    directory dropped afterwards."""
    def run(crashes: str) -> CampaignSummary:
        return run_campaign(corpus or [DEFAULT_CORPUS], impl=impl, seconds=seconds, runs=None, jobs=1,
                            seed=DEFAULT_SEED, crash_dir=crashes, extra_flags=[],
                            stop_on_finding=stop_on_finding)

    if crash_dir is not None:
        return run(crash_dir)
    with tempfile.TemporaryDirectory(prefix="rmapfuzz-crashes-") as crashes:
        return run(crashes)


def merge_summaries(directory: Path, wall_seconds: float) -> CampaignSummary:
    """The campaign's summary from its fuzzing processes' ones: executions, findings, and the
    seconds the processes spent fuzzing, in all and in each part of the loop."""
    executions, findings = 0, []
    fuzzing_seconds, seconds_by_part = 0.0, Counter[str]()
    for summary in read_summaries(directory):
        executions += summary.executions
        findings += summary.findings
        fuzzing_seconds += summary.seconds
        seconds_by_part.update(summary.seconds_by_part)
    return CampaignSummary(
        executions=executions, seconds=round(wall_seconds, 2),
        exec_per_s=executions / wall_seconds if wall_seconds else 0.0, findings=findings,
        fuzzing_seconds=round(fuzzing_seconds, 2),
        seconds_by_part={part: round(seconds, 4) for part, seconds in sorted(seconds_by_part.items())})


def ms_per_execution(summary: CampaignSummary) -> dict[str, float]:
    """Milliseconds per execution in each part of the loop (merge_summaries' seconds_by_part),
    and in the rest of the fuzzing processes' time; empty without executions."""
    if not summary.executions:
        return {}
    parts = dict(summary.seconds_by_part)
    parts[REST_PART] = max(summary.fuzzing_seconds - sum(parts.values()), 0.0)
    return {part: round(seconds * 1000 / summary.executions, 3) for part, seconds in parts.items()}


def selftest(budget: int, names: list[str] | None = None, corpus: list[str] | None = None) -> list[SelftestRow]:
    """Fuzz every canary (a planted bug class) with the default campaign for at most budget
    seconds each, stopping at the first finding."""
    rows = []
    for name in names or CANARIES:
        summary = run_default_campaign(f"fuzz.canaries.{name}", budget, stop_on_finding=True, corpus=corpus)
        first = summary.findings[0] if summary.findings else None
        if first is None:
            rows.append(SelftestRow(name, False, summary.seconds, summary.executions, None, None))
        else:
            rows.append(SelftestRow(name, True, first.seconds, first.executions, first.ops, first.signature))
    return rows
