"""The campaign in the shape OSS-Fuzz and ClusterFuzzLite run: one implementation's fuzz target
(a `*_fuzzer.py` file built by `compile_python_fuzzer`), in which a finding is an uncaught
exception, so libFuzzer writes the input as `crash-<sha1>` and the engine groups it.

The target runs the same decoder, runner and structural mutator as `rmapfuzz fuzz` (it is a
Session that raises instead of saving). ClusterFuzz groups a Python crash by its exception type
and its innermost frames, so a finding is raised as a class named after its kind
(`DivergenceFinding`, ...) from three frames named after its kind, op and field
(`finding_divergence`, `at_try_to_unmap`, `on_pte`): two signatures are two crashes, one
signature found twice is one. The message carries the signature and the minimised script.
"""

from __future__ import annotations

import io
import logging
import re
import types
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

import atheris

from fuzz.atomic import write_atomically_bytes
from fuzz.engine.harness import INSTRUMENTED, custom_mutator_for, instrument_package, kernel_package
from fuzz.engine.minimize import Minimizer, header_comment
from fuzz.engine.session import Session
from fuzz.logs import configure_logging
from fuzz.script.ops import Script, format_script

FUZZER_SUFFIX = "_fuzzer"
# libFuzzer's -timeout (25 s on OSS-Fuzz) covers the crashing input's whole run, minimisation
# included: the target shrinks with at most this many candidate runs (a finding takes about 50).
TARGET_MINIMIZE_RUNS = 400
# The committed target of the default implementation, and the shape of every other one.
FUZZER_SOURCE = '''"""OSS-Fuzz / ClusterFuzzLite fuzz target: {impl} against the reference (rmapfuzz).

A finding is an uncaught exception whose type and innermost frames name its signature and
whose message carries the minimised op script (fuzz/engine/target.py).
"""

import sys

import atheris

from fuzz.engine.target import FuzzTarget

IMPL = "{impl}"


def main() -> None:
    target = FuzzTarget.instrumented(IMPL)
    atheris.Setup(sys.argv, target.test_one_input, custom_mutator=target.custom_mutator())
    atheris.Fuzz()


if __name__ == "__main__":
    main()
'''


class RmapFinding(Exception):
    """A finding of the target: the difference or broken rule, raised for libFuzzer to see."""

    def __init__(self, signature: str, message: str) -> None:
        super().__init__(message)
        self.signature = signature


_FINDING_CLASSES: dict[str, type[RmapFinding]] = {}


def finding_class(kind: str) -> type[RmapFinding]:
    """The exception class of a finding kind (`DivergenceFinding` for divergence), one per
    kind, so the crash type ClusterFuzz reads separates the kinds."""
    if kind not in _FINDING_CLASSES:
        name = "".join(part.capitalize() for part in identifier(kind).split("_")) + "Finding"
        _FINDING_CLASSES[kind] = type(name, (RmapFinding,), {"__module__": __name__})
    return _FINDING_CLASSES[kind]


def identifier(text: str) -> str:
    """text as a Python identifier's tail: runs of anything else become one underscore."""
    return re.sub(r"\W+", "_", text).strip("_") or "none"


def frame_names(signature: str) -> list[str]:
    """The names of the frames a finding is raised from, outermost first: its kind, its op and
    its field (`finding_divergence`, `at_fork`, `on_pte`)."""
    kind, _, rest = signature.partition(":")
    op, _, field = rest.partition(":")
    return [f"finding_{identifier(kind)}", f"at_{identifier(op)}", f"on_{identifier(field)}"]


def _raise_from(error: RmapFinding, frames: list[Callable[..., None]]) -> None:
    """The body of every frame raise_finding makes: call the next one, the innermost raises."""
    if frames:
        frames[0](error, frames[1:])
    raise error


def raise_finding(error: RmapFinding) -> NoReturn:
    """Raise error from frames named after its signature (frame_names): the traceback's innermost
    frames are what ClusterFuzz's crash state is made of."""
    code = _raise_from.__code__
    frames = [types.FunctionType(code.replace(co_name=name, co_qualname=name), globals(), name)
              for name in frame_names(error.signature)]
    frames[0](error, frames[1:])
    raise error   # not reached: the innermost frame raised


def finding_message(signature: str, impl: str, original_ops: int, small: Script) -> str:
    """The exception's message: the signature, then the minimised script with its header."""
    command = f"rmapfuzz replay --impl {impl} reproducer.ops"
    return f"{signature}\n" + header_comment(signature, original_ops, command) + format_script(small)


class FuzzTarget(Session):
    """A Session whose finding is minimised and raised, not saved: libFuzzer owns the artifact."""

    def __init__(self, impl: str) -> None:
        super().__init__(impl, crash_dir=Path("."), summary_dir=None)

    @classmethod
    def instrumented(cls, impl: str) -> FuzzTarget:
        """The target of impl with the implementation under test instrumented (as the harness does);
        logs only warnings, as the harness."""
        configure_logging(level=logging.WARNING)
        with atheris.instrument_imports(include=list(INSTRUMENTED)):
            target = cls(impl)
        instrument_package(kernel_package(target.impl))
        return target

    def custom_mutator(self) -> Callable[[bytes, int, int], bytes]:
        """libFuzzer's custom mutator: the campaign's (fuzz.engine.harness.custom_mutator_for)."""
        return custom_mutator_for(self)

    def record(self, script: Script, signature: str) -> None:
        """Minimise the finding and raise it (the Session would save it)."""
        small = Minimizer(self.impl, max_runs=TARGET_MINIMIZE_RUNS).minimize(script, signature)
        kind = signature.partition(":")[0]
        message = finding_message(signature, self.impl_name, len(script.steps), small)
        raise_finding(finding_class(kind)(signature, message))


def fuzzer_source(impl: str) -> str:
    """The text of the `*_fuzzer.py` target of impl."""
    return FUZZER_SOURCE.format(impl=impl)


def fuzzer_name(impl: str) -> str:
    """The target's name (its file's and binary's): `batched_fuzzer`, `share_nr_pages_zero_fuzzer`."""
    return identifier(impl.rpartition(".")[2]) + FUZZER_SUFFIX


# libFuzzer's options for the target, as OSS-Fuzz reads them from `<target>.options`: inputs
# as long as the longest seed's encoding, and the campaign's memory limit.
OPTIONS = {"max_len": 4096, "rss_limit_mb": 8192}
ZIP_TIME = (1980, 1, 1, 0, 0, 0)   # every member's date: the same seeds give the same zip


def options_text() -> str:
    """The `<target>.options` file: libFuzzer's section with OPTIONS."""
    return "[libfuzzer]\n" + "".join(f"{name} = {value}\n" for name, value in OPTIONS.items())


def seed_corpus_zip(seeds: dict[str, bytes]) -> bytes:
    """A `<target>_seed_corpus.zip` of raw inputs by name, the same bytes for the same seeds."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in sorted(seeds.items()):
            archive.writestr(zipfile.ZipInfo(name, ZIP_TIME), data, zipfile.ZIP_DEFLATED)
    return buffer.getvalue()


def write_target(impl: str, out_dir: Path, seeds: dict[str, bytes]) -> list[Path]:
    """Write impl's target into out_dir as OSS-Fuzz's build expects it: `<name>.py`,
    `<name>.options` and `<name>_seed_corpus.zip` (name: fuzzer_name); returns their paths."""
    name = fuzzer_name(impl)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {out_dir / f"{name}.py": fuzzer_source(impl).encode("utf-8"),
             out_dir / f"{name}.options": options_text().encode("utf-8"),
             out_dir / f"{name}_seed_corpus.zip": seed_corpus_zip(seeds)}
    for path, data in files.items():
        write_atomically_bytes(str(path), data)
    return list(files)
