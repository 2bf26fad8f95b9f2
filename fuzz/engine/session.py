"""One fuzzing process's state: the implementations it runs, its counts, the findings it
saved, and the summary file through which the campaign that started it reads them.

`rmapfuzz fuzz` starts the harness (`python -m fuzz.engine.harness`) in a child process,
which libFuzzer owns; the campaign hands it its settings in the environment (`*_ENV`) and
reads its counts back from `summary-<pid>.json` in the summary directory.
"""

from __future__ import annotations

import json
import os
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from fuzz.engine.decode import OpStream
from fuzz.engine.findings import SavedFinding, is_saved, minimise_and_save
from fuzz.engine.mutator import StructuralMutator
from fuzz.engine.snapshots import RunCapture, SnapshotCache, SnapshotError
from fuzz.errors import UsageError
from fuzz.implementation import DEFAULT_IMPL, REFERENCE_IMPL, load_implementation
from fuzz.judge.runner import DECODER_PART, Carried, RunResult, run_stream
from fuzz.judge.scan import ContpteVerdicts
from fuzz.script.ops import Script

log = structlog.get_logger()

IMPL_ENV = "RMAPFUZZ_IMPL"
CRASH_DIR_ENV = "RMAPFUZZ_CRASH_DIR"
SUMMARY_DIR_ENV = "RMAPFUZZ_SUMMARY_DIR"
LOG_JSON_ENV = "RMAPFUZZ_LOG_JSON"   # "1": the harness logs JSON lines, which the campaign reads
FINDING_EVENT = "finding"   # the log event of a finding saved: signature, ops, path
LAUNCHER_ENV = "RMAPFUZZ_LAUNCHER"   # an executable running the harness: what libFuzzer re-executes
STOP_ENV = "RMAPFUZZ_STOP_ON_FINDING"  # the self-test stops each campaign at its first finding
# Resuming inputs from snapshots (fuzz.engine.snapshots): the cache's budget in MiB; unset,
# empty or "0" runs every input from its first op (the default: in the campaign A/B resuming
# measured 0.83x to 1.08x, see the README).
RESUME_ENV = "RMAPFUZZ_RESUME_MIB"
MAX_RESUME_MIB = 1024
DEFAULT_CRASH_DIR = "corpus/crashes"
SUMMARY_EVERY_S = 0.5
SUMMARY_GLOB = "summary-*.json"
# The parts of the loop a summary times: the runner's (RunResult.seconds) and the mutator's.
MUTATOR_PART = "mutator"
SNAPSHOT_PART = "snapshots"   # copying states to and from the snapshot cache


@dataclass
class ProcessSummary:
    """What one fuzzing process reports: executions, its seconds, the findings it saved and
    the seconds spent in each part of its loop."""

    executions: int
    seconds: float
    findings: list[SavedFinding] = field(default_factory=list)
    seconds_by_part: dict[str, float] = field(default_factory=dict)
    # The ops of the inputs run, the process's CPU seconds, and the cache's SnapshotStats if it resumes.
    snapshots: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"executions": self.executions, "seconds": self.seconds,
                "findings": [finding.to_json() for finding in self.findings],
                "seconds_by_part": self.seconds_by_part, "snapshots": self.snapshots}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ProcessSummary:
        return cls(data["executions"], data["seconds"],
                   [SavedFinding.from_json(finding) for finding in data["findings"]],
                   dict(data["seconds_by_part"]), dict(data.get("snapshots") or {}))


def read_summaries(directory: Path) -> list[ProcessSummary]:
    """The summaries the fuzzing processes of one campaign wrote to directory."""
    return [ProcessSummary.from_json(json.loads(path.read_text(encoding="utf-8")))
            for path in sorted(directory.glob(SUMMARY_GLOB))]


class Session:
    """The state of one fuzzing process: counts, the findings it saved, its summary file."""

    def __init__(self, impl: str, crash_dir: Path, summary_dir: Path | None,
                 mutator: StructuralMutator | None = None, stop_on_finding: bool = False,
                 snapshot_budget: int | None = None) -> None:
        """snapshot_budget: the bytes of the snapshot cache, None to run every input from its first op."""
        self.impl_name = impl
        self.impl = load_implementation(impl)
        self.reference = load_implementation(REFERENCE_IMPL)   # loaded once, not per input
        self.crash_dir = crash_dir
        self.summary_path = summary_dir / f"summary-{os.getpid()}.json" if summary_dir else None
        self.mutator = mutator if mutator is not None else StructuralMutator()
        self.contpte_verdicts = ContpteVerdicts()   # the layout oracle's, kept across inputs
        self.stop_on_finding = stop_on_finding   # the self-test's: leave at the first finding saved
        self.executions = 0
        self.ops = 0   # the ops of the inputs run, those a resumed run skipped too
        self.findings: list[SavedFinding] = []
        self.seconds_by_part: defaultdict[str, float] = defaultdict(float)
        self.started = time.monotonic()
        self.started_cpu = time.process_time()
        self.last_summary = 0.0
        self.snapshots = SnapshotCache(snapshot_budget) if snapshot_budget else None
        if self.snapshots is not None:
            self.mutator.points_of = self.snapshots.points_of

    @classmethod
    def from_environment(cls) -> Session:
        """The session the campaign asked for in the environment (see the *_ENV names)."""
        summary_dir = os.environ.get(SUMMARY_DIR_ENV)
        return cls(os.environ.get(IMPL_ENV, DEFAULT_IMPL), Path(os.environ.get(CRASH_DIR_ENV, DEFAULT_CRASH_DIR)),
                   Path(summary_dir) if summary_dir else None, stop_on_finding=os.environ.get(STOP_ENV) == "1",
                   snapshot_budget=snapshot_budget(os.environ.get(RESUME_ENV, "")))

    def test_one_input(self, data: bytes) -> None:
        """libFuzzer's callback: decode and run data on both implementations, at once, from
        the latest state a snapshot holds of an input that ends like it (see run_input)."""
        self.executions += 1
        stream, result = self.run_input(data)
        self.ops += result.ops_run
        for part, seconds in result.seconds.items():
            self.seconds_by_part[part] += seconds
        if stream.ended:   # every op was drawn and run: the script is decode(data)
            self.mutator.remember_run(data, stream.decoded())
        if result.findings:
            self.record(stream.script, result.findings[0].signature)
        if time.monotonic() - self.last_summary > SUMMARY_EVERY_S:
            self.write_summary()

    def run_input(self, data: bytes) -> tuple[OpStream, RunResult]:
        """Decode and run data, resuming from a snapshot if the cache holds one for it and
        keeping snapshots of its run; the result is that of a run from the first op."""
        cache = self.snapshots
        if cache is None:
            stream = OpStream(data)
            return stream, run_stream(stream.script, stream.next_op, self.impl, self.reference, self.contpte_verdicts)
        copying = cache.stats.copy_seconds
        point = cache.lookup(data)
        start: Carried | None = None
        if point is None:
            stream, base_work = OpStream(data), 0.0
        else:
            stream, start = cache.resume(point, data)
            base_work = point.work
        capturing = RunCapture(cache, data, stream, base_work)
        try:
            result = run_stream(stream.script, capturing.next_op, self.impl, self.reference, self.contpte_verdicts,
                                start, capturing.after_op)
        except SnapshotError as error:   # a kernel holds what cannot be copied: no resuming
            log.warning("snapshots_off", impl=self.impl_name, reason=str(error))
            self.snapshots = None
            self.mutator.points_of = StructuralMutator().points_of
            return self.run_input(data)
        if not result.findings:
            capturing.ended()
        result.seconds[DECODER_PART] -= capturing.drawing_seconds
        self.seconds_by_part[SNAPSHOT_PART] += cache.stats.copy_seconds - copying
        return stream, result

    def record(self, script: Script, signature: str) -> None:
        """Minimise and save a finding of a signature not saved before."""
        if is_saved(self.crash_dir, signature):
            return
        saved = minimise_and_save(self.crash_dir, self.impl_name, self.impl, script, signature)
        if saved is not None:
            path, nr_ops = saved
            self.findings.append(SavedFinding(signature, nr_ops, str(path),
                                              round(time.monotonic() - self.started, 2), self.executions))
        self.write_summary()   # before the event: a campaign that hears it may stop this process at once
        if saved is not None:
            log.warning(FINDING_EVENT, signature=signature, ops=saved[1], path=str(saved[0]))
        if saved is not None and self.stop_on_finding:
            os._exit(0)  # libFuzzer owns the process: leave at once, the summary is written

    def summary(self) -> ProcessSummary:
        """The counts so far."""
        return ProcessSummary(self.executions, round(time.monotonic() - self.started, 3), list(self.findings),
                              dict(self.seconds_by_part),
                              {"ops": self.ops, "cpu_seconds": round(time.process_time() - self.started_cpu, 3),
                               **(self.snapshots.stats.to_json() if self.snapshots is not None else {})})

    def write_summary(self) -> None:
        """Replace the summary file (if there is one) with the counts so far."""
        self.last_summary = time.monotonic()
        if self.summary_path is None:
            return
        temporary = self.summary_path.with_suffix(".tmp")
        temporary.write_text(json.dumps(self.summary().to_json()), encoding="utf-8")
        os.replace(temporary, self.summary_path)


def snapshot_budget(text: str) -> int | None:
    """The snapshot cache's bytes for RESUME_ENV's value (MiB): None (no resuming) for "" or "0".
    UsageError unless it is a number of MiB up to 1024."""
    if text and not (text.isascii() and text.isdigit() and int(text) <= MAX_RESUME_MIB):
        raise UsageError(f"{RESUME_ENV}={text!r}: not a number of MiB from 0 to {MAX_RESUME_MIB}")
    mib = int(text) if text else 0
    return mib << 20 if mib > 0 else None
