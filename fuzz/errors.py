"""Typed errors of the harness; only the CLI turns them into a message and exit status 2.

`ScriptError` (an invalid op script) lives in `fuzz.script.ops` beside the parser.
"""

from __future__ import annotations


class RmapfuzzError(Exception):
    """Base of the harness's own errors: bad input or usage, never a finding."""


class UsageError(RmapfuzzError):
    """The command line or an argument names something that cannot be used
    (an unknown implementation, an unsupported input file, a bad flag)."""


__all__ = ["RmapfuzzError", "UsageError"]
