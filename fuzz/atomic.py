"""Files written so that a reader sees the old file or the whole new one, never half of it."""

from __future__ import annotations

import os

from fuzz.errors import UsageError


def write_atomically(path: str, text: str) -> None:
    """Write text to path atomically (a temporary file beside it, fsync, rename)."""
    write_atomically_bytes(path, text.encode("utf-8"))


def write_atomically_bytes(path: str, data: bytes) -> None:
    """Write data to path atomically; UsageError naming path if it cannot be written."""
    directory = os.path.dirname(os.path.abspath(path))
    temporary = os.path.join(directory, f".{os.path.basename(path)}.{os.getpid()}.tmp")
    try:
        with open(temporary, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except OSError as error:
        raise UsageError(f"{path}: cannot write: {error.strerror or error}") from error
