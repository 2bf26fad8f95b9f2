"""The atheris harness: each input decoded, run on the reference and the implementation
under test, and a new finding minimised and saved under corpus/crashes/<signature>/.

`rmapfuzz fuzz` starts this module in a child process (`python -m fuzz.engine.harness`)
with libFuzzer's flags, so libFuzzer owns that process; the campaign's counts
go to a summary file the command reads back. Only the implementation under test is
instrumented (batched/, a canary's copy of it, or the package of another `--impl`):
coverage steers towards the code under test, while the reference and machine/ run
at full speed. An exception inside an implementation is a finding of kind
`exception` (the runner catches it), never a harness crash.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from collections import Counter, OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

if TYPE_CHECKING:
    from fuzz.engine.decode import Decoded

log = structlog.get_logger()

IMPL_ENV = "RMAPFUZZ_IMPL"
CRASH_DIR_ENV = "RMAPFUZZ_CRASH_DIR"
SUMMARY_DIR_ENV = "RMAPFUZZ_SUMMARY_DIR"
STOP_ENV = "RMAPFUZZ_STOP_ON_FINDING"  # the self-test stops each campaign at its first finding
SUMMARY_EVERY_S = 0.5
# Instrumented as imported; main() also instruments the package of the Kernel under test.
# The reference and machine/ are not: under atheris they ran 2-10 times slower (the naive
# reference's per-page loops through machine/ most), and the self-test finds every planted
# bug as fast without them. The harness's own code (oracles, comparison, decoder) never is.
INSTRUMENTED = ("batched",)
# libFuzzer mutates the input it has just run (or a corpus entry): keep that many decoded
# inputs so the structural mutator need not decode them again, nor run again the ops a
# mutation keeps at the start (a few MiB at most).
RECENT_SCRIPTS = 4096


def signature_dir_name(signature: str) -> str:
    """A directory name for a signature: kind-op-field."""
    return "".join(char if char.isalnum() or char in "_." else "-" for char in signature)


REPRODUCER_TEST = '''"""Replays the reproducer of {signature}: it fails until the bug is fixed, then stays green."""

from pathlib import Path

from fuzz.script.ops import parse_file
from fuzz.judge.runner import run_script

HERE = Path(__file__).resolve().parent


def test_reproducer_stays_fixed():
    result = run_script(parse_file(str(HERE / "reproducer.ops")), {impl!r}, "reference")
    assert result.findings == [], result.findings[0].report()
'''


def save_finding(crash_dir: Path, signature: str, impl: str, raw: bytes, reproducer: str) -> Path | None:
    """Write the raw input, the minimised script and its pytest file as one directory,
    atomically (a rename); None if this signature was saved before."""
    target = crash_dir / signature_dir_name(signature)
    if target.exists():
        return None
    crash_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=crash_dir))
    try:
        (staging / "input.bin").write_bytes(raw)
        (staging / "reproducer.ops").write_text(reproducer, encoding="utf-8")
        (staging / "test_reproducer.py").write_text(
            REPRODUCER_TEST.format(signature=signature, impl=impl), encoding="utf-8")
        os.rename(staging, target)
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
        if target.exists():
            return None  # another worker saved it first
        raise
    return target


class RecentScripts:
    """What raw inputs seen lately decode to (those the harness ran to their end, or those the
    mutator decoded itself); the least recently used is forgotten first."""

    def __init__(self, limit: int = RECENT_SCRIPTS) -> None:
        self.limit = limit
        self.scripts: OrderedDict[bytes, Decoded] = OrderedDict()

    def remember(self, data: bytes, decoded: Decoded) -> None:
        """Keep decoded as what data decodes to."""
        self.scripts[data] = decoded
        self.scripts.move_to_end(data)
        if len(self.scripts) > self.limit:
            self.scripts.popitem(last=False)

    def get(self, data: bytes) -> Decoded | None:
        """What data decodes to, if it was run to its end lately."""
        decoded = self.scripts.get(data)
        if decoded is not None:
            self.scripts.move_to_end(data)
        return decoded


# Filled by Campaign.test_one_input, read by custom_mutator (libFuzzer calls both in one process).
recent_scripts = RecentScripts()
# What the inputs the mutator had to decode itself decode to: corpus entries libFuzzer picks
# again and again, which every execution's remember() would push out of recent_scripts.
mutated_inputs = RecentScripts()
# Seconds this process spent in each part of the loop: the runner's parts (RunResult.seconds)
# and the structural mutator's; the summary reports them.
MUTATOR_PART = "mutator"
loop_seconds: Counter[str] = Counter()


class Campaign:
    """The state of one fuzzing process: counts, the findings it saved, its summary file."""

    def __init__(self, impl: str, crash_dir: Path, summary_dir: Path | None) -> None:
        from fuzz.implementation import REFERENCE_IMPL, load_implementation

        self.impl_name = impl
        self.impl = load_implementation(impl)
        self.reference = load_implementation(REFERENCE_IMPL)   # loaded once, not per input
        self.crash_dir = crash_dir
        self.summary_path = summary_dir / f"summary-{os.getpid()}.json" if summary_dir else None
        self.executions = 0
        self.findings: list[dict[str, Any]] = []
        self.started = time.monotonic()
        self.last_summary = 0.0
        loop_seconds.clear()   # one campaign per process; a test may make several

    def test_one_input(self, data: bytes) -> None:
        from fuzz.engine.decode import OpStream
        from fuzz.judge.runner import run_stream

        self.executions += 1
        stream = OpStream(data)
        result = run_stream(stream.script, stream.next_op, self.impl, self.reference)
        loop_seconds.update(result.seconds)
        if stream.ended:   # every op was drawn and run: the script is decode(data)
            recent_scripts.remember(data, stream.decoded())
        if result.findings:
            self.record(stream.script, result.findings[0].signature)
        if time.monotonic() - self.last_summary > SUMMARY_EVERY_S:
            self.write_summary()

    def record(self, script, signature: str) -> None:
        from fuzz.engine.decode import EncodeError, encode
        from fuzz.engine.minimize import Minimizer, header_comment
        from fuzz.script.ops import format_script

        if (self.crash_dir / signature_dir_name(signature)).exists():
            return
        small = Minimizer(self.impl).minimize(script, signature)
        try:
            raw = encode(small)
        except EncodeError:
            raw = encode(script)
        path = self.crash_dir / signature_dir_name(signature) / "reproducer.ops"
        text = header_comment(signature, len(script.steps),
                              f"rmapfuzz replay --impl {self.impl_name} {path}") + format_script(small)
        saved = save_finding(self.crash_dir, signature, self.impl_name, raw, text)
        if saved is not None:
            self.findings.append({"signature": signature, "ops": len(small.steps), "path": str(saved),
                                  "seconds": round(time.monotonic() - self.started, 2),
                                  "executions": self.executions})
            log.warning("finding", signature=signature, ops=len(small.steps), path=str(saved))
        self.write_summary()
        if saved is not None and os.environ.get(STOP_ENV) == "1":
            os._exit(0)  # libFuzzer owns the process: leave at once, the summary is written

    def write_summary(self) -> None:
        self.last_summary = time.monotonic()
        if self.summary_path is None:
            return
        elapsed = self.last_summary - self.started
        summary = {"executions": self.executions, "seconds": round(elapsed, 3), "findings": self.findings,
                   "seconds_by_part": dict(loop_seconds)}
        temporary = self.summary_path.with_suffix(".tmp")
        temporary.write_text(json.dumps(summary), encoding="utf-8")
        os.replace(temporary, self.summary_path)


def mutate_ops(ops: list, rng) -> list:
    """One structural mutation of an op list: insert a copy of an op elsewhere, delete,
    duplicate in place, swap two, or change one argument."""
    from dataclasses import replace

    ops = list(ops)
    if not ops:
        return ops
    index = rng.randrange(len(ops))
    kind = rng.choice(("insert", "delete", "duplicate", "swap", "argument"))
    if kind == "insert":
        ops.insert(rng.randrange(len(ops) + 1), ops[index])
    elif kind == "delete":
        del ops[index]
    elif kind == "duplicate":
        ops.insert(index, ops[index])
    elif kind == "swap":
        other = rng.randrange(len(ops))
        ops[index], ops[other] = ops[other], ops[index]
    else:
        op = ops[index]
        changes = {}
        if op.addr is not None and rng.random() < 0.5:
            changes["addr"] = max(0, op.addr + rng.choice((-16, -1, 1, 16, 512)) * 4096)
        elif op.order is not None:
            changes["order"] = rng.choice((0, 2, 3, 4, 8, 9))
        elif op.length is not None:
            changes["length"] = rng.choice((4096, 65536, 2 << 20, (2 << 20) + 65536))
        elif op.value is not None:
            changes["value"] = rng.randrange(1 << 64)
        elif op.nr_pages is not None:
            changes["nr_pages"] = rng.choice((1, 2, 16, 17, 512))
        ops[index] = replace(op, **changes)
    return ops


def decoded_input(data: bytes) -> Decoded:
    """What data decodes to: remembered from its run or an earlier mutation, else decoded
    (the reference runs it) and remembered for the next time libFuzzer picks it."""
    from fuzz.engine.decode import decode_input

    decoded = recent_scripts.get(data) or mutated_inputs.get(data)
    if decoded is None:
        decoded = decode_input(data)
        mutated_inputs.remember(data, decoded)
    return decoded


def mutate_input(data: bytes, max_size: int, rng, decoded: Decoded) -> bytes | None:
    """A structural mutation of a raw input's ops, re-encoded; None if the mutated ops
    cannot be drawn (e.g. an op now names a process that does not exist yet).

    decoded is what data decodes to (decoded_input); the encoder reuses its names for the
    ops the mutation keeps at the start.
    """
    from fuzz.engine.decode import EncodeError, encode
    from fuzz.script.ops import Op

    script = decoded.script
    mutated = mutate_ops([step for step in script.steps if isinstance(step, Op)], rng)
    try:
        encoded = encode(type(script)(path=script.path, frames=script.frames, steps=mutated), decoded)
    except EncodeError:
        return None
    return encoded if len(encoded) <= max_size else None


def custom_mutator(data: bytes, max_size: int, seed: int) -> bytes:
    """libFuzzer's custom mutator: half the time a structural mutation (mutate_input),
    otherwise, or when that cannot be encoded, atheris.Mutate."""
    import random

    import atheris

    started = time.perf_counter()
    try:
        rng = random.Random(seed)
        if rng.random() < 0.5:
            mutated = mutate_input(data, max_size, rng, decoded_input(data))
            if mutated is not None:
                return mutated
        return atheris.Mutate(data, max_size)
    finally:
        loop_seconds[MUTATOR_PART] += time.perf_counter() - started


def kernel_package(impl: Any) -> str:
    """The package impl's Kernel is defined in: `batched` for the project's implementation,
    `fuzz.canaries.<name>_batched` for a canary's copy of it, a plain module's own name."""
    module = sys.modules[impl.Kernel.__module__]
    if hasattr(module, "__path__"):
        return module.__name__
    return module.__package__ or module.__name__


def instrument_package(package: str) -> int:
    """Instrument every function of the loaded modules of package, whatever it is called
    (atheris' import hook matches top-level names only, so it would miss a canary's copy of
    batched); code instrumented already is left as it is. Returns how many functions."""
    import gc
    import types

    import atheris

    modules = {name for name in sys.modules if name == package or name.startswith(package + ".")}
    functions = [obj for obj in gc.get_objects()
                 if isinstance(obj, types.FunctionType) and obj.__module__ in modules]
    for function in functions:
        atheris.instrument_func(function)
    return len(functions)


def main(argv: list[str]) -> None:
    """python -m fuzz.engine.harness [libFuzzer flags and corpus directories]."""
    import logging

    import atheris

    from fuzz.logs import configure_logging

    configure_logging(level=logging.WARNING)  # findings are warnings; the runner's debug events cost time
    with atheris.instrument_imports(include=list(INSTRUMENTED)):
        campaign = Campaign(os.environ.get(IMPL_ENV, "batched"),
                            Path(os.environ.get(CRASH_DIR_ENV, "corpus/crashes")),
                            Path(os.environ[SUMMARY_DIR_ENV]) if SUMMARY_DIR_ENV in os.environ else None)
        from fuzz.engine import decode, minimize  # noqa: F401
        from fuzz.judge import runner  # noqa: F401 - what they import of INSTRUMENTED is instrumented
    instrument_package(kernel_package(campaign.impl))
    campaign.write_summary()
    atheris.Setup([sys.argv[0], *argv], campaign.test_one_input, custom_mutator=custom_mutator)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv[1:])
