"""The op-level, signature-preserving minimiser (SPEC §7 `minimize`).

It works on op scripts, the representation every finding is replayed from, so
each candidate is a script like any other. Steps, repeated until nothing
changes: cut everything after the op where the finding shows; delete chunks
of ops, halving the chunk size down to single ops, from the end; lower the
arguments of each op (order, page count, value, length) and drop `frames N`. A deletion is
repaired before it is tried: ops on a process whose fork was deleted go with
it, later process numbers and pin ids are renumbered. A candidate is kept only
if it reproduces the same signature; every tried candidate is cached.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import structlog

from fuzz.implementation import REFERENCE_IMPL
from fuzz.judge.runner import run_script
from fuzz.judge.scan import ContpteVerdicts
from fuzz.script.ops import Expect, Op, Script, ScriptError, format_script
from machine.pgtable import PAGE_SIZE

log = structlog.get_logger()

MAX_RUNS = 2000


@dataclass
class Minimizer:
    """Shrinks one script while run_script still reports `signature` on it."""

    impl: Any
    ref: Any = REFERENCE_IMPL
    max_runs: int = MAX_RUNS
    runs: int = 0
    cache: dict[str, bool] = field(default_factory=dict)
    contpte_verdicts: ContpteVerdicts = field(default_factory=ContpteVerdicts)

    def reproduces(self, script: Script, signature: str) -> bool:
        """Whether script still shows the finding (cached by its text)."""
        key = format_script(script)
        if key in self.cache:
            return self.cache[key]
        if self.runs >= self.max_runs:
            return False
        self.runs += 1
        try:
            result = run_script(script, self.impl, self.ref, check_every_op=True,
                                contpte_verdicts=self.contpte_verdicts)
        except ScriptError:
            found = False
        else:
            found = bool(result.findings) and result.findings[0].signature == signature
        self.cache[key] = found
        return found

    def minimize(self, script: Script, signature: str) -> Script:
        """The smallest script this search finds with the same signature."""
        best = self.truncate(script, signature)
        while True:
            before = len(best.steps), format_script(best)
            best = self.delete_chunks(best, signature)
            best = self.lower_arguments(best, signature)
            best = self.lower_frames(best, signature)
            if (len(best.steps), format_script(best)) == before or self.runs >= self.max_runs:
                break
        log.info("minimized", signature=signature, ops=len(best.steps), from_ops=len(script.steps),
                 runs=self.runs)
        return best

    def truncate(self, script: Script, signature: str) -> Script:
        """Drop every expect the finding does not need and everything after its op."""
        if not signature.startswith("expect:"):
            candidate = replace(script, steps=[step for step in script.steps if isinstance(step, Op)])
            if self.reproduces(candidate, signature):
                script = candidate
        result = run_script(script, self.impl, self.ref, check_every_op=True)
        if result.findings and result.findings[0].step_index >= 0:
            candidate = replace(script, steps=script.steps[:result.findings[0].step_index + 1])
            if self.reproduces(candidate, signature):
                return candidate
        return script

    def delete_chunks(self, script: Script, signature: str) -> Script:
        """Delete chunks of steps from the end, chunk sizes halving down to one."""
        size = max(1, len(script.steps) // 2)
        while size >= 1:
            end = len(script.steps)
            while end > 0:
                start = max(0, end - size)
                candidate = repair(script, set(range(start, end)))
                if candidate is not None and self.reproduces(candidate, signature):
                    script = candidate
                end = start
            size //= 2
        return script

    def lower_frames(self, script: Script, signature: str) -> Script:
        """Drop `frames N` (back to the default machine) if the finding stays."""
        if script.frames is not None:
            candidate = replace(script, frames=None)
            if self.reproduces(candidate, signature):
                return candidate
        return script

    def lower_arguments(self, script: Script, signature: str) -> Script:
        """Try smaller values for each op's numeric arguments, one at a time."""
        for index in range(len(script.steps)):
            step = script.steps[index]
            if not isinstance(step, Op):
                continue
            for lowered in lower_candidates(step):
                steps = list(script.steps)
                steps[index] = lowered
                candidate = replace(script, steps=steps)
                if self.reproduces(candidate, signature):
                    script = candidate
                    break
        return script


def lower_candidates(op: Op) -> Iterator[Op]:
    """Smaller versions of op: lower order, fewer pages, value 1, shorter length."""
    if op.order is not None:
        for order in range(op.order):
            if order != 1:
                yield replace(op, order=order)
    if op.nr_pages is not None and op.nr_pages > 1:
        yield replace(op, nr_pages=1)
        if op.nr_pages > 2:
            yield replace(op, nr_pages=op.nr_pages // 2)
    if op.value is not None and op.value > 1:
        yield replace(op, value=1)
    if op.length is not None and op.length > PAGE_SIZE:
        length = op.length // 2 - (op.length // 2) % PAGE_SIZE
        if length >= PAGE_SIZE:
            yield replace(op, length=length)
        yield replace(op, length=PAGE_SIZE)


def repair(script: Script, deleted: set[int]) -> Script | None:
    """The script without the steps at `deleted`, with what the deletion breaks mended:
    a deleted fork takes every later step on its child (and the child's children) with
    it; remaining processes and pins are renumbered as forks and pins now assign them
    (a fork gets the lowest number never used; a pin the count of earlier pins).
    None if nothing would be left to delete."""
    if not deleted:
        return None
    pids, pins = _Numbering(first=1, kept={0: 0}), _Numbering(first=0)
    steps: list[Op | Expect] = []
    for index, step in enumerate(script.steps):
        keep = index not in deleted
        if step.process is not None and step.process not in pids.new:
            keep = False  # its process was never created (or its fork is gone)
        if isinstance(step, Op) and step.name == "fork":
            pids.issue(keep)
        if isinstance(step, Op) and step.name == "pin":
            pins.issue(keep)
        if step.pin_id is not None and step.pin_id not in pins.new and (
                isinstance(step, Expect) or step.name == "unpin"):
            keep = keep and step.pin_id >= pins.next_old  # an unissued id stays invalid as it was
        if not keep:
            continue
        steps.append(_renumbered(step, pids, pins))
    if len(steps) == len(script.steps):
        return None
    return replace(script, steps=steps)


class _Numbering:
    """Numbers issued in order (fork children, pin ids): the old script's, and the ones
    the kept issuers get in the repaired script."""

    def __init__(self, first: int, kept: dict[int, int] | None = None) -> None:
        self.new: dict[int, int] = dict(kept or {})
        self.next_old = self.next_new = first

    def issue(self, keep: bool) -> None:
        """The next old number is issued; a kept issuer gets the next new one."""
        if keep:
            self.new[self.next_old] = self.next_new
            self.next_new += 1
        self.next_old += 1


def _renumbered(step: Op | Expect, pids: _Numbering, pins: _Numbering) -> Op | Expect:
    changes: dict[str, Any] = {}
    if step.process is not None:
        changes["process"] = pids.new[step.process]
    if step.pin_id is not None:
        # An issued pin keeps its new id; an id never issued moves down with the others.
        changes["pin_id"] = pins.new.get(step.pin_id, step.pin_id - (pins.next_old - pins.next_new))
    return replace(step, **changes)


def minimize_script(script: Script, impl: Any, ref: Any = REFERENCE_IMPL,
                    max_runs: int = MAX_RUNS) -> tuple[Script, str] | None:
    """(the minimised script, its signature), or None if the script shows no finding."""
    result = run_script(script, impl, ref, check_every_op=True)
    if not result.findings:
        return None
    signature = result.findings[0].signature
    minimizer = Minimizer(impl, ref, max_runs)
    return minimizer.minimize(script, signature), signature


def header_comment(signature: str, original_ops: int, replay_command: str) -> str:
    """The comment a minimised reproducer starts with."""
    return (f"# signature: {signature}\n# minimised from {original_ops} ops\n"
            f"# replay: {replay_command}\n")

