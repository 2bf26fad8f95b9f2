"""Running an op script on two implementations and reporting the first finding (SPEC §5-§7).

Two machines of the script's size each get a `Kernel` of one implementation
(the reference first, then the implementation under test) and a shadow
memory. Each op runs on both; then, in this order, a finding is:

- `exception`: a kernel method raised (or returned something that is not a
  result code); field: the exception's type;
- `warning`: a VM_WARN_* of the kernel's own C fired (kernel-c); field: the
  kernel function and its line;
- `divergence` on field `result`: the two result codes differ;
- `oracle`: an oracle of SPEC §6 fails on a machine; field: the oracle;
- `divergence`: the machines' states differ (SPEC §5); field: the first
  differing field.

With `check_every_op=False` (fuzzing, for speed) oracles and states are
checked only at the end, and a finding after the first op is pinned by running
the script again checking every op: the first finding is then the one a run
checking every op reports, whichever mode found it.

An `expect` step is checked on both machines (`expect`; field: the first key
that fails). The run stops at the first finding. Naming a process that does
not exist is a `ScriptError`, not a finding.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import structlog

from fuzz.errors import quote_token
from fuzz.implementation import (
    OP_DISPATCH,
    REFERENCE_IMPL,
    Implementation,
    checked_implementation,
    load_implementation,
)
from fuzz.judge.compare import Difference, compare_machines
from fuzz.judge.expects import expect_failures
from fuzz.judge.oracles import OracleFailure, check_oracles, same_oracle_inputs
from fuzz.judge.scan import ContpteVerdicts
from fuzz.judge.shadow import Shadow
from fuzz.script.ops import Expect, Op, Script, ScriptError, format_expect, format_op
from machine import DEFAULT_NR_FRAMES, Machine, check
from machine.errors import RESULTS, KernelWarning

log = structlog.get_logger()


class FindingKind(StrEnum):
    """What a finding is (SPEC §7): its value starts the finding's signature."""

    DIVERGENCE = "divergence"   # the two machines' results or states differ
    ORACLE = "oracle"           # an invariant of SPEC §6 fails on a machine
    EXPECT = "expect"           # a script's expect line fails
    EXCEPTION = "exception"     # a kernel method raised, or returned no result code
    WARNING = "warning"         # a VM_WARN_* of the kernel's own C fired (kernel-c)


AT_START = "start"   # op_name of a finding before the first op (kernel construction, expects)
AT_END = "end"       # op_name of a final-state divergence that could not be pinned to an op
REPORT_DIFFERENCES = 20


# ---------------------------------------------------------------------------
# Implementations


@dataclass(frozen=True)
class _Implementation:
    name: str
    module: Implementation


def _resolve(impl: str | Any) -> _Implementation:
    if isinstance(impl, str):
        return _Implementation(impl, load_implementation(impl))
    name = getattr(impl, "__name__", type(impl).__name__)
    return _Implementation(name, checked_implementation(impl, quote_token(str(impl))))


# ---------------------------------------------------------------------------
# Findings


@dataclass(frozen=True)
class Finding:
    """The first thing that does not hold in a run.

    kind: divergence, oracle, expect or exception; op_name: the op kind where
    it shows (for an expect, the last op before it); field: the state field,
    oracle, expect key or exception type; impl: the implementation(s) it
    shows on; step_index/line: the script step and its source line.
    """

    kind: FindingKind
    op_name: str
    field: str
    detail: str
    step_index: int
    line: int
    impl: str
    path: str = ""
    step_text: str = ""                        # the op or expect as a script line
    op_number: int = 0                         # 1-based number of the op (0: none)
    last_op: str = ""                          # for an expect: "line L: op" before it
    differences: tuple[Difference, ...] = ()   # for a divergence
    ref: str = ""                              # the reference implementation's name

    @property
    def signature(self) -> str:
        """SPEC §7: two inputs with one signature are one finding."""
        return f"{self.kind}:{self.op_name}:{self.field}"

    def report(self) -> str:
        """A readable multi-line report."""
        where = f"{self.path}:{self.line}" if self.path else f"line {self.line}"
        op = f"op {self.op_number} ({self.step_text})" if self.op_number else self.step_text
        headline = {
            FindingKind.DIVERGENCE: f"states differ after {op}" if self.op_number else "final states differ",
            FindingKind.ORACLE: f"oracle {self.field} fails on {self.impl} after {op}",
            FindingKind.EXPECT: f"expect fails on {self.impl}: {self.step_text}",
            FindingKind.EXCEPTION: f"{self.impl} raised {self.field} in {op}",
            FindingKind.WARNING: f"kernel warning in {self.field} on {self.impl} in {op}",
        }.get(self.kind, f"{self.kind} at {op}")
        lines = [f"{where}: {headline}", f"  signature: {self.signature}"]
        if self.kind == FindingKind.EXPECT and self.last_op:
            lines.append(f"  after line {self.last_op}")
        if self.kind == FindingKind.DIVERGENCE and self.ref:
            lines.append(f"  reference: {self.ref}, other: {self.impl}")
        lines.extend("    " + text for text in self.detail.splitlines())
        if self.kind == FindingKind.DIVERGENCE and self.op_number:
            lines.append(f"  states first differ after op {self.op_number} "
                         f"(line {self.line}): {self.step_text}")
        return "\n".join(lines)

    def to_json(self) -> dict[str, object]:
        return {"signature": self.signature, "kind": str(self.kind), "op": self.op_name,
                "field": self.field, "line": self.line, "impl": self.impl, "detail": self.detail}


# The parts of a run RunResult.seconds times.
REFERENCE_PART = "reference"
IMPLEMENTATION_PART = "implementation"
DECODER_PART = "decoder"
CHECKS_PART = "checks"


@dataclass
class Carried:
    """What a stream run carries from one op to the next, beside the decoder: each side's
    machine, kernel, shadow and last result, the ops run and their results (fuzz.engine.snapshots
    copies it to resume a later input from here)."""

    sides: tuple[tuple[Machine, Any, Any, str | None], ...]
    ops_run: int
    results: list[str]
    last_op: Op | None


@dataclass
class RunResult:
    """What a run found (at most one finding: it stops at the first), the number
    of ops run, each op's result (the reference's, equal to the other's) and the
    seconds each part of the run took: the two kernels, the fuzz decoder, the oracles and
    the comparison (a finding pinned by a replay checking every op reports the replay's
    finding, ops and results; the replay's seconds count among the checks)."""

    findings: list[Finding]
    ops_run: int
    results: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    final: Carried | None = None   # a stream run's state at its end (what a snapshot would hold)

    @property
    def ok(self) -> bool:
        return not self.findings


# ---------------------------------------------------------------------------
# Running


@dataclass
class _Side:
    """One implementation's half of a run."""

    name: str
    machine: Machine
    kernel: Any = None
    shadow: Any = None
    last_result: str | None = None
    seconds: float = 0.0   # spent in this side's kernel


AfterOp = Callable[[Carried, float], None]   # called after each op of a stream run that found nothing


class _Run:
    """One run of a script; stops at the first finding."""

    def __init__(self, script: Script, ref: _Implementation, other: _Implementation,
                 contpte_verdicts: ContpteVerdicts, start: Carried | None = None) -> None:
        """start: go on from it (a copy this run may change), not from new machines."""
        self.script = script
        self.contpte_verdicts = contpte_verdicts
        self.ref_impl, self.other_impl = ref, other
        ref_name, other_name = ref.name, other.name
        if ref_name == other_name:
            ref_name, other_name = f"{ref_name}(ref)", f"{other_name}(impl)"
        self.ops_run = 0
        self.results: list[str] = []
        self.last_op: Op | None = None
        self.decoder_seconds = 0.0
        self.checks_seconds = 0.0
        self.resumed = start is not None
        if start is None:
            nr_frames = script.frames if script.frames is not None else DEFAULT_NR_FRAMES
            self.sides = (_Side(ref_name, Machine(nr_frames)), _Side(other_name, Machine(nr_frames)))
            return
        self.sides = tuple(_Side(name, machine, kernel, shadow, last_result) for name, (machine, kernel, shadow,
                           last_result) in zip((ref_name, other_name), start.sides, strict=True))  # type: ignore[assignment]
        self.ops_run, self.results, self.last_op = start.ops_run, start.results, start.last_op

    @property
    def ref(self) -> _Side:
        return self.sides[0]

    def execute(self, check_every_op: bool) -> RunResult:
        finding = self._start()
        if finding is None:
            for step_index, step in enumerate(self.script.steps):
                if isinstance(step, Op):
                    finding = self._run_op(step_index, step, check_every_op)
                else:
                    finding = self._check_expect(step_index, step)
                if finding is not None:
                    break
            else:
                if not check_every_op:
                    finding = self._check_end()
        return self._result(finding)

    def execute_stream(self, next_op: Callable[[Machine], Op | None], after_op: AfterOp | None = None) -> RunResult:
        """Run ops drawn one at a time against the reference machine's state (the fuzz
        decoder), appending each to the script; oracles and states are checked at the end.
        A resumed run goes on after the ops its script holds already. after_op hears what
        the run carries after each op that found nothing, and the seconds the kernels and
        the decoder have taken so far in this run."""
        finding = None if self.resumed else self._start()
        while finding is None:
            started = time.perf_counter()
            op = next_op(self.ref.machine)
            self.decoder_seconds += time.perf_counter() - started
            if op is None:
                finding = self._check_end()
                break
            self.script.steps.append(op)
            finding = self._run_op(len(self.script.steps) - 1, op, check_every_op=False)
            if finding is None and after_op is not None:
                after_op(self.carried(), self.decoder_seconds + self.sides[0].seconds + self.sides[1].seconds)
        result = self._result(finding)
        result.final = self.carried()
        return result

    def carried(self) -> Carried:
        """What this run carries to its next op (not copied)."""
        return Carried(tuple((side.machine, side.kernel, side.shadow, side.last_result) for side in self.sides),
                       self.ops_run, self.results, self.last_op)

    def _result(self, finding: Finding | None) -> RunResult:
        reference, other = self.sides
        seconds = {REFERENCE_PART: reference.seconds, IMPLEMENTATION_PART: other.seconds,
                   DECODER_PART: self.decoder_seconds, CHECKS_PART: self.checks_seconds}
        return RunResult([] if finding is None else [finding], self.ops_run, self.results, seconds)

    def _check_end(self) -> Finding | None:
        """The end-of-run checks of fuzzing mode: oracles on both machines, then the states."""
        return self._check_state(len(self.script.steps) - 1, None)

    def _finding(self, kind: FindingKind, field: str, detail: str, step_index: int, step: Op | Expect | None,
                 impl: str, **extra: Any) -> Finding:
        if isinstance(step, Op):
            op_name, step_text, op_number = step.name, format_op(step), self.ops_run
        elif isinstance(step, Expect):
            op_name = self.last_op.name if self.last_op else AT_START
            step_text, op_number = format_expect(step), 0
        else:
            op_name, step_text, op_number = (AT_END if step_index >= 0 else AT_START), "", 0
        if step is not None:
            line = step.line
        elif step_index >= 0 and self.script.steps:
            line = self.script.steps[-1].line
        else:
            line = 0
        return Finding(kind=kind, op_name=op_name, field=field, detail=detail, step_index=step_index,
                       line=line, impl=impl, path=self.script.path, step_text=step_text,
                       op_number=op_number, ref=self.ref.name, **extra)

    # Start: a kernel and a shadow per machine.

    def _start(self) -> Finding | None:
        for side, impl in zip(self.sides, (self.ref_impl, self.other_impl), strict=True):
            started = time.perf_counter()
            try:
                side.kernel = impl.module.Kernel(side.machine)
            except Exception as error:  # noqa: BLE001 - any kernel exception is a finding
                return self._finding(*_raised(error), _traceback(error), -1, None, side.name)
            finally:
                side.seconds += time.perf_counter() - started
            side.shadow = Shadow()
        return None

    # Ops.

    def _run_op(self, step_index: int, op: Op, check_every_op: bool) -> Finding | None:
        missing = self._missing_process(op)
        self.ops_run += 1
        self.last_op = op
        if missing is not None:
            return self._finding(FindingKind.DIVERGENCE, "processes", missing, step_index, op, self.sides[1].name)
        for side in self.sides:
            finding = self._call(step_index, op, side)
            if finding is not None:
                return finding
        ref_result, other_result = (side.last_result for side in self.sides)
        assert ref_result is not None and other_result is not None   # _call set both
        self.results.append(ref_result)
        if ref_result != other_result:
            difference = Difference("op", "result", ref_result, other_result)
            return self._finding(FindingKind.DIVERGENCE, "result", difference.describe(*self._names()), step_index,
                                 op, self.sides[1].name, differences=(difference,))
        for side in self.sides:
            side.shadow.apply(op, side.last_result, side.machine)
        if not check_every_op:
            return None
        return self._check_state(step_index, op)

    def _missing_process(self, op: Op) -> str | None:
        """Raise ScriptError if op names a process the reference machine does not have;
        a process only the other machine lacks is a divergence (returned as its detail)."""
        if op.process is None:
            return None
        if op.process not in self.ref.machine.processes:
            raise ScriptError(self.script.path, op.line, f"unknown process P{op.process}")
        other = self.sides[1]
        if op.process not in other.machine.processes:
            return f"P{op.process} exists on {self.ref.name} but not on {other.name}"
        return None

    def _call(self, step_index: int, op: Op, side: _Side) -> Finding | None:
        started = time.perf_counter()
        try:
            result = OP_DISPATCH[op.name](side.kernel, op)
        except Exception as error:  # noqa: BLE001 - any kernel exception is a finding
            return self._finding(*_raised(error), _traceback(error), step_index, op, side.name)
        finally:
            side.seconds += time.perf_counter() - started
        if not isinstance(result, str) or result not in RESULTS:
            detail = f"returned {result!r}, not one of {', '.join(RESULTS)}"
            return self._finding(FindingKind.EXCEPTION, "result", detail, step_index, op, side.name)
        side.last_result = result
        return None

    def _failures_on_sides(self, check: Callable[[Any], list[tuple[str, str]]]) -> tuple[str, str, str]:
        """Run check on each side: (failing sides, one line per failure, the first failure's field)."""
        failing: list[str] = []
        details: list[str] = []
        first_field = ""
        for side in self.sides:
            failures = check(side)
            if not failures:
                continue
            failing.append(side.name)
            first_field = first_field or failures[0][0]
            details.extend(f"{side.name}: {message}" for _field, message in failures)
        return ",".join(failing), "\n".join(details), first_field

    def _check_state(self, step_index: int, op: Op | None) -> Finding | None:
        """Oracles on both machines, then the states (timed as the checks)."""
        started = time.perf_counter()
        try:
            return self._check_oracles_then_states(step_index, op)
        finally:
            self.checks_seconds += time.perf_counter() - started

    def _check_oracles_then_states(self, step_index: int, op: Op | None) -> Finding | None:
        """When the reference's oracles hold and the other machine equals it in everything the
        oracles read, theirs hold too: not run again."""
        ref, other = self.sides
        ref_failures = check_oracles(ref.machine, ref.shadow, self.contpte_verdicts)
        differences = None
        if not ref_failures:
            differences = compare_machines(ref.machine, other.machine)
            if not differences and same_oracle_inputs(ref.machine, ref.shadow, other.machine, other.shadow):
                return None
        return self._check_oracles(step_index, op, ref_failures) or self._compare(step_index, op, differences)

    def _check_oracles(self, step_index: int, op: Op | None,
                       ref_failures: list[OracleFailure] | None = None) -> Finding | None:
        """An oracle finding naming every failing side; ref_failures: the reference's, if known."""
        def failures(side: _Side) -> list[tuple[str, str]]:
            found = ref_failures if side is self.ref and ref_failures is not None \
                else check_oracles(side.machine, side.shadow, self.contpte_verdicts)
            return [(failure.oracle, f"{failure.oracle}: {failure.detail}") for failure in found]

        failing, details, first_oracle = self._failures_on_sides(failures)
        if not failing:
            return None
        return self._finding(FindingKind.ORACLE, first_oracle, details, step_index, op, failing)

    def _compare(self, step_index: int, op: Op | None,
                 differences: list[Difference] | None = None) -> Finding | None:
        """A divergence finding; differences: compare_machines' list, if computed already."""
        if differences is None:
            differences = compare_machines(self.ref.machine, self.sides[1].machine)
        if not differences:
            return None
        names = self._names()
        shown = differences[:REPORT_DIFFERENCES]
        detail = [difference.describe(*names) for difference in shown]
        if len(differences) > len(shown):
            detail.append(f"... and {len(differences) - len(shown)} more listed")
        return self._finding(FindingKind.DIVERGENCE, differences[0].field, "\n".join(detail), step_index, op,
                             self.sides[1].name, differences=tuple(differences))

    def _names(self) -> tuple[str, str]:
        return self.sides[0].name, self.sides[1].name

    # Expects.

    def _check_expect(self, step_index: int, expect: Expect) -> Finding | None:
        self._check_expect_processes(expect)
        failing, details, first_key = self._failures_on_sides(lambda side: [
            (failure.key, failure.message)
            for failure in expect_failures(side.machine, expect, side.last_result)])
        if not failing:
            return None
        last_op = f"{self.last_op.line}: {format_op(self.last_op)}" if self.last_op else ""
        return self._finding(FindingKind.EXPECT, first_key, details, step_index, expect, failing, last_op=last_op)

    def _check_expect_processes(self, expect: Expect) -> None:
        """An expect naming a process that does not exist or a pin id never issued (on the
        reference) is a script error, not a finding (SPEC §3, §4)."""
        if expect.kind == "pin" and expect.pin_id is not None and expect.pin_id >= self.ref.machine.nr_pins:
            raise ScriptError(self.script.path, expect.line, f"expect pin {expect.pin_id} names a pin id never issued "
                              f"({self.ref.machine.nr_pins} pins issued)")
        processes: list[int | str | None] = [expect.process] if expect.kind == "entry" else []
        processes += [value for key, value in expect.keys if key in ("same-page", "distinct-page")]
        for process in processes:
            if process not in self.ref.machine.processes:
                raise ScriptError(self.script.path, expect.line, f"unknown process P{process}")


def _raised(error: Exception) -> tuple[FindingKind, str]:
    """A raised error's finding kind and field: a kernel warning names its function and line."""
    if isinstance(error, KernelWarning):
        return FindingKind.WARNING, f"{error.function}:{error.line}"
    return FindingKind.EXCEPTION, type(error).__name__


def _traceback(error: BaseException) -> str:
    return "".join(traceback.format_exception(error)).rstrip()


# ---------------------------------------------------------------------------


def run_script(script: Script, impl: str | Any = REFERENCE_IMPL, ref: str | Any = REFERENCE_IMPL,
               check_every_op: bool = True, contpte_verdicts: ContpteVerdicts | None = None) -> RunResult:
    """Run script on implementation impl against ref; see the module doc.

    impl and ref are implementation names (load_implementation) or loaded
    implementations (anything with a Kernel). contpte_verdicts, if given, is kept across
    runs by the caller (the layout oracle's verdicts by block content). Raises UsageError
    for an implementation that cannot be loaded and ScriptError for a step naming a
    process that does not exist.
    """
    verdicts = contpte_verdicts if contpte_verdicts is not None else ContpteVerdicts()
    ref_impl, other_impl = _resolve(ref), _resolve(impl)
    log.debug("run_start", path=script.path, impl=other_impl.name, ref=ref_impl.name,
              frames=script.frames, steps=len(script.steps), check_every_op=check_every_op)
    result = _Run(script, ref_impl, other_impl, verdicts).execute(check_every_op)
    if not check_every_op:
        result = _pinned(result, script, ref_impl, other_impl, verdicts)
    for finding in result.findings:
        log.info("finding", signature=finding.signature, path=script.path, line=finding.line,
                 impl=finding.impl, ops=result.ops_run)
    log.debug("run_done", path=script.path, ops=result.ops_run, findings=len(result.findings))
    return result


def run_stream(script: Script, next_op: Callable[[Machine], Op | None], impl: str | Any,
               ref: str | Any = REFERENCE_IMPL, contpte_verdicts: ContpteVerdicts | None = None,
               start: Carried | None = None, after_op: AfterOp | None = None) -> RunResult:
    """Run the ops next_op draws (from the reference machine after the ops before) on both
    implementations; script (its frames, no steps yet) collects them. A failure at the end
    is pinned to its op by replaying the collected script op by op. contpte_verdicts as
    for run_script; start and after_op as for _Run.execute_stream (script then holds the
    ops start ran)."""
    ref_impl, other_impl = _resolve(ref), _resolve(impl)
    check(len(script.steps) == (start.ops_run if start else 0), "run_stream starts after the ops start ran")
    verdicts = contpte_verdicts if contpte_verdicts is not None else ContpteVerdicts()
    result = _Run(script, ref_impl, other_impl, verdicts, start).execute_stream(next_op, after_op)
    return _pinned(result, script, ref_impl, other_impl, verdicts)


def _pinned(result: RunResult, script: Script, ref: _Implementation, other: _Implementation,
            contpte_verdicts: ContpteVerdicts) -> RunResult:
    """result, or if its finding came after the first op, the run of script checking every
    op: a failure found only at the end is pinned to the first op after which it shows, and
    a result divergence or an exception at a later op gives way to an oracle failure or a
    state difference an earlier op made, so the signature is the one a replay of the script
    shows (and the minimiser keeps)."""
    if not result.findings:
        return result
    finding = result.findings[0]
    if finding.step_index <= 0 and finding.op_name != AT_END:
        return result   # at the start or at the first op: no earlier op to look at
    pinned = _Run(script, ref, other, contpte_verdicts).execute(check_every_op=True)
    if not pinned.findings:
        return result
    replay_seconds = sum(pinned.seconds.values())
    pinned.seconds = dict(result.seconds)
    pinned.seconds[CHECKS_PART] += replay_seconds   # the pinning replay is a check of the run
    return pinned


__all__ = [
    "Carried",
    "FindingKind",
    "Finding",
    "RunResult",
    "run_script",
]
