"""Inputs that name huge ranges cost what they map (issue 12, item 7).

Each script under tests/hostile/ names the whole 48-bit address space (a VMA of 256 TiB,
a pin of 2^36 pages, munmap, dontneed, mprotect, fork and exit over it) with a few pages
mapped. Walking the named length instead of the VMAs and page tables present would take
hours; the work is counted, not timed: every Python function call of the run (both
kernels, the comparison and the oracles after every op) is counted, and the run is
stopped as soon as the count passes the budget.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from fuzz.judge.runner import run_script
from fuzz.script.ops import parse_file

HOSTILE = sorted((Path(__file__).parent / "hostile").glob("*.ops"))
# About 150 calls per page the 4096-frame machine can fault in (the pin's ENOMEM comes
# after every frame is used), on both machines of a run: walking 2^36 pages or 2^27 PMD
# slots would pass it thousands of times over.
CALL_BUDGET = 3_000_000


class CallBudgetExceeded(BaseException):
    """Raised from the tracer: a BaseException, so the runner does not take it for a
    kernel's exception (a finding) and go on without the tracer."""


@contextmanager
def python_call_budget(limit: int) -> Iterator[list[int]]:
    """Count Python function calls inside the block; stop it once there are more than limit."""
    calls = [0]

    def tracer(frame, event, arg) -> None:  # sys.settrace's signature; no line tracing
        calls[0] += 1
        if calls[0] > limit:
            raise CallBudgetExceeded(f"more than {limit} Python calls")

    previous = sys.gettrace()
    sys.settrace(tracer)
    try:
        yield calls
    finally:
        sys.settrace(previous)


@pytest.mark.parametrize("impl", ["reference", "batched"])
@pytest.mark.parametrize("path", HOSTILE, ids=[path.stem for path in HOSTILE])
def test_hostile_script_costs_what_it_maps(path: Path, impl: str) -> None:
    script = parse_file(str(path))
    with python_call_budget(CALL_BUDGET) as calls:
        result = run_script(script, impl, "reference", check_every_op=True)
    assert result.ok, result.findings[0].report()
    assert calls[0] <= CALL_BUDGET


def _visit_pmd_slot(haddr: int) -> int:
    return haddr


def test_call_budget_stops_a_walk_of_the_named_length() -> None:
    """The guard itself: a loop over every PMD slot of 256 TiB is stopped, not waited for."""
    with pytest.raises(CallBudgetExceeded), python_call_budget(1000):
        for haddr in range(0, 1 << 48, 1 << 21):
            _visit_pmd_slot(haddr)
