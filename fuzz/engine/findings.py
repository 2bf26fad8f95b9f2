"""Finding storage: each new finding of a campaign minimised and saved under
corpus/crashes/<signature>/ as three files written together (SPEC §7): the raw input, the
minimised reproducer with its header, and a pytest file that replays it."""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from fuzz.engine.decode import EncodeError, encode
from fuzz.engine.minimize import Minimizer, header_comment
from fuzz.implementation import Implementation
from fuzz.script.ops import Script, format_script

INPUT_FILE = "input.bin"
REPRODUCER_FILE = "reproducer.ops"
TEST_FILE_PREFIX = "test_"   # then the directory's name as an identifier: pytest imports every
                             # test file by its basename, so each finding's must differ
STAGING_PREFIX = ".staging-"   # then the pid of the process writing it
ABANDONED_AFTER_S = 60.0       # a staging or work directory untouched this long, and unlocked, is abandoned

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


def reproducer_test_name(signature: str) -> str:
    """The pytest file of a finding: test_<its directory's name as an identifier>.py."""
    return f"{TEST_FILE_PREFIX}{signature_dir_name(signature).replace('-', '_').replace('.', '_')}.py"


def is_saved(crash_dir: Path, signature: str) -> bool:
    """Whether a finding of this signature was saved under crash_dir before."""
    return (crash_dir / signature_dir_name(signature)).exists()


def save_finding(crash_dir: Path, signature: str, impl: str, raw: bytes, reproducer: str) -> Path | None:
    """Write the raw input, the minimised script and its pytest file as one directory,
    atomically (each file synced, then the directory renamed into place); None if this
    signature was saved before, by this campaign or another one sharing crash_dir. The staging
    directory is locked while it is written, so only an abandoned one is ever swept."""
    target = crash_dir / signature_dir_name(signature)
    if target.exists():
        return None
    crash_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{os.getpid()}-", dir=crash_dir))
    lock = hold_lock(staging)
    try:
        write_synced(staging / INPUT_FILE, raw)
        write_synced(staging / REPRODUCER_FILE, reproducer.encode("utf-8"))
        write_synced(staging / reproducer_test_name(signature),
                     REPRODUCER_TEST.format(signature=signature, impl=impl).encode("utf-8"))
        sync_directory(staging)
        os.rename(staging, target)   # fails on a directory another campaign renamed there first
        sync_directory(crash_dir)
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
        if target.exists():
            return None  # another worker saved it first
        raise
    finally:
        os.close(lock)
    return target


def write_synced(path: Path, data: bytes) -> None:
    """Write data to a new file and sync it to the disk."""
    with open(path, "wb") as stream:
        stream.write(data)
        stream.flush()
        os.fsync(stream.fileno())


def sync_directory(path: Path) -> None:
    """Sync a directory's entries (a file created or renamed in it) to the disk."""
    descriptor = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def hold_lock(directory: Path) -> int:
    """Lock directory (flock) for this process until the descriptor returned is closed; the lock
    goes when the process dies, however it dies, whatever process namespace looks at it."""
    descriptor = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    fcntl.flock(descriptor, fcntl.LOCK_EX)
    return descriptor


def abandoned(directory: Path, min_age_s: float = ABANDONED_AFTER_S) -> bool:
    """Whether directory was left by a process that died: nobody holds its lock and nothing was
    written in it for min_age_s (a directory just made, not locked yet, is never taken for one)."""
    try:
        if time.time() - directory.stat().st_mtime < min_age_s:
            return False
        descriptor = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return False
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(descriptor)
    return True


def sweep_staging(crash_dir: Path) -> list[Path]:
    """Remove the staging directories a killed campaign left in crash_dir (abandoned); returns
    them. A live campaign's staging is left alone."""
    swept = []
    for staging in sorted(crash_dir.glob(f"{STAGING_PREFIX}*")) if crash_dir.is_dir() else []:
        if abandoned(staging):
            shutil.rmtree(staging, ignore_errors=True)
            swept.append(staging)
    return swept


def process_alive(pid: int) -> bool:
    """Whether a process pid exists (another user's included)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


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
