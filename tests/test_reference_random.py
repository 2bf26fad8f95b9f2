"""Seeded random op sequences through the reference against itself, every oracle after every op.

The reference judges batched/, so it must itself keep every invariant on every
reachable state, and be deterministic (two instances end identical).
"""

from __future__ import annotations

import pytest

from fuzz.generate import random_script
from fuzz.ops import ScriptError
from fuzz.runner import run_script

SEEDS = range(200)


@pytest.mark.parametrize("chunk", range(4))
def test_reference_keeps_every_oracle_on_random_sequences(chunk: int) -> None:
    failed_forks = 0
    for seed in SEEDS[chunk::4]:
        script = random_script(seed)
        try:
            result = run_script(script, "reference", "reference", check_every_op=True)
        except ScriptError:
            failed_forks += 1  # a fork that failed with ENOMEM left a name unbound
            continue
        assert result.findings == [], f"seed {seed}:\n" + result.findings[0].report()
    assert failed_forks <= len(SEEDS[chunk::4]) // 10
