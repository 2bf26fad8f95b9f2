"""Every scenario and every corpus op script replays with no finding (the regression suite).

Scenarios pin the kernel's rules with `expect` lines; corpus/crashes/ holds
every minimised reproducer ever found, each a bug that must stay fixed.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from fuzz.implementation import DEFAULT_IMPL
from fuzz.judge.runner import run_script
from fuzz.script.ops import parse_file

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = sorted(ROOT.glob("tests/scenarios/*.ops")) + sorted(ROOT.glob("corpus/**/*.ops"))


def test_there_are_enough_scenarios() -> None:
    assert len(list(ROOT.glob("tests/scenarios/*.ops"))) >= 25


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda path: str(path.relative_to(ROOT)))
def test_script_replays_clean(path: Path) -> None:
    result = run_script(parse_file(str(path)), DEFAULT_IMPL, "reference", check_every_op=True)
    assert result.findings == [], result.findings[0].report()
