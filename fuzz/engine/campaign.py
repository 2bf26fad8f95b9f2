"""A campaign: seeds prepared, the harness started in a child process with libFuzzer's flags,
its progress followed, and the summary of its fuzzing processes; the default campaign and
the self-test of the planted bugs."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import structlog

from fuzz.atomic import write_atomically_bytes
from fuzz.canaries import CANARIES
from fuzz.engine.decode import encode
from fuzz.engine.findings import SavedFinding, abandoned, hold_lock, sweep_staging
from fuzz.engine.lifeline import CAMPAIGN_PID_ENV, die_with_parent
from fuzz.engine.session import (
    CRASH_DIR_ENV,
    FINDING_EVENT,
    IMPL_ENV,
    LAUNCHER_ENV,
    LOG_JSON_ENV,
    RESUME_ENV,
    STOP_ENV,
    SUMMARY_DIR_ENV,
    read_summaries,
    snapshot_budget,
)
from fuzz.errors import UsageError
from fuzz.implementation import load_implementation
from fuzz.script.ops import ScriptError, parse_file

log = structlog.get_logger()

SCRIPT_SUFFIX = ".ops"
PROGRESS = re.compile(r"^#(\d+)\s+(\w+).*?exec/s: (\d+)")
PROJECT_DIR = Path(__file__).resolve().parents[2]
DEFAULT_CORPUS = "corpus/seeds"
DEFAULT_SEED = 1           # libFuzzer's seed of the default campaign and the self-test
RSS_LIMIT_MB = 8192        # libFuzzer's default 2048 was reached once in a 600 s campaign
REST_PART = "rest"         # libFuzzer, atheris' coverage bookkeeping, the harness's own code
LAST_LINES = 5             # of the fuzzer's output, kept to explain a failure
ARTIFACTS_DIR = "artifacts"   # libFuzzer's own artifacts, beside the crash directory
ARTIFACT_PREFIXES = ("crash-", "timeout-", "oom-", "slow-unit-", "leak-")
WORK_PREFIX = "rmapfuzz-"     # a campaign's temporary directory: then its pid

Progress = Callable[[int, int], None]   # (executions, exec/s) at each libFuzzer status line
FindingHeard = Callable[[str, int, str], None]   # (signature, ops, path) as soon as a worker saved it


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
    skipped: list[str] = field(default_factory=list)     # corpus files skipped: "path: problem"
    artifacts: list[str] = field(default_factory=list)   # libFuzzer's artifacts it wrote (crash-, timeout-, ...)
    snapshots: dict[str, float] = field(default_factory=dict)   # the processes' SnapshotStats, summed

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


@dataclass(frozen=True)
class SeedFile:
    """One file of a corpus the campaign was given: its path and the raw input it stands for."""

    path: Path
    data: bytes


@dataclass(frozen=True)
class SkippedFile:
    """A corpus file that is not a seed (an op script that does not parse, a file that cannot be
    read): reported by name and skipped, never fatal."""

    path: str
    problem: str

    def __str__(self) -> str:
        return f"{self.path}: {self.problem}"


def read_seeds(paths: list[str]) -> tuple[list[SeedFile], list[SkippedFile]]:
    """The raw inputs of seed files and directories (op scripts encoded, anything else as it
    is) and the files skipped; UsageError for a path that does not exist."""
    seeds, skipped = [], []
    for given in paths:
        path = Path(given)
        if not path.exists():
            raise UsageError(f"{given}: no such file or directory")
        files = sorted(item for item in path.rglob("*") if item.is_file()) if path.is_dir() else [path]
        for item in files:
            try:
                seeds.append(SeedFile(item, seed_bytes(item)))
            except ScriptError as error:
                skipped.append(SkippedFile(str(item), f"line {error.line}: {error.message}" if error.line
                                           else error.message))
            except (UsageError, OSError, UnicodeDecodeError) as error:
                skipped.append(SkippedFile(str(item), " ".join(str(error).split())))
    for skip in skipped:
        log.info("corpus_file_skipped", path=skip.path, problem=skip.problem)   # the front prints each
    return seeds, skipped


def seed_bytes(path: Path) -> bytes:
    """The raw input of one seed file: an op script encoded, anything else as it is."""
    return encode(parse_file(str(path))) if path.suffix == SCRIPT_SUFFIX else path.read_bytes()


def prepare_seeds(paths: list[str], directory: Path) -> tuple[int, list[SkippedFile]]:
    """Copy seeds into a libFuzzer corpus directory: raw inputs as they are, op scripts
    encoded. Returns how many were written and the files skipped."""
    seeds, skipped = read_seeds(paths)
    for count, seed in enumerate(seeds):
        (directory / f"seed-{count:05d}").write_bytes(seed.data)
    return len(seeds), skipped


def libfuzzer_flags(seconds: int | None, runs: int | None, jobs: int, seed: int | None, fork: int = 0) -> list[str]:
    """libFuzzer's flags for a campaign of at most seconds or runs, jobs processes, seed; fork
    workers in libFuzzer's fork mode, going on past a crash, a timeout or running out of memory."""
    flags = [f"-rss_limit_mb={RSS_LIMIT_MB}"]
    if seconds is not None:
        flags.append(f"-max_total_time={seconds}")
    if runs is not None:
        flags.append(f"-runs={runs}")
    if seed is not None:
        flags.append(f"-seed={seed}")
    if jobs > 1:
        flags += [f"-jobs={jobs}", f"-workers={jobs}", "-reload=1"]   # the workers share one corpus
    if fork > 0:
        flags += [f"-fork={fork}", "-ignore_crashes=1", "-ignore_timeouts=1", "-ignore_ooms=1"]
    return flags


def default_artifact_dir(crash_dir: str) -> Path:
    """Where libFuzzer's own artifacts go unless told: `artifacts/` beside the crash directory
    (corpus/artifacts for corpus/crashes), kept, never a temporary directory."""
    return Path(crash_dir).resolve().parent / ARTIFACTS_DIR


def artifacts_in(directory: Path) -> list[Path]:
    """libFuzzer's artifacts in directory (crash-, timeout-, oom-, slow-unit-, leak- files)."""
    if not directory.is_dir():
        return []
    return sorted(path for path in directory.iterdir() if path.name.startswith(ARTIFACT_PREFIXES))


def write_launcher(directory: Path) -> Path:
    """An executable that runs the harness with this Python: what libFuzzer re-executes for its
    -jobs, -fork and -merge workers (it cannot execute `python -m`)."""
    launcher = directory / "harness"
    launcher.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -m fuzz.engine.harness "$@"\n',
                        encoding="utf-8")
    launcher.chmod(0o755)
    return launcher


@contextmanager
def work_directory() -> Iterator[Path]:
    """A campaign's temporary directory (seeds, summaries, the launcher), named after its process
    and locked while it lives; first the ones campaigns killed before they could remove theirs
    are removed."""
    sweep_work_directories()
    with tempfile.TemporaryDirectory(prefix=f"{WORK_PREFIX}{os.getpid()}-") as work:
        lock = hold_lock(Path(work))
        try:
            yield Path(work)
        finally:
            os.close(lock)


def sweep_work_directories() -> list[Path]:
    """Remove the temporary directories of campaigns that died (abandoned); returns them."""
    swept = []
    for directory in sorted(Path(tempfile.gettempdir()).glob(f"{WORK_PREFIX}[0-9]*-*")):
        if directory.is_dir() and abandoned(directory):
            shutil.rmtree(directory, ignore_errors=True)
            swept.append(directory)
    return swept


def harness_environment(impl: str, crash_dir: Path, summaries: Path, launcher: Path,
                        stop_on_finding: bool) -> dict[str, str]:
    """The environment the harness reads its settings from (fuzz.engine.session's *_ENV)."""
    python_path = os.pathsep.join(filter(None, [str(PROJECT_DIR), os.environ.get("PYTHONPATH")]))
    return dict(os.environ, **{IMPL_ENV: impl, CRASH_DIR_ENV: str(crash_dir), SUMMARY_DIR_ENV: str(summaries),
                               "PYTHONPATH": python_path, STOP_ENV: "1" if stop_on_finding else "0",
                               LAUNCHER_ENV: str(launcher), CAMPAIGN_PID_ENV: str(os.getpid())})


def run_harness(command: list[str], env: dict[str, str], cwd: Path, progress: Progress | None = None,
                finding_heard: FindingHeard | None = None, stop_on_finding: bool = False) -> tuple[int, list[str]]:
    """Run the harness until it ends, telling progress of each status line and finding_heard of
    each finding a worker saved (its JSON log event); returns its exit status and the last lines
    of its output. The harness dies with this process; with stop_on_finding, at the first finding
    all its processes are killed (the other -jobs workers would fuzz on to the end of their time)."""
    process = subprocess.Popen(command, env=dict(env, **{LOG_JSON_ENV: "1"}), cwd=cwd, stderr=subprocess.PIPE,
                               text=True, stdout=subprocess.DEVNULL, preexec_fn=die_with_parent,
                               start_new_session=True)
    assert process.stderr is not None
    last_lines: list[str] = []
    try:
        for line in process.stderr:
            last_lines = [*last_lines[-(LAST_LINES - 1):], line.rstrip()]
            match = PROGRESS.match(line)
            if progress is not None and match:
                progress(int(match.group(1)), int(match.group(3)))
            event = finding_event(line)
            if event is not None and finding_heard is not None:
                finding_heard(*event)
            if event is not None and stop_on_finding:
                kill_process_group(process.pid)
    except KeyboardInterrupt:
        # Ctrl-C reaches this process alone (the harness leads its own session): pass it on, so
        # every worker stops as libFuzzer stops on SIGINT, with its summary written.
        kill_process_group(process.pid, signal.SIGINT)
        process.stderr.read()
        process.wait()
        return 0, last_lines
    return process.wait(), last_lines


def kill_process_group(pid: int, sig: int = signal.SIGKILL) -> None:
    """Signal the harness's process group (it leads its own session: its workers are in it)."""
    with suppress(ProcessLookupError):
        os.killpg(pid, sig)


def finding_event(line: str) -> tuple[str, int, str] | None:
    """(signature, ops, path) of a harness's `finding` log event (a JSON line), else None."""
    if not line.startswith("{"):
        return None
    try:
        event = json.loads(line)
    except json.JSONDecodeError:
        return None
    if not isinstance(event, dict) or event.get("event") != FINDING_EVENT:
        return None
    return str(event.get("signature")), int(event.get("ops", 0)), str(event.get("path"))


def run_campaign(corpus: list[str], impl: str, seconds: int | None, runs: int | None, jobs: int,
                 seed: int | None, crash_dir: str, extra_flags: list[str], progress: Progress | None = None,
                 stop_on_finding: bool = False, fork: int = 0, artifact_dir: str | None = None,
                 finding_heard: FindingHeard | None = None) -> CampaignSummary:
    """Fuzz impl against the reference; progress, if given, hears of each status line, and
    finding_heard of each finding once it is saved. Findings go to crash_dir, libFuzzer's own
    artifacts to artifact_dir (default_artifact_dir)."""
    load_implementation(impl)
    snapshot_budget(os.environ.get(RESUME_ENV, ""))   # a bad value is refused here, not in the harness
    crashes = Path(crash_dir).resolve()
    artifacts = Path(artifact_dir).resolve() if artifact_dir else default_artifact_dir(crash_dir)
    sweep_staging(crashes)
    artifacts.mkdir(parents=True, exist_ok=True)
    artifacts_before = set(artifacts_in(artifacts))
    with work_directory() as work_dir:
        seeds, summaries = work_dir / "seeds", work_dir / "summaries"
        seeds.mkdir()
        summaries.mkdir()
        _, skipped = prepare_seeds(corpus, seeds)
        launcher = write_launcher(work_dir)
        command = [str(launcher), *libfuzzer_flags(seconds, runs, jobs, seed, fork),
                   f"-artifact_prefix={artifacts}{os.sep}", *extra_flags, str(seeds)]
        started = time.monotonic()
        status, last_lines = run_harness(command, harness_environment(impl, crashes, summaries, launcher,
                                                                      stop_on_finding),
                                          work_dir, progress, finding_heard, stop_on_finding)
        new_artifacts = [str(path) for path in artifacts_in(artifacts) if path not in artifacts_before]
        summary = merge_summaries(summaries, time.monotonic() - started, skipped, new_artifacts)
        survived = fork > 0 and bool(new_artifacts)   # fork mode kept its crashing inputs and went on
        if status != 0 and not summary.findings and not survived:
            raise UsageError(f"the fuzzer stopped with status {status}: "
                             f"{last_lines[-1] if last_lines else 'no output'}"
                             + (f" (its input: {new_artifacts[-1]})" if new_artifacts else ""))
        return summary


def run_default_campaign(impl: str, seconds: int, crash_dir: str | None = None, stop_on_finding: bool = False,
                         corpus: list[str] | None = None, jobs: int = 1,
                         finding_heard: FindingHeard | None = None) -> CampaignSummary:
    """The default campaign (the gate's, the self-test's and the bench's): the seed corpus,
    libFuzzer seed DEFAULT_SEED, one process (or jobs workers sharing the corpus), for seconds;
    findings go to crash_dir, or to a directory dropped afterwards."""
    def run(crashes: str) -> CampaignSummary:
        return run_campaign(corpus or [DEFAULT_CORPUS], impl=impl, seconds=seconds, runs=None, jobs=jobs,
                            seed=DEFAULT_SEED, crash_dir=crashes, extra_flags=[],
                            stop_on_finding=stop_on_finding, finding_heard=finding_heard)

    if crash_dir is not None:
        return run(crash_dir)
    with tempfile.TemporaryDirectory(prefix="rmapfuzz-crashes-") as crashes:
        return run(crashes)


def merge_summaries(directory: Path, wall_seconds: float, skipped: list[SkippedFile] | None = None,
                    artifacts: list[str] | None = None) -> CampaignSummary:
    """The campaign's summary from its fuzzing processes' ones: executions, findings, and the
    seconds the processes spent fuzzing, in all and in each part of the loop."""
    executions, findings = 0, []
    fuzzing_seconds, seconds_by_part, snapshots = 0.0, Counter[str](), Counter[str]()
    for summary in read_summaries(directory):
        executions += summary.executions
        findings += summary.findings
        fuzzing_seconds += summary.seconds
        seconds_by_part.update(summary.seconds_by_part)
        snapshots.update(summary.snapshots)
    return CampaignSummary(
        executions=executions, seconds=round(wall_seconds, 2),
        exec_per_s=executions / wall_seconds if wall_seconds else 0.0, findings=findings,
        fuzzing_seconds=round(fuzzing_seconds, 2),
        seconds_by_part={part: round(seconds, 4) for part, seconds in sorted(seconds_by_part.items())},
        skipped=[str(skip) for skip in skipped or []], artifacts=list(artifacts or []),
        snapshots=dict(snapshots))


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


@dataclass(frozen=True)
class MergeSummary:
    """What a merge did: the inputs it was given, the files it added and the files skipped."""

    inputs: int
    added: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def merge_corpora(out_dir: str, in_dirs: list[str], impl: str) -> MergeSummary:
    """libFuzzer's -merge=1: add to out_dir the inputs of in_dirs that add coverage of impl to
    out_dir's own (so into an empty out_dir, a corpus minimised by coverage). An input that was
    an op script is added as that script, readable; a raw one as `<sha1>`. Findings the inputs
    show are not saved."""
    load_implementation(impl)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UsageError(f"{out_dir}: not a directory")
    out_seeds, skipped = read_seeds([out_dir]) if out.is_dir() else ([], [])
    in_seeds, in_skipped = read_seeds(in_dirs)
    with work_directory() as work_dir:
        staged_out, staged_in, crashes, summaries = (work_dir / name for name in ("out", "in", "crashes", "summaries"))
        for directory in (staged_out, staged_in, summaries):
            directory.mkdir()
        for seed in out_seeds:
            (staged_out / sha1_name(seed.data)).write_bytes(seed.data)
        before = {path.name for path in staged_out.iterdir()}
        origins: dict[str, SeedFile] = {}
        for seed in in_seeds:
            origins.setdefault(sha1_name(seed.data), seed)
            (staged_in / sha1_name(seed.data)).write_bytes(seed.data)
        launcher = write_launcher(work_dir)
        command = [str(launcher), "-merge=1", f"-rss_limit_mb={RSS_LIMIT_MB}",
                   f"-artifact_prefix={work_dir}{os.sep}", str(staged_out), str(staged_in)]
        status, last_lines = run_harness(command, harness_environment(impl, crashes, summaries, launcher, False),
                                         work_dir)
        if status != 0:
            raise UsageError(f"the merge stopped with status {status}: {last_lines[-1] if last_lines else 'no output'}")
        added = sorted(path.name for path in staged_out.iterdir() if path.name not in before)
    out.mkdir(parents=True, exist_ok=True)
    written = [str(write_merged(out, origins[name], name)) for name in added if name in origins]
    return MergeSummary(len(out_seeds) + len(in_seeds), written, [str(skip) for skip in skipped + in_skipped])


def sha1_name(data: bytes) -> str:
    """libFuzzer's name for an input in a corpus: the hex SHA-1 of its bytes."""
    return hashlib.sha1(data).hexdigest()


def write_merged(out: Path, seed: SeedFile, name: str) -> Path:
    """Write a merged input into out, atomically: an op script as itself (under its own name, or
    with the input's hash added if out has another file of that name), a raw input as name."""
    if seed.path.suffix != SCRIPT_SUFFIX:
        target = out / name
        write_atomically_bytes(str(target), seed.data)
        return target
    text = seed.path.read_bytes()
    target = out / seed.path.name
    if target.exists() and target.read_bytes() != text:
        target = out / f"{seed.path.stem}-{name[:12]}{SCRIPT_SUFFIX}"
    write_atomically_bytes(str(target), text)
    return target


@dataclass(frozen=True)
class WorkersRow:
    """The default campaign with some workers sharing its corpus: executions per second (all
    workers' executions over the wall time, start-up included)."""

    workers: int
    executions: int
    seconds: float
    exec_per_s: float

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class TimeToFindRow:
    """One planted bug fuzzed by some workers until the first finding: found or not, the wall
    seconds from the campaign's start to the finding saved (or of the whole budget)."""

    bug: str
    workers: int
    found: bool
    seconds: float

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def workers_bench(impl: str, seconds: int, workers: tuple[int, ...] = (1, 2)) -> list[WorkersRow]:
    """Executions per second of the default campaign against impl with each number of workers."""
    rows = []
    for count in workers:
        summary = run_default_campaign(impl, seconds, jobs=count)
        rows.append(WorkersRow(count, summary.executions, summary.seconds, round(summary.exec_per_s, 1)))
    return rows


def time_to_find_bench(budget: int, names: list[str] | None = None, workers: tuple[int, ...] = (1, 2),
                       corpus: list[str] | None = None) -> list[TimeToFindRow]:
    """The wall seconds to each canary's first finding with each number of workers (the default
    campaign, from corpus if given, stopped at its first finding or after budget seconds)."""
    return [time_to_find(name, count, budget, corpus) for name in names or CANARIES for count in workers]


def time_to_find(name: str, workers: int, budget: int, corpus: list[str] | None = None) -> TimeToFindRow:
    """The wall seconds to one canary's first finding with workers workers (see time_to_find_bench)."""
    heard: list[float] = []
    started = time.monotonic()
    summary = run_default_campaign(f"fuzz.canaries.{name}", budget, stop_on_finding=True, jobs=workers,
                                   corpus=corpus, finding_heard=lambda *_: heard.append(time.monotonic() - started))
    seconds = heard[0] if heard else summary.seconds
    return TimeToFindRow(name, workers, bool(heard) or bool(summary.findings), round(seconds, 2))
