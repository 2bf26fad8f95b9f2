"""Replays the reproducer of oracle:write:data: it fails until the bug is fixed, then stays green."""

from pathlib import Path

from fuzz.judge.runner import run_script
from fuzz.script.ops import parse_file

HERE = Path(__file__).resolve().parent


def test_reproducer_stays_fixed():
    result = run_script(parse_file(str(HERE / "reproducer.ops")), 'batched', "reference")
    assert result.findings == [], result.findings[0].report()
