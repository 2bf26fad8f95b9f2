"""Every planted bug class in fuzz/canaries is caught by the differential tests' inputs.

A canary is a copy of batched/ with one function replaced by a variant carrying
a real bug class. The suite's inputs are the scenarios and the seeded random
sequences of test_differential.py: each canary must make one of them fail,
while the real batched/ passes them all.
"""

from __future__ import annotations

import glob
from pathlib import Path

import pytest

import batched
from fuzz.canaries import CANARIES, canary_module
from fuzz.engine.generate import random_script
from fuzz.judge.runner import run_script
from fuzz.script.ops import ScriptError, parse_file

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = sorted(glob.glob(str(ROOT / "tests/scenarios/*.ops")))
RANDOM_BUDGET = 400


def caught_by_random_sequences(module) -> str | None:
    for seed in range(RANDOM_BUDGET):
        try:
            result = run_script(random_script(seed), module, "reference", check_every_op=False)
        except ScriptError:
            continue
        if result.findings:
            return f"seed {seed}: {result.findings[0].signature}"
    return None


def caught_by_scenarios(module) -> str | None:
    for path in SCENARIOS:
        result = run_script(parse_file(path), module, "reference", check_every_op=True)
        if result.findings:
            return f"{Path(path).name}: {result.findings[0].signature}"
    return None


# A canary that crashes on a programming error is caught for the wrong reason: its variant no
# longer fits the code it is planted in (a signature that moved), not its bug class.
BROKEN_VARIANT = ("TypeError", "AttributeError", "NameError")


@pytest.mark.parametrize("name", CANARIES)
def test_canary_is_caught(name: str) -> None:
    module = canary_module(name)
    caught = caught_by_random_sequences(module) or caught_by_scenarios(module)
    assert caught, f"canary {name} escapes the scenarios and {RANDOM_BUDGET} random sequences"
    assert not caught.endswith(BROKEN_VARIANT), f"canary {name} is caught only by crashing: {caught}"


def test_planting_leaves_the_real_batched_alone() -> None:
    real = {name: getattr(batched.memory, name) for name in dir(batched.memory)}
    for name in CANARIES:
        canary_module(name)
    assert {name: getattr(batched.memory, name) for name in dir(batched.memory)} == real
    assert batched.Kernel.__module__ == "batched.kernel"
