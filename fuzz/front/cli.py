"""The `rmapfuzz` command (SPEC §7).

Exit status: 0 when everything holds, 1 on a finding, 2 on bad input or
usage. Bad input and usage print exactly one line, `rmapfuzz: problem`, on
stderr. An unexpected exception in the harness itself is a bug: one line and
status 2, or its traceback with RMAPFUZZ_DEBUG=1.

Each subcommand is a `_command_NAME(args) -> int` registered in `_COMMANDS`
with a function adding its arguments.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import structlog

from fuzz.atomic import write_atomically, write_atomically_bytes
from fuzz.errors import QUOTE_LIMIT, UsageError, quote_token, shown_number
from fuzz.implementation import DEFAULT_IMPL, REFERENCE_IMPL, load_implementation
from fuzz.kernelc.series import KERNEL_PATCH_ENV
from fuzz.kernelc.source import KERNEL_TREE_ENV
from fuzz.logs import configure_logging
from fuzz.script.ops import Script, ScriptError, parse_file

if TYPE_CHECKING:
    from fuzz.engine.campaign import CampaignSummary, SelftestRow
    from fuzz.engine.findings import SavedFinding

PROG = "rmapfuzz"
SCRIPT_SUFFIX = ".ops"
EXIT_OK, EXIT_FINDING, EXIT_USAGE = 0, 1, 2

log = structlog.get_logger()


_ARGPARSE_TOKEN = re.compile(rf"'([^']{{{QUOTE_LIMIT + 1},}})'")   # a long token argparse quotes


class _ArgumentParser(argparse.ArgumentParser):
    """argparse that raises UsageError instead of printing usage and exiting."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(_ARGPARSE_TOKEN.sub(lambda token: quote_token(token.group(1)), message))


# ---------------------------------------------------------------------------
# replay


def _add_replay_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("files", nargs="+", metavar="FILE",
                        help="op scripts (.ops) or raw fuzzer inputs")
    parser.add_argument("--impl", default=DEFAULT_IMPL, metavar="NAME",
                        help="implementation under test: reference, batched, a module path "
                             f"or an entry point in rmapfuzz.implementations (default {DEFAULT_IMPL})")
    parser.add_argument("--json", action="store_true", help="print the results as one JSON object")


def _load_input(path: str) -> Script:
    """An op script (.ops), or a raw fuzzer input decoded to one. A stored input of another
    encoding version is refused, except libFuzzer's own artifacts (crash-<sha1>, timeout-, ...):
    the harness decoded their mutated version byte (the last one) as it decodes any input, ignoring it."""
    if path.endswith(SCRIPT_SUFFIX):
        return parse_file(path)
    from fuzz.engine.campaign import ARTIFACT_PREFIXES
    from fuzz.engine.decode import check_version, decode

    data = _read_bytes(path)
    if not os.path.basename(path).startswith(ARTIFACT_PREFIXES):
        check_version(data, path)
    return decode(data, path)


def _read_bytes(path: str) -> bytes:
    try:
        with open(path, "rb") as stream:
            return stream.read()
    except OSError as error:
        raise ScriptError(path, 0, f"cannot read: {error.strerror or error}") from error


def _command_replay(args: argparse.Namespace) -> int:
    from fuzz.judge.runner import run_script

    # All input is checked before anything runs: a bad file is exit 2, never half a replay.
    scripts = [_load_input(path) for path in args.files]
    load_implementation(REFERENCE_IMPL)
    load_implementation(args.impl)
    files = []
    status = EXIT_OK
    for script in scripts:
        result = run_script(script, impl=args.impl, ref=REFERENCE_IMPL)
        log.info("replayed", path=script.path, impl=args.impl, ops=result.ops_run,
                 findings=len(result.findings))
        if result.findings:
            status = EXIT_FINDING
        files.append({"path": script.path, "ok": result.ok, "ops": result.ops_run,
                      "findings": [finding.to_json() for finding in result.findings]})
        if not args.json:
            for finding in result.findings:
                print(finding.report())
            if result.ok:
                print(f"{script.path}: ok ({result.ops_run} ops)")
    if args.json:
        print(json.dumps({"files": files}, indent=2))
    return status


# ---------------------------------------------------------------------------
# minimize


def _add_minimize_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", metavar="FILE", help="an op script (.ops) that shows a finding")
    parser.add_argument("-o", "--output", metavar="OUT",
                        help="write the minimised script here (atomically); default: print it")
    parser.add_argument("--impl", default=DEFAULT_IMPL, metavar="NAME",
                        help=f"implementation under test (default {DEFAULT_IMPL})")
    parser.add_argument("--max-runs", type=int, default=None, metavar="N",
                        help="give up shrinking after N candidate runs")


def _command_minimize(args: argparse.Namespace) -> int:
    from fuzz.engine.minimize import MAX_RUNS, header_comment, minimize_script
    from fuzz.script.ops import format_script

    script = _load_input(args.file)
    if args.max_runs is not None and args.max_runs < 1:
        raise UsageError(f"--max-runs must be positive, not {shown_number(args.max_runs)}")
    load_implementation(REFERENCE_IMPL)
    module = load_implementation(args.impl)
    minimized = minimize_script(script, module, REFERENCE_IMPL, args.max_runs or MAX_RUNS)
    if minimized is None:
        print(f"{args.file}: no finding to minimise")
        return EXIT_OK
    small, signature = minimized
    out = args.output or "-"
    command = f"rmapfuzz replay --impl {args.impl} {out if args.output else 'FILE'}"
    text = header_comment(signature, len(script.steps), command) + format_script(small)
    if args.output:
        write_atomically(args.output, text)
        print(f"{args.output}: {signature}, {len(small.steps)} steps (from {len(script.steps)})")
    else:
        print(text, end="")
    return EXIT_FINDING


# ---------------------------------------------------------------------------
# fuzz


def _add_fuzz_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("corpus", nargs="*", metavar="CORPUS",
                        help="seed directories or files: op scripts (.ops) or raw inputs "
                             "(default corpus/seeds)")
    parser.add_argument("--time", type=int, default=None, metavar="S", help="stop after S seconds")
    parser.add_argument("--runs", type=int, default=None, metavar="N", help="stop after N executions")
    parser.add_argument("--jobs", type=int, default=1, metavar="N",
                        help="N parallel campaigns (libFuzzer's -jobs and -workers)")
    parser.add_argument("--impl", default=DEFAULT_IMPL, metavar="NAME",
                        help=f"implementation under test (default {DEFAULT_IMPL})")
    parser.add_argument("--seed", type=int, default=None, metavar="N", help="libFuzzer's -seed")
    parser.add_argument("--crashes", default="corpus/crashes", metavar="DIR",
                        help="where findings are saved (default corpus/crashes)")
    parser.add_argument("--artifacts", default=None, metavar="DIR",
                        help="where libFuzzer's own artifacts (crash-, timeout-, oom-, slow-unit- files) go "
                             "(default: artifacts/ beside the crash directory, corpus/artifacts)")
    parser.add_argument("--fork", type=int, default=0, metavar="N",
                        help="libFuzzer's fork mode with N workers: a crashing or hanging input is kept "
                             "as an artifact and the campaign goes on")
    parser.add_argument("--json", action="store_true", help="print the closing summary as JSON")
    parser.add_argument("libfuzzer", nargs=argparse.REMAINDER, metavar="-- FLAGS",
                        help="libFuzzer flags after --")


def _command_fuzz(args: argparse.Namespace) -> int:
    from fuzz.engine.campaign import DEFAULT_CORPUS, run_campaign

    for name, value in (("--time", args.time), ("--runs", args.runs), ("--jobs", args.jobs)):
        if value is not None and value < 1:
            raise UsageError(f"{name} must be positive, not {shown_number(value)}")
    if args.fork < 0:
        raise UsageError(f"--fork must not be negative, not {shown_number(args.fork)}")
    extra = args.libfuzzer[1:] if args.libfuzzer[:1] == ["--"] else args.libfuzzer
    # After `CORPUS... --`, argparse hands the libFuzzer flags to CORPUS: a corpus path never starts with '-'.
    extra = [item for item in args.corpus if item.startswith("-")] + extra
    args.corpus = [item for item in args.corpus if not item.startswith("-")]
    bad = [flag for flag in extra if not flag.startswith("-")]
    if bad:
        raise UsageError(f"libFuzzer flags start with '-': {quote_token(bad[0])}")
    summary = run_campaign(args.corpus or [DEFAULT_CORPUS], impl=args.impl, seconds=args.time,
                           runs=args.runs, jobs=args.jobs, seed=args.seed, crash_dir=args.crashes,
                           extra_flags=extra, progress=None if args.json else _show_progress,
                           fork=args.fork, artifact_dir=args.artifacts, finding_heard=_show_finding)
    if not args.json:
        print(file=sys.stderr)   # ends the progress line
    _report_skipped(summary.skipped)
    if args.json:
        print(json.dumps(summary.to_json(), indent=2))
    else:
        print(f"{summary.executions} executions in {summary.seconds:.1f} s "
              f"({summary.exec_per_s:.0f} exec/s), {len(summary.findings)} new findings")
        for finding in summary.findings:
            print(f"  {finding.signature}: {finding.ops} ops, {finding.path}")
        for artifact in summary.artifacts:
            print(f"  libFuzzer artifact: {artifact} (rmapfuzz replay {artifact})")
    return EXIT_FINDING if summary.findings or summary.artifacts else EXIT_OK


def _report_skipped(skipped: list[str]) -> None:
    """One line on stderr for each corpus file skipped: its name and its problem."""
    for line in skipped:
        print(f"{PROG}: {' '.join(line.split())} (skipped)", file=sys.stderr)


def _show_finding(signature: str, ops: int, path: str) -> None:
    """A finding as soon as a worker saved it, on stderr: whole on disk from this line on."""
    print(f"\rfinding {signature}: {ops} ops, {path}", file=sys.stderr, flush=True)


def _show_progress(executions: int, exec_per_s: int) -> None:
    """The campaign's live progress line on stderr, rewritten in place."""
    print(f"\r{executions} execs, {exec_per_s} exec/s  ", end="", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------
# selftest


def _add_selftest_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--budget", type=int, default=60, metavar="S",
                        help="seconds of fuzzing per planted bug (default 60)")
    parser.add_argument("--canary", action="append", metavar="NAME", help="only this canary (repeatable)")
    parser.add_argument("--empty-corpus", action="store_true",
                        help="start every campaign from an empty corpus instead of the seeds: "
                             "what the search finds by itself")
    parser.add_argument("--impl", choices=("batched", "kernel-c"), default="batched",
                        help="batched: bugs planted in copies of batched/ (default); kernel-c: bugs planted "
                             "in the kernel tree's C (fuzz/kernelc/plants.py)")
    parser.add_argument("--json", action="store_true", help="print the table as JSON")


def _command_selftest(args: argparse.Namespace) -> int:
    from fuzz.canaries import CANARIES
    from fuzz.engine.campaign import selftest

    if args.budget < 1:
        raise UsageError(f"--budget must be positive, not {shown_number(args.budget)}")
    if args.impl == "kernel-c":
        from fuzz.kernelc.plants import selftest as kernel_c_selftest

        rows = kernel_c_selftest(args.budget, args.canary)
        print(json.dumps({"canaries": [row.to_json() for row in rows]}, indent=2) if args.json
              else format_selftest(rows))
        return EXIT_OK if all(row.passed for row in rows) else EXIT_FINDING
    unknown = [name for name in args.canary or [] if name not in CANARIES]
    if unknown:
        raise UsageError(f"unknown canary {quote_token(unknown[0])} (known: {', '.join(CANARIES)})")
    if args.empty_corpus:
        import tempfile

        with tempfile.TemporaryDirectory(prefix="rmapfuzz-empty-corpus-") as empty:
            rows = selftest(args.budget, args.canary, corpus=[empty])
    else:
        rows = selftest(args.budget, args.canary)
    print(json.dumps({"canaries": [row.to_json() for row in rows]}, indent=2) if args.json
          else format_selftest(rows))
    return EXIT_OK if all(row.passed for row in rows) else EXIT_FINDING


def format_selftest(rows: list[SelftestRow]) -> str:
    """The self-test as a table: per planted bug, found, seconds, executions, minimised ops."""
    lines = [f"{'bug':32s} {'found':5s} {'seconds':>8s} {'executions':>10s} {'ops':>4s}"]
    for row in rows:
        lines.append(f"{row.bug:32s} {'yes' if row.found else 'NO':5s} {row.seconds:8.1f} "
                     f"{row.executions:10d} {row.ops if row.ops is not None else '-':>4}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------
# gate


def _add_gate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--fuzz-time", type=int, default=60, metavar="S",
                        help="seconds of the seeded campaign against the implementation (default 60)")
    parser.add_argument("--selftest-budget", type=int, default=20, metavar="S",
                        help="seconds per planted bug in the self-test (default 20)")
    parser.add_argument("--impl", default=DEFAULT_IMPL, metavar="NAME",
                        help=f"implementation under test (default {DEFAULT_IMPL})")
    parser.add_argument("--crashes", default="corpus/crashes", metavar="DIR",
                        help="where the campaign's findings are saved (default corpus/crashes)")


def replay_corpus(paths: list[str], impl: str) -> tuple[int, list[str]]:
    """Replay each corpus file on impl: how many were replayed, and a line for each that fails,
    a finding's signature or, for a file that cannot be read as an input, its problem (never fatal)."""
    from fuzz.judge.runner import run_script

    replayed, failures = 0, []
    for path in paths:
        try:
            script = _load_input(path)
        except ScriptError as error:
            failures.append(f"{_script_error_message(error)} (not replayed)")
            continue
        except UsageError as error:
            failures.append(f"{error} (not replayed)")
            continue
        replayed += 1
        result = run_script(script, impl=impl, ref=REFERENCE_IMPL)
        if result.findings:
            failures.append(f"{script.path}: {result.findings[0].signature}")
    return replayed, failures


def print_saved_finding(finding: SavedFinding) -> None:
    """A finding's line and its reproducer's ops, so a CI log keeps what a discarded
    workspace's corpus/crashes held."""
    print(f"  {finding.signature} ({finding.ops} ops): {finding.path}")
    reproducer = Path(finding.path) / "reproducer.ops"
    if reproducer.is_file():
        for line in reproducer.read_text().splitlines():
            print(f"    {line}")


def _command_gate(args: argparse.Namespace) -> int:
    import glob

    from fuzz.engine.campaign import run_default_campaign, selftest

    for name, value in (("--fuzz-time", args.fuzz_time), ("--selftest-budget", args.selftest_budget)):
        if value < 1:
            raise UsageError(f"{name} must be positive, not {shown_number(value)}")
    load_implementation(args.impl)
    corpus = sorted(glob.glob("corpus/seeds/*.ops") + glob.glob("corpus/crashes/*/reproducer.ops")
                    + glob.glob("corpus/crashes/*/input.bin"))
    replayed, failures = replay_corpus(corpus, args.impl)
    print(f"corpus: {replayed} files replayed, {len(failures)} failing")
    for failure in failures:
        print(f"  {failure}")
    summary = run_default_campaign(args.impl, args.fuzz_time, crash_dir=args.crashes)
    print(f"fuzz: {summary.executions} executions in {summary.seconds:.0f} s, "
          f"{len(summary.findings)} findings")
    for finding in summary.findings:
        print_saved_finding(finding)
    rows = selftest(args.selftest_budget)
    print(format_selftest(rows))
    missed = [row.bug for row in rows if not row.passed]
    ok = not failures and not summary.findings and not missed
    print("gate: " + ("passed" if ok else "FAILED"))
    return EXIT_OK if ok else EXIT_FINDING


# ---------------------------------------------------------------------------
# decode, encode


def _add_decode_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", metavar="FILE", help="a raw fuzzer input")


def _command_decode(args: argparse.Namespace) -> int:
    from fuzz.script.ops import format_script

    print(format_script(_load_input(args.file)), end="")
    return EXIT_OK


def _add_encode_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", metavar="FILE", help="an op script (.ops)")
    parser.add_argument("-o", "--output", metavar="OUT", required=True,
                        help="where to write the raw input (atomically)")


def _command_encode(args: argparse.Namespace) -> int:
    from fuzz.engine.decode import encode

    if not args.file.endswith(SCRIPT_SUFFIX):
        raise UsageError(f"{args.file}: encode takes an op script (.ops)")
    write_atomically_bytes(args.output, encode(parse_file(args.file)))
    return EXIT_OK


# ---------------------------------------------------------------------------
# merge


def _add_merge_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out", metavar="OUT", help="the corpus directory that gains the inputs adding coverage")
    parser.add_argument("inputs", nargs="+", metavar="DIR", help="corpus directories or files to merge from")
    parser.add_argument("--impl", default=DEFAULT_IMPL, metavar="NAME",
                        help=f"implementation whose coverage decides (default {DEFAULT_IMPL})")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")


def _command_merge(args: argparse.Namespace) -> int:
    from fuzz.engine.campaign import merge_corpora

    summary = merge_corpora(args.out, args.inputs, args.impl)
    _report_skipped(summary.skipped)
    if args.json:
        print(json.dumps(summary.to_json(), indent=2))
    else:
        print(f"{args.out}: {len(summary.added)} inputs added of {summary.inputs}")
        for path in summary.added:
            print(f"  {path}")
    return EXIT_OK


# ---------------------------------------------------------------------------
# target: the OSS-Fuzz / ClusterFuzzLite fuzz target


def _add_target_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("impls", nargs="*", metavar="NAME",
                        help=f"implementations, one target each (default {DEFAULT_IMPL})")
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="where to write each <name>_fuzzer.py, .options and _seed_corpus.zip")
    parser.add_argument("--seeds", default="corpus/seeds", metavar="DIR",
                        help="the seeds zipped as each target's seed corpus (default corpus/seeds)")


def _command_target(args: argparse.Namespace) -> int:
    from fuzz.engine.campaign import read_seeds
    from fuzz.engine.target import write_target

    impls = args.impls or [DEFAULT_IMPL]
    for impl in impls:
        load_implementation(impl)
    seeds, skipped = read_seeds([args.seeds])
    _report_skipped([str(skip) for skip in skipped])
    named = {seed.path.stem: seed.data for seed in seeds}
    for impl in impls:
        for path in write_target(impl, Path(args.out), named):
            print(path)
    return EXIT_OK


# ---------------------------------------------------------------------------
# seeds


def _add_seeds_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--scenarios", default="tests/scenarios", metavar="DIR",
                        help="the scenarios the seeds are made from (default tests/scenarios)")
    parser.add_argument("--out", default="corpus/seeds", metavar="DIR",
                        help="the seed directory (default corpus/seeds)")
    parser.add_argument("--check", action="store_true",
                        help="change nothing; exit 1 if the seeds are not in sync with the scenarios")


def _command_seeds(args: argparse.Namespace) -> int:
    from fuzz.engine.seeds import stale_seeds, write_seeds

    scenarios, out = Path(args.scenarios), Path(args.out)
    if not scenarios.is_dir():
        raise UsageError(f"{args.scenarios}: not a directory")
    if args.check:
        stale = stale_seeds(scenarios, out)
        for name in stale:
            print(f"{out / name}: not the seed of {scenarios / name}")
        return EXIT_FINDING if stale else EXIT_OK
    for name in write_seeds(scenarios, out):
        print(f"{out / name}: {'written' if (out / name).exists() else 'removed'}")
    return EXIT_OK


# ---------------------------------------------------------------------------
# bench


def _add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    from fuzz.front.bench import DEFAULT_SIZES

    parser.add_argument("--sizes", default=DEFAULT_SIZES, metavar="SIZES",
                        help="comma-separated mapping sizes, multiples of 2M with K, M or G "
                             f"(default {DEFAULT_SIZES})")
    parser.add_argument("--impl", default=DEFAULT_IMPL, metavar="NAME",
                        help=f"implementation timed against the reference (default {DEFAULT_IMPL})")
    parser.add_argument("--seed", type=int, default=0, metavar="N",
                        help="seed of the workload's random choices (default 0)")
    parser.add_argument("--fuzz-seconds", type=int, default=20, metavar="S",
                        help="also time the default fuzz campaign for S seconds on one core with resuming "
                             "from snapshots and S without, alternating (0: skip)")
    parser.add_argument("--fuzz-rounds", type=int, default=2, metavar="N",
                        help="with --fuzz-seconds: rounds the two halves alternate in (default 2)")
    parser.add_argument("--fuzz-only", action="store_true",
                        help="time only the fuzz loop, not the workloads of --sizes")
    parser.add_argument("--resume-check", type=int, default=0, metavar="N",
                        help="instead: run N mutated inputs from snapshots and from the first op, in this "
                             "process, and compare verdicts and final states (exit 1 if any differ)")
    parser.add_argument("--json", action="store_true", help="print the results as one JSON object")
    parser.add_argument("--kernel", action="store_true",
                        help="instead: time generated scripts checked against Debian's arm64 kernel "
                             "(boot time, scripts per second)")
    parser.add_argument("--kernel-scripts", type=int, default=1000, metavar="N",
                        help="with --kernel: how many scripts (default 1000)")
    parser.add_argument("--workers", action="store_true",
                        help="instead: the default campaign's exec/s with 1 and 2 workers sharing a corpus "
                             "(-jobs/-workers, -reload), and the seconds to find each planted bug with 1 and 2")
    parser.add_argument("--workers-seconds", type=int, default=30, metavar="S",
                        help="with --workers: seconds of each exec/s campaign (default 30)")
    parser.add_argument("--find-budget", type=int, default=60, metavar="S",
                        help="with --workers: seconds at most per planted bug (0: skip; default 60)")
    parser.add_argument("--canary", action="append", metavar="NAME",
                        help="with --workers: only this planted bug (repeatable)")
    parser.add_argument("--empty-corpus", action="store_true",
                        help="with --workers: find the planted bugs from an empty corpus instead of the seeds")


def _format_fuzz_loop(summary: CampaignSummary, seconds: int) -> str:
    """The fuzz loop's rate, where an execution's time goes, and the rate the loop would have
    if the reference and the checks took no time (what the implementation alone allows)."""
    from fuzz.engine.campaign import ms_per_execution
    from fuzz.judge.runner import CHECKS_PART, REFERENCE_PART

    lines = [f"fuzz loop: {summary.exec_per_s:.0f} exec/s (default campaign, one core, {seconds} s)"]
    parts = ms_per_execution(summary)
    if parts:
        total = sum(parts.values())
        shares = ", ".join(f"{part} {ms:.2f}" for part, ms in sorted(parts.items(), key=lambda item: -item[1]))
        lines.append(f"  ms per execution: {total:.2f} = {shares}")
        without = total - parts.get(REFERENCE_PART, 0.0) - parts.get(CHECKS_PART, 0.0)
        if without > 0:
            lines.append(f"  without the reference's and the checks' time: {1000 / without:.0f} exec/s")
    return "\n".join(lines)


def _helper_costs(impl: str) -> dict[str, tuple[int, float]]:
    """An implementation's own per-call costs (kernel-c: its C helpers), if it keeps any."""
    costs = getattr(load_implementation(impl), "helper_costs", None)
    return costs() if callable(costs) else {}


def _command_bench(args: argparse.Namespace) -> int:
    from fuzz.engine.campaign import run_default_campaign
    from fuzz.front.bench import bench_json, format_loop_ab, format_table, fuzz_loop_ab, parse_sizes, run_bench

    if args.kernel:
        return _command_bench_kernel(args)
    if args.workers:
        return _command_bench_workers(args)
    if args.resume_check:
        return _command_bench_resume_check(args)
    # All input is checked before anything runs: a bad size is exit 2, never half a bench.
    sizes = [] if args.fuzz_only else parse_sizes(args.sizes)
    load_implementation(REFERENCE_IMPL)
    load_implementation(args.impl)
    if args.fuzz_seconds < 0:
        raise UsageError(f"--fuzz-seconds must not be negative, not {shown_number(args.fuzz_seconds)}")
    if args.fuzz_rounds < 1:
        raise UsageError(f"--fuzz-rounds must be positive, not {shown_number(args.fuzz_rounds)}")
    results = run_bench(sizes, impl=args.impl, seed=args.seed)
    costs = _helper_costs(args.impl)
    ab = fuzz_loop_ab(args.impl, args.fuzz_seconds, args.fuzz_rounds) if args.fuzz_seconds else None
    # Another implementation's loop is only worth its number beside batched's, taken in the same run.
    beside = (run_default_campaign(DEFAULT_IMPL, args.fuzz_seconds)
              if args.fuzz_seconds and args.impl != DEFAULT_IMPL else None)
    if args.json:
        loop: dict[str, Any] = {"fuzz_exec_per_s": None, "fuzz_ms_per_execution": None}
        if ab is not None:
            loop = ab.to_json()
        if beside is not None:
            loop[f"fuzz_exec_per_s_{DEFAULT_IMPL}"] = round(beside.exec_per_s, 1)
        loop["helper_us_per_call"] = {name: round(us, 2) for name, (_calls, us) in costs.items()} or None
        print(json.dumps(dict(bench_json(results, args.impl), **loop), indent=2))
    else:
        if results:
            print(format_table(results, args.impl))
        if costs:
            print(f"{args.impl} helpers, microseconds per call (copying the folio in and out included):")
            for name, (calls, us) in costs.items():
                print(f"  {name}: {us:.2f} ({calls} calls)")
        if ab is not None:
            print(format_loop_ab(ab, args.fuzz_seconds))
        if beside is not None:
            print(f"beside it, {DEFAULT_IMPL}'s " + _format_fuzz_loop(beside, args.fuzz_seconds))
    return EXIT_OK if all(result.ok for result in results) else EXIT_FINDING


def _command_bench_resume_check(args: argparse.Namespace) -> int:
    """`bench --resume-check N`: the 10,000-input equivalence of resumed and whole runs."""
    from fuzz.engine.loop import check_resume
    from fuzz.front.bench import format_resume_check

    if args.resume_check < 0:
        raise UsageError(f"--resume-check must not be negative, not {shown_number(args.resume_check)}")
    load_implementation(args.impl)
    check = check_resume(args.resume_check, impl=args.impl, seed=args.seed)
    if args.json:
        print(json.dumps({"inputs": check.inputs, "resumed": check.resumed, "resumed_ops": check.resumed_ops,
                          "findings": check.findings,
                          "mismatches": [{"input": data.hex(), "difference": why} for data, why in check.mismatches]},
                         indent=2))
    else:
        print(format_resume_check(check))
    return EXIT_FINDING if check.mismatches else EXIT_OK


def _command_bench_workers(args: argparse.Namespace) -> int:
    from fuzz.canaries import CANARIES
    from fuzz.engine.campaign import time_to_find_bench, workers_bench
    from fuzz.front.bench import format_workers

    if args.workers_seconds < 1:
        raise UsageError(f"--workers-seconds must be positive, not {shown_number(args.workers_seconds)}")
    if args.find_budget < 0:
        raise UsageError(f"--find-budget must not be negative, not {shown_number(args.find_budget)}")
    unknown = [name for name in args.canary or [] if name not in CANARIES]
    if unknown:
        raise UsageError(f"unknown canary {quote_token(unknown[0])} (known: {', '.join(CANARIES)})")
    load_implementation(args.impl)
    workers = workers_bench(args.impl, args.workers_seconds)
    if not args.find_budget:
        finds = []
    elif args.empty_corpus:
        import tempfile

        with tempfile.TemporaryDirectory(prefix="rmapfuzz-empty-corpus-") as empty:
            finds = time_to_find_bench(args.find_budget, args.canary, corpus=[empty])
    else:
        finds = time_to_find_bench(args.find_budget, args.canary)
    if args.json:
        print(json.dumps({"workers": [row.to_json() for row in workers],
                          "time_to_find": [row.to_json() for row in finds]}, indent=2))
    else:
        print(format_workers(workers, finds))
    return EXIT_OK


def _command_bench_kernel(args: argparse.Namespace) -> int:
    from fuzz.kernel import guest
    from fuzz.kernel.bench import bench_kernel

    if args.kernel_scripts < 1:
        raise UsageError(f"--kernel-scripts must be positive, not {args.kernel_scripts}")
    guest.require_tools(("qemu-system-aarch64", guest.CROSS_CC))
    result = bench_kernel(args.kernel_scripts, args.seed, guest.debian_kernel())
    print(json.dumps(result.to_json(), indent=2) if args.json else result.format())
    return EXIT_OK


# ---------------------------------------------------------------------------
# kernel, export: the real kernel (fuzz/kernel)


def _add_kernel_arguments(parser: argparse.ArgumentParser) -> None:
    from fuzz.front.kernel import add_kernel_arguments

    add_kernel_arguments(parser)


def _command_kernel(args: argparse.Namespace) -> int:
    from fuzz.front.kernel import command_kernel

    return command_kernel(args, _load_input)


def _add_export_arguments(parser: argparse.ArgumentParser) -> None:
    from fuzz.front.kernel import add_export_arguments

    add_export_arguments(parser)


def _command_export(args: argparse.Namespace) -> int:
    from fuzz.front.kernel import command_export

    return command_export(args, _load_input, write_atomically)


# ---------------------------------------------------------------------------
# The command line

_Command = tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]
_COMMANDS: tuple[_Command, ...] = (
    ("replay", _add_replay_arguments, _command_replay),
    ("fuzz", _add_fuzz_arguments, _command_fuzz),
    ("minimize", _add_minimize_arguments, _command_minimize),
    ("selftest", _add_selftest_arguments, _command_selftest),
    ("gate", _add_gate_arguments, _command_gate),
    ("decode", _add_decode_arguments, _command_decode),
    ("encode", _add_encode_arguments, _command_encode),
    ("bench", _add_bench_arguments, _command_bench),
    ("kernel", _add_kernel_arguments, _command_kernel),
    ("export", _add_export_arguments, _command_export),
    ("seeds", _add_seeds_arguments, _command_seeds),
    ("merge", _add_merge_arguments, _command_merge),
    ("target", _add_target_arguments, _command_target),
)
_HELP = {
    "replay": "run op scripts on two implementations; compare, check oracles and expects",
    "fuzz": "an atheris campaign: new findings are minimised and saved under corpus/crashes",
    "selftest": "fuzz each planted bug class and show it is found and minimised",
    "gate": "the CI gate: replay the corpus, a seeded fuzz run, the self-test",
    "minimize": "shrink an op script to the smallest one with the same finding signature",
    "decode": "print the op script a raw fuzzer input stands for",
    "encode": "write the raw fuzzer input that decodes to an op script",
    "bench": "time the reference against an implementation on big deterministic workloads",
    "kernel": "run op scripts on the model and on Debian's arm64 kernel under qemu; compare op by op",
    "export": "write an op script as a standalone C reproducer for a real kernel",
    "seeds": "write the seed corpus from the scenarios (their ops without the expects)",
    "merge": "libFuzzer's -merge=1: add to OUT the inputs of the DIRs that add coverage",
    "target": "write OSS-Fuzz / ClusterFuzzLite fuzz targets: <name>_fuzzer.py, .options, seed corpus zip",
}


KERNEL_TREE_COMMANDS = ("replay", "minimize", "fuzz", "selftest", "gate", "bench")


def use_kernel_tree(tree: str | None, patch: str | None) -> None:
    """--kernel-tree DIR and --kernel-patch FILE: what kernel-c builds from, for this process
    and its children (a fuzzing campaign's workers)."""
    if tree is not None:
        if not os.path.isdir(tree):
            raise UsageError(f"--kernel-tree {tree}: not a directory")
        os.environ[KERNEL_TREE_ENV] = os.path.abspath(tree)
    if patch is not None:
        if not os.path.isfile(patch):
            raise UsageError(f"--kernel-patch {patch}: no such file")
        os.environ[KERNEL_PATCH_ENV] = os.path.abspath(patch)


def build_parser() -> argparse.ArgumentParser:
    parser = _ArgumentParser(prog=PROG, description="Differential fuzzer for the Linux kernel's "
                                                   "reverse-map code on a simulated arm64 machine.")
    parser.add_argument("--log-json", action="store_true", help="log structlog events as JSON lines")
    parser.add_argument("-v", "--verbose", action="store_true", help="log info events (default: warnings)")
    subcommands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, add_arguments, run in _COMMANDS:
        subparser = subcommands.add_parser(name, help=_HELP.get(name), description=_HELP.get(name))
        subparser.add_argument("--log-json", action="store_true", default=argparse.SUPPRESS,
                               help="log structlog events as JSON lines")
        subparser.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                               help="log info events (default: warnings)")
        add_arguments(subparser)
        if name in KERNEL_TREE_COMMANDS:
            subparser.add_argument("--kernel-tree", metavar="DIR",
                                   help="with --impl kernel-c: the kernel tree whose rmap helpers are "
                                        "compiled (default: Debian's linux-source of the bridge's kernel)")
            subparser.add_argument("--kernel-patch", metavar="FILE",
                                   help="with --impl kernel-c: a patch (or a review thread quoting one) "
                                        "applied to a copy of the kernel tree at run time")
        subparser.set_defaults(run=run)
    return parser


def _fail(message: str) -> int:
    print(f"{PROG}: {' '.join(message.split())}", file=sys.stderr)
    return EXIT_USAGE


def _script_error_message(error: ScriptError) -> str:
    return f"{error.path}: {error.message}" if error.line == 0 else str(error)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line argv (default sys.argv[1:]); returns the exit status."""
    try:
        try:
            args = build_parser().parse_args(argv)
        except SystemExit as exit_request:     # --help
            return exit_request.code if isinstance(exit_request.code, int) else EXIT_OK
        verbose = args.verbose or args.log_json
        configure_logging(json_logs=args.log_json, level=logging.INFO if verbose else logging.WARNING)
        use_kernel_tree(getattr(args, "kernel_tree", None), getattr(args, "kernel_patch", None))
        return args.run(args)
    except ScriptError as error:
        return _fail(_script_error_message(error))
    except UsageError as error:
        return _fail(str(error))
    except Exception as error:
        if os.environ.get("RMAPFUZZ_DEBUG") == "1":
            raise
        return _fail(f"internal error: {type(error).__name__}: {error} "
                     "(RMAPFUZZ_DEBUG=1 shows the traceback)")


if __name__ == "__main__":
    raise SystemExit(main())
