"""Finding storage: each new finding of a campaign minimised and saved under
corpus/crashes/<signature>/ as three files written together (SPEC §7): the raw input, the
minimised reproducer with its header, and a pytest file that replays it."""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from fuzz.engine.decode import EncodeError, encode
from fuzz.engine.minimize import Minimizer, header_comment
from fuzz.implementation import Implementation
from fuzz.script.ops import Script, format_script

INPUT_FILE = "input.bin"
REPRODUCER_FILE = "reproducer.ops"
TEST_FILE = "test_reproducer.py"

REPRODUCER_TEST = '''"""Replays the reproducer of {signature}: it fails until the bug is fixed, then stays green."""

from pathlib import Path

from fuzz.judge.runner import run_script
from fuzz.script.ops import parse_file

HERE = Path(__file__).resolve().parent


def test_reproducer_stays_fixed():
    result = run_script(parse_file(str(HERE / "reproducer.ops")), {impl!r}, "reference")
    assert result.findings == [], result.findings[0].report()
'''


@dataclass(frozen=True)
class SavedFinding:
    """A finding a campaign saved: its signature, the minimised op count, its directory, and
    the seconds and executions of its fuzzing process when it was found."""

    signature: str
    ops: int
    path: str
    seconds: float
    executions: int

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SavedFinding:
        return cls(**data)


def signature_dir_name(signature: str) -> str:
    """A directory name for a signature: kind-op-field."""
    return "".join(char if char.isalnum() or char in "_." else "-" for char in signature)


def is_saved(crash_dir: Path, signature: str) -> bool:
    """Whether a finding of this signature was saved under crash_dir before."""
    return (crash_dir / signature_dir_name(signature)).exists()


def save_finding(crash_dir: Path, signature: str, impl: str, raw: bytes, reproducer: str) -> Path | None:
    """Write the raw input, the minimised script and its pytest file as one directory,
    atomically (a rename); None if this signature was saved before."""
    target = crash_dir / signature_dir_name(signature)
    if target.exists():
        return None
    crash_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=crash_dir))
    try:
        (staging / INPUT_FILE).write_bytes(raw)
        (staging / REPRODUCER_FILE).write_text(reproducer, encoding="utf-8")
        (staging / TEST_FILE).write_text(REPRODUCER_TEST.format(signature=signature, impl=impl), encoding="utf-8")
        os.rename(staging, target)
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
        if target.exists():
            return None  # another worker saved it first
        raise
    return target


def minimise_and_save(crash_dir: Path, impl_name: str, impl: Implementation, script: Script,
                      signature: str) -> tuple[Path, int] | None:
    """Minimise script (it shows signature on impl) and save it with the raw input of the
    smaller script (of script itself if the decoder cannot draw it); returns the finding's
    directory and minimised op count, None if the signature was saved before."""
    small = Minimizer(impl).minimize(script, signature)
    try:
        raw = encode(small)
    except EncodeError:
        raw = encode(script)
    path = crash_dir / signature_dir_name(signature) / REPRODUCER_FILE
    text = header_comment(signature, len(script.steps),
                          f"rmapfuzz replay --impl {impl_name} {path}") + format_script(small)
    saved = save_finding(crash_dir, signature, impl_name, raw, text)
    return None if saved is None else (saved, len(small.steps))
