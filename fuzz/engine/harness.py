"""The atheris harness: libFuzzer calls the session's test_one_input with each input and
this custom mutator to make the next one.

`rmapfuzz fuzz` starts this module in a child process (`python -m fuzz.engine.harness`)
with libFuzzer's flags; see fuzz.engine.session for what it runs and reports. Only the
implementation under test is instrumented (batched/, a canary's copy of it, or the
package of another `--impl`): coverage steers towards the code under test, while the
reference and machine/ run at full speed. An exception inside an implementation is a
finding of kind `exception` (the runner catches it), never a harness crash.
"""

from __future__ import annotations

import gc
import logging
import os
import random
import sys
import time
import types
from collections.abc import Callable

import atheris

from fuzz.engine.lifeline import hold_on_to_campaign
from fuzz.engine.mutator import late_index
from fuzz.engine.session import LAUNCHER_ENV, LOG_JSON_ENV, MUTATOR_PART, Session
from fuzz.implementation import Implementation
from fuzz.logs import configure_logging

# Instrumented as imported; main() also instruments the package of the Kernel under test.
# The reference and machine/ are not: under atheris they ran 2-10 times slower (the naive
# reference's per-page loops through machine/ most), and the self-test finds every planted
# bug as fast without them. The harness's own code (oracles, comparison, decoder) never is.
INSTRUMENTED = ("batched",)
STRUCTURAL_SHARE = 0.5   # of the mutations; the rest are libFuzzer's byte-level ones
# Of the byte-level mutations, those that change only the bytes before a point the snapshot
# cache holds for the input (its later ops: the decoder reads from the end), so that the
# mutated input resumes from there; the rest change any byte.
HEAD_SHARE = 0.85


def custom_mutator_for(session: Session, byte_mutator: Callable[[bytes, int], bytes] | None = None,
                       ) -> Callable[[bytes, int, int], bytes]:
    """libFuzzer's custom mutator: a structural mutation (session.mutator) half the time,
    otherwise, or when that cannot be encoded, byte_mutator (default libFuzzer's own,
    atheris.Mutate, which works only once atheris.Fuzz runs), most often on the bytes before
    a snapshot's suffix only (kept_suffix); timed as the mutator part."""
    seconds_by_part = session.seconds_by_part
    mutator = session.mutator

    def custom_mutator(data: bytes, max_size: int, seed: int) -> bytes:
        started = time.perf_counter()
        try:
            rng = random.Random(seed)
            if rng.random() < STRUCTURAL_SHARE:
                mutated = mutator.mutate(data, max_size, rng)
                if mutated is not None:
                    return mutated
            kept = kept_suffix(session, data, rng) if rng.random() < HEAD_SHARE else 0
            head = data[:len(data) - kept]
            return (byte_mutator or atheris.Mutate)(head, max_size - kept) + data[len(head):]
        finally:
            seconds_by_part[MUTATOR_PART] += time.perf_counter() - started

    return custom_mutator


def kept_suffix(session: Session, data: bytes, rng: random.Random) -> int:
    """The length of a suffix of data the session's snapshot cache holds a point for, with
    bytes before it, the longest likelier (late_index); 0 if there is none."""
    if session.snapshots is None:
        return 0
    lengths = [length for length in session.snapshots.suffixes(data) if length < len(data)]
    return lengths[len(lengths) - 1 - late_index(len(lengths), rng)] if lengths else 0


def kernel_package(impl: Implementation) -> str:
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
    modules = {name for name in sys.modules if name == package or name.startswith(package + ".")}
    functions = [obj for obj in gc.get_objects()
                 if isinstance(obj, types.FunctionType) and obj.__module__ in modules]
    for function in functions:
        atheris.instrument_func(function)
    return len(functions)


def main(argv: list[str]) -> None:
    """python -m fuzz.engine.harness [libFuzzer flags and corpus directories]; libFuzzer starts
    its -jobs, -fork and -merge workers as LAUNCHER_ENV (an executable), else as sys.argv[0]."""
    hold_on_to_campaign()
    # Findings are warnings (JSON lines when the campaign reads them); the runner's debug events cost time.
    configure_logging(json_logs=os.environ.get(LOG_JSON_ENV) == "1", level=logging.WARNING)
    with atheris.instrument_imports(include=list(INSTRUMENTED)):
        session = Session.from_environment()   # loads the implementations: batched is instrumented
    instrument_package(kernel_package(session.impl))
    session.write_summary()
    atheris.Setup([os.environ.get(LAUNCHER_ENV, sys.argv[0]), *argv], session.test_one_input,
                  custom_mutator=custom_mutator_for(session))
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv[1:])
