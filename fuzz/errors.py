"""Typed errors of the harness; only the CLI turns them into a message and exit status 2.

`ScriptError` (an invalid op script) lives in `fuzz.script.ops` beside the parser.
"""

from __future__ import annotations

QUOTE_LIMIT = 40   # characters of a user's token an error message echoes


def quote_token(token: str) -> str:
    """A token for an error message: escaped, and cut short if a fuzzer made it huge."""
    if len(token) > QUOTE_LIMIT:
        token = token[:QUOTE_LIMIT] + "..."
    return repr(token)


def shown_number(number: int, hex_form: bool = False) -> str:
    """A number parsed from a user's token, for an error message: decimal (or hex), cut
    short like quote_token if it is huge (hex then: Python limits huge decimal conversions)."""
    if number.bit_length() > 4 * QUOTE_LIMIT:
        return f"{number:#x}"[:QUOTE_LIMIT] + "..."
    return f"{number:#x}" if hex_form else str(number)



class RmapfuzzError(Exception):
    """Base of the harness's own errors: bad input or usage, never a finding."""


class UsageError(RmapfuzzError):
    """The command line or an argument names something that cannot be used
    (an unknown implementation, an unsupported input file, a bad flag)."""


__all__ = ["QUOTE_LIMIT", "RmapfuzzError", "UsageError", "quote_token", "shown_number"]
