"""Running an atheris campaign from the CLI: seeds prepared, the harness started in a child
process with libFuzzer's flags, a live progress line, and the closing summary."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from fuzz.engine.harness import CRASH_DIR_ENV, IMPL_ENV, STOP_ENV, SUMMARY_DIR_ENV
from fuzz.errors import UsageError

PROGRESS = re.compile(r"^#(\d+)\s+(\w+).*?exec/s: (\d+)")


def prepare_seeds(paths: list[str], directory: Path) -> int:
    """Copy seeds into a libFuzzer corpus directory: raw inputs as they are, op scripts
    encoded. Returns how many were written."""
    from fuzz.engine.decode import encode
    from fuzz.script.ops import parse_file

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


RSS_LIMIT_MB = 8192  # libFuzzer's default 2048 was reached once in a 600 s campaign (see the note)


def libfuzzer_flags(seconds: int | None, runs: int | None, jobs: int, seed: int | None) -> list[str]:
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
                 seed: int | None, crash_dir: str, extra_flags: list[str], progress: bool,
                 stop_on_finding: bool = False) -> dict[str, Any]:
    """Fuzz impl against the reference; returns the summary (executions, exec/s, findings)."""
    from fuzz.implementation import load_implementation

    load_implementation(impl)
    with tempfile.TemporaryDirectory(prefix="rmapfuzz-") as work:
        work_dir = Path(work)
        seeds, summaries = work_dir / "seeds", work_dir / "summaries"
        seeds.mkdir()
        summaries.mkdir()
        prepare_seeds(corpus, seeds)
        project = str(Path(__file__).resolve().parents[2])
        python_path = os.pathsep.join(filter(None, [project, os.environ.get("PYTHONPATH")]))
        env = dict(os.environ, **{IMPL_ENV: impl, CRASH_DIR_ENV: str(Path(crash_dir).resolve()),
                                  SUMMARY_DIR_ENV: str(summaries), "PYTHONPATH": python_path,
                                  STOP_ENV: "1" if stop_on_finding else "0"})
        command = [sys.executable, "-m", "fuzz.engine.harness", *libfuzzer_flags(seconds, runs, jobs, seed),
                   *extra_flags, str(seeds)]
        started = time.monotonic()
        process = subprocess.Popen(command, env=env, cwd=work_dir, stderr=subprocess.PIPE, text=True,
                                   stdout=subprocess.DEVNULL)
        last_lines: list[str] = []
        for line in process.stderr:
            last_lines = [*last_lines[-4:], line.rstrip()]
            match = PROGRESS.match(line)
            if progress and match:
                print(f"\r{match.group(1)} execs, {match.group(3)} exec/s  ", end="", file=sys.stderr, flush=True)
        process.wait()
        if progress:
            print(file=sys.stderr)
        summary = merge_summaries(summaries, time.monotonic() - started)
        if process.returncode != 0 and not summary["findings"]:
            raise UsageError(f"the fuzzer stopped with status {process.returncode}: "
                             f"{last_lines[-1] if last_lines else 'no output'}")
        return summary


def merge_summaries(directory: Path, wall_seconds: float) -> dict[str, Any]:
    """The campaign's summary from its fuzzing processes' ones: executions, findings, and the
    seconds the processes spent fuzzing, in all and in each part of the loop."""
    executions, findings = 0, []
    fuzzing_seconds, seconds_by_part = 0.0, Counter()
    for path in sorted(directory.glob("summary-*.json")):
        summary = json.loads(path.read_text(encoding="utf-8"))
        executions += summary["executions"]
        findings += summary["findings"]
        fuzzing_seconds += summary["seconds"]
        seconds_by_part.update(summary["seconds_by_part"])
    return {"executions": executions, "seconds": round(wall_seconds, 2),
            "exec_per_s": executions / wall_seconds if wall_seconds else 0.0, "findings": findings,
            "fuzzing_seconds": round(fuzzing_seconds, 2),
            "seconds_by_part": {part: round(seconds, 4) for part, seconds in sorted(seconds_by_part.items())}}


REST_PART = "rest"   # libFuzzer, atheris' coverage bookkeeping, the harness's own code


def ms_per_execution(summary: dict[str, Any]) -> dict[str, float]:
    """Milliseconds per execution in each part of the loop (merge_summaries' seconds_by_part),
    and in the rest of the fuzzing processes' time; empty without executions."""
    executions = summary["executions"]
    if not executions:
        return {}
    parts = dict(summary["seconds_by_part"])
    parts[REST_PART] = max(summary["fuzzing_seconds"] - sum(parts.values()), 0.0)
    return {part: round(seconds * 1000 / executions, 3) for part, seconds in parts.items()}


SELFTEST_SEED = 1


def selftest(budget: int, names: list[str] | None = None, corpus: list[str] | None = None) -> list[dict[str, Any]]:
    """Fuzz every canary (a planted bug class) for at most budget seconds with a fixed seed;
    per canary: found, seconds and executions to the first finding, minimised op count."""
    from fuzz.canaries import CANARIES

    rows = []
    for name in names or CANARIES:
        with tempfile.TemporaryDirectory(prefix="rmapfuzz-selftest-") as crashes:
            summary = run_campaign(corpus or ["corpus/seeds"], impl=f"fuzz.canaries.{name}", seconds=budget,
                                   runs=None, jobs=1, seed=SELFTEST_SEED, crash_dir=crashes,
                                   extra_flags=[], progress=False, stop_on_finding=True)
        first = summary["findings"][0] if summary["findings"] else None
        rows.append({"bug": name, "found": first is not None,
                     "seconds": first["seconds"] if first else summary["seconds"],
                     "executions": first["executions"] if first else summary["executions"],
                     "ops": first["ops"] if first else None,
                     "signature": first["signature"] if first else None})
    return rows


def format_selftest(rows: list[dict[str, Any]]) -> str:
    lines = [f"{'bug':32s} {'found':5s} {'seconds':>8s} {'executions':>10s} {'ops':>4s}"]
    for row in rows:
        lines.append(f"{row['bug']:32s} {'yes' if row['found'] else 'NO':5s} {row['seconds']:8.1f} "
                     f"{row['executions']:10d} {row['ops'] if row['ops'] is not None else '-':>4}")
    return "\n".join(lines)
