"""`rmapfuzz kernel` and `rmapfuzz export`: op scripts on the model and on a real kernel, op by op.

Each script runs on the model (the reference unless `--impl` names another),
is realised for the guest runtime, and all realisable scripts run in one boot,
each in its own process tree. After every op the two observations are
compared; the first op where they differ decides the verdict:

- `agree`: no op differed;
- `deviation:<id>[+<id>...]`: every difference at that op is explained by a
  known (model) simplification (deviations.py);
- `disagree`: the first unexplained difference (op, process, address, field,
  model value, kernel value);
- `unsupported`: the script has an op with no faithful realisation;
- `error`: the guest did not finish the script (a hang, a crash, a runtime failure).
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import structlog

from fuzz.implementation import REFERENCE_IMPL
from fuzz.script.ops import Op, Script, format_op

from . import guest
from .deviations import OpContext, explain
from .model import ModelError, ModelRun, run_model
from .observe import Difference, GuestRun, GuestScript, compare_observations, parse_guest_output
from .realise import GuestOp, UnsupportedScript, export_c, guest_script_text, realise

log = structlog.get_logger()

AGREE, DISAGREE, DEVIATION, UNSUPPORTED, ERROR = "agree", "disagree", "deviation", "unsupported", "error"

ERRNO_NAMES = {0: "ok", 2: "ENOENT", 9: "EBADF", 11: "EAGAIN", 12: "ENOMEM", 14: "EFAULT", 16: "EBUSY", 17: "EEXIST",
               22: "EINVAL", 1000: "UFFD"}   # 1000: the runtime's RF_EUFFD, a write userfaultfd trapped
# Ops whose kernel call does not report the op's result: MADV_PAGEOUT and debugfs split_huge_pages
# answer for the range, not for the folio, so only the state after them is compared.
STATE_ONLY_OPS = frozenset({"reclaim", "split"})
BOOT_TIMEOUT_BASE = 120.0        # seconds: boot and set-up
BOOT_TIMEOUT_PER_SCRIPT = 10.0
MAX_REPORTED_DIFFERENCES = 64


@dataclass
class Verdict:
    """One script's verdict against the kernel."""

    path: str
    status: str
    deviations: list[str] = field(default_factory=list)
    line: int = 0                 # the op that decided it
    op: str = ""
    difference: dict[str, object] | None = None
    reason: str = ""
    ops_compared: int = 0
    differences: list[str] = field(default_factory=list)   # all of them at the deciding op, capped

    @property
    def label(self) -> str:
        return f"deviation:{'+'.join(self.deviations)}" if self.status == DEVIATION else self.status

    def report(self) -> str:
        where = f" at line {self.line} '{self.op}'" if self.op else ""
        if self.status == DISAGREE and self.difference:
            diff = self.difference
            return (f"{self.path}: disagree{where}: P{diff['process']} {diff['addr']:#x} {diff['field']}: "
                    f"model {diff['model']}, kernel {diff['kernel']}")
        if self.status in (UNSUPPORTED, ERROR):
            return f"{self.path}: {self.status}{where}: {self.reason}"
        return f"{self.path}: {self.label}{where}"


def errno_name(errno: int) -> str:
    return ERRNO_NAMES.get(errno, f"errno {errno}")


def _result_difference(step_op: Op, model_result: str, kernel_errno: int) -> Difference | None:
    if step_op.name in STATE_ONLY_OPS:
        return None
    kernel_result = errno_name(kernel_errno)
    if kernel_result == model_result:
        return None
    return Difference(step_op.process or 0, step_op.addr or 0, "result", model_result, kernel_result)


def judge(run: ModelRun, kernel: GuestScript) -> Verdict:
    """Compare the model's run with the kernel's, op by op.

    The first op with a difference no deviation explains makes the script disagree; an
    explained one ends the comparison there (the two runs have legitimately parted).
    """
    kernel_before: dict = {}
    for index, step in enumerate(run.steps):
        op = step.op
        if index >= len(kernel.observations) or index >= len(kernel.results):
            reason = kernel.failure or "the guest stopped before this op was observed"
            return Verdict(run.script.path, ERROR, line=op.line, op=format_op(op), reason=reason,
                           ops_compared=index)
        kernel_after = kernel.observations[index]
        differences = compare_observations(step.after, kernel_after)
        result = _result_difference(op, step.result, kernel.results[index])
        if result is not None:
            differences.insert(0, result)
        if not differences:
            kernel_before = kernel_after
            continue
        context = OpContext(op, step.before, step.after, kernel_before, kernel_after, step.vmas)
        listed = [difference.describe() for difference in differences[:MAX_REPORTED_DIFFERENCES]]
        seen: list[str] = []
        for difference in differences:
            deviation = explain(difference, context)
            if deviation is None:
                return Verdict(run.script.path, DISAGREE, line=op.line, op=format_op(op),
                               difference=asdict(difference), ops_compared=index + 1, differences=listed)
            if deviation not in seen:
                seen.append(deviation)
        return Verdict(run.script.path, DEVIATION, deviations=seen, line=op.line, op=format_op(op),
                       ops_compared=index + 1, differences=listed)
    return Verdict(run.script.path, AGREE, ops_compared=len(run.steps))


@dataclass
class KernelReport:
    """Every script's verdict, and what the boot was."""

    kernel_version: str
    kernel_release: str
    verdicts: list[Verdict]
    boot_seconds: float = 0.0          # the qemu process, start to power-off
    warnings: list[str] = field(default_factory=list)
    guest_boot_seconds: float = 0.0    # the guest's uptime when the runtime started
    guest_script_seconds: float = 0.0  # the guest's time from the first script to the end of the last

    @property
    def unexplained(self) -> list[Verdict]:
        return [verdict for verdict in self.verdicts if verdict.status in (DISAGREE, ERROR)]

    def counts(self) -> Counter[str]:
        return Counter(verdict.label for verdict in self.verdicts)

    def to_json(self) -> dict[str, object]:
        return {"kernel_version": self.kernel_version, "kernel_release": self.kernel_release,
                "boot_seconds": round(self.boot_seconds, 2), "warnings": self.warnings,
                "counts": dict(self.counts()),
                "scripts": [dict(asdict(verdict), label=verdict.label) for verdict in self.verdicts]}

    def summary(self) -> str:
        counts = self.counts()
        parts = ", ".join(f"{count} {label}" for label, count in sorted(counts.items()))
        return (f"kernel {self.kernel_release or self.kernel_version} ({self.kernel_version}): "
                f"{len(self.verdicts)} scripts: {parts}; boot {self.boot_seconds:.1f} s")


def prepare(script: Script, impl: str) -> tuple[ModelRun | None, list[GuestOp] | None, Verdict | None]:
    """The model's run and the guest ops, or the verdict that settles the script without a boot
    (unsupported, or an error when the model implementation itself fails)."""
    try:
        run = run_model(script, impl)
    except ModelError as error:
        return None, None, Verdict(script.path, ERROR, reason=f"the model failed: {error}")
    try:
        return run, realise(run), None
    except UnsupportedScript as unsupported:
        record = unsupported.unsupported
        return run, None, Verdict(script.path, UNSUPPORTED, line=record.line, op=record.op_text,
                                  reason=record.reason)


def check_scripts(scripts: Sequence[Script], kernel: guest.KernelBuild, impl: str = REFERENCE_IMPL,
                  keep: str | None = None) -> KernelReport:
    """Run every realisable script in one boot of kernel and judge each against impl's model."""
    prepared = [prepare(script, impl) for script in scripts]
    guest_scripts = [(f"{index:05d}", guest_script_text(ops))
                     for index, (_run, ops, verdict) in enumerate(prepared) if ops is not None]
    boot: guest.Boot | None = None
    parsed = GuestRun()
    if guest_scripts:
        work_dir, handle = guest.work_directory(keep)
        try:
            if keep:
                for name, text in guest_scripts:
                    _write(os.path.join(work_dir, f"script-{name}.txt"), text)
            timeout = BOOT_TIMEOUT_BASE + BOOT_TIMEOUT_PER_SCRIPT * len(guest_scripts)
            boot = guest.boot(kernel, guest_scripts, work_dir, timeout)
        finally:
            if handle is not None:
                handle.cleanup()
        parsed = parse_guest_output(boot.output.splitlines())
    verdicts = []
    for index, (run, ops, verdict) in enumerate(prepared):
        if verdict is not None:
            verdicts.append(verdict)
            continue
        kernel_script = parsed.scripts.get(f"{index:05d}")
        assert run is not None and ops is not None
        if kernel_script is None:
            reason = parsed.failure or _boot_problem(boot) or "the guest never started this script"
            verdicts.append(Verdict(run.script.path, ERROR, reason=reason))
            continue
        verdicts.append(judge(run, kernel_script))
    report = KernelReport(kernel.version, parsed.kernel_release, verdicts,
                          boot.seconds if boot else 0.0, parsed.warnings)
    if len(parsed.uptimes) == 2:
        report.guest_boot_seconds = parsed.uptimes[0]
        report.guest_script_seconds = parsed.uptimes[1] - parsed.uptimes[0]
    log.info("kernel_checked", scripts=len(scripts), **dict(report.counts()))
    return report


def _boot_problem(boot: guest.Boot | None) -> str:
    if boot is None:
        return ""
    if boot.timed_out:
        return f"the guest did not finish within the time bound ({boot.seconds:.0f} s)"
    tail = [line for line in boot.console.splitlines() if line.strip()][-1:]
    return f"qemu exited {boot.exit_status}" + (f": {tail[0][:160]}" if tail else "")


def _write(path: str, text: str) -> None:
    with open(path, "w", encoding="utf-8") as stream:
        stream.write(text)


def export_script(script: Script, impl: str = REFERENCE_IMPL) -> str:
    """The standalone C reproducer of script; UnsupportedScript if an op has no faithful realisation."""
    run = run_model(script, impl)
    ops = realise(run)
    with open(guest.RUNTIME_SOURCE, encoding="utf-8") as stream:
        runtime = stream.read()
    return export_c(script, ops, runtime, _version())


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("rmapfuzz")
    except Exception:  # noqa: BLE001 - the version is decoration
        return "(unknown version)"


def report_json(report: KernelReport) -> str:
    return json.dumps(report.to_json(), indent=2)
