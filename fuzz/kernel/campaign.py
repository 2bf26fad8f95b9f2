"""`rmapfuzz kernel --fuzz N --seed S`: generated scripts on the model and the kernel, in one boot.

Scripts are drawn by the fuzz decoder from seeded random bytes, then kept to
what the kernel can realise: ops that never have a realisation (`try_to_unmap`,
a read-only pin) are dropped and `frames N` with them, and a
script is cut before its first op the model's run shows unrealisable (an
ENOMEM path, a reclaim of a shared folio). Every unexplained disagreement is
minimised with the model-side minimiser's candidates, which the kernel
re-checks a batch per boot, and saved under `corpus/kernel/<signature>/`:
the script, its C reproducer and the observation differences.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, replace

import structlog

from fuzz.atomic import write_atomically
from fuzz.engine.decode import decode
from fuzz.engine.minimize import Minimizer, header_comment
from fuzz.implementation import REFERENCE_IMPL
from fuzz.script.ops import Op, Script, ScriptError, format_op, format_script, parse_script

from . import guest
from .bridge import DISAGREE, KernelReport, Verdict, check_scripts, export_script
from .model import run_model, script_ops
from .realise import UnsupportedScript, realise

log = structlog.get_logger()

NEVER_REALISABLE = frozenset({"try_to_unmap"})
INPUT_BYTES = (32, 512)          # the size range of the random decoder inputs
MAX_MINIMIZE_BOOTS = 16
KERNEL_CORPUS = os.path.join("corpus", "kernel")


def _realisable_kind(op: Op) -> bool:
    return op.name not in NEVER_REALISABLE and not (op.name == "pin" and op.prot == "ro")


def restrict_to_realisable(script: Script, impl: str = REFERENCE_IMPL) -> Script | None:
    """The longest realisable script made of script's realisable ops, or None if nothing is
    left or it never maps a page (nothing for the kernel to show)."""
    ops = [op for op in script_ops(script) if _realisable_kind(op)]
    while ops:
        text = "".join(format_op(op) + "\n" for op in ops)
        try:
            candidate = parse_script(text, script.path)
            run = run_model(candidate, impl)
            realise(run)
            return candidate if any(step.after for step in run.steps) else None
        except ScriptError:
            return None
        except UnsupportedScript as error:
            line = error.unsupported.line
            if line <= 1:
                return None
            ops = ops[:line - 1]
    return None


def draw_scripts(nr_scripts: int, seed: int, impl: str = REFERENCE_IMPL) -> list[Script]:
    """nr_scripts realisable scripts from the decoder, all of them from seed."""
    rng = random.Random(seed)
    scripts: list[Script] = []
    attempts = 0
    while len(scripts) < nr_scripts and attempts < 20 * nr_scripts:
        attempts += 1
        data = rng.randbytes(rng.randrange(*INPUT_BYTES))
        name = f"kernel-fuzz-s{seed}-{attempts:05d}"
        try:
            script = restrict_to_realisable(decode(data, name), impl)
        except ScriptError:
            continue
        if script is not None and script.steps:
            scripts.append(script)
    return scripts


def kernel_signature(verdict: Verdict) -> str:
    """A disagreement's signature: the op kind and the field where it first shows."""
    field = (verdict.difference or {}).get("field", "none")
    op_name = verdict.op.split()[0] if verdict.op else "none"
    return f"kernel:{op_name}:{field}"


class KernelMinimizer(Minimizer):
    """The op-script minimiser whose candidates the kernel judges, a batch per boot: a
    candidate not judged yet counts as not reproducing and is queued for the next boot."""

    def __init__(self, kernel: guest.KernelBuild, impl: str) -> None:
        super().__init__(impl=impl, ref=REFERENCE_IMPL)
        self.kernel = kernel
        self.pending: dict[str, Script] = {}
        self.verdicts: dict[str, Verdict] = {}   # the kernel's verdict on each candidate judged

    def reproduces(self, script: Script, signature: str) -> bool:
        key = format_script(script)
        if key in self.cache:
            return self.cache[key]
        self.pending.setdefault(key, script)
        return False

    def judge_pending(self, signature: str) -> None:
        """One boot for every queued candidate; each must still disagree with this signature."""
        keys = list(self.pending)
        scripts = [parse_script(key, f"candidate-{index}") for index, key in enumerate(keys)]
        report = check_scripts(scripts, self.kernel, impl=self.impl)
        for key, verdict in zip(keys, report.verdicts, strict=True):
            self.cache[key] = verdict.status == DISAGREE and kernel_signature(verdict) == signature
            self.verdicts[key] = verdict
        self.pending = {}


def minimize_on_kernel(script: Script, verdict: Verdict, kernel: guest.KernelBuild,
                       impl: str = REFERENCE_IMPL) -> tuple[Script, Verdict]:
    """The smallest script the search finds that disagrees with the kernel as verdict does,
    and the kernel's verdict on it (verdict itself for script cut after its deciding op: the
    ops after it change nothing before it)."""
    signature = kernel_signature(verdict)
    ops = script_ops(script)
    cut = next((index for index, op in enumerate(ops) if op.line == verdict.line), len(ops) - 1)
    best = replace(script, steps=list(ops[:cut + 1]))
    minimizer = KernelMinimizer(kernel, impl)
    minimizer.cache[format_script(best)] = True
    for _boot in range(MAX_MINIMIZE_BOOTS):
        before = format_script(best)
        best = minimizer.lower_arguments(minimizer.delete_chunks(best, signature), signature)
        if format_script(best) != before:
            continue                      # progress from what is known: search again before booting
        if not minimizer.pending:
            break
        minimizer.judge_pending(signature)
    key = format_script(best)
    return parse_script(key, script.path), replace(minimizer.verdicts.get(key, verdict), path=script.path)


@dataclass
class KernelFinding:
    """One minimised, saved disagreement."""

    signature: str
    path: str
    ops: int
    from_ops: int


def save_finding(script: Script, verdict: Verdict, original_ops: int, kernel_name: str, impl: str,
                 corpus: str = KERNEL_CORPUS) -> KernelFinding:
    """corpus/kernel/<signature>/: reproducer.ops, reproducer.c and differences.txt (verdict, the
    kernel's on script), each written atomically."""
    signature = kernel_signature(verdict)
    directory = os.path.join(corpus, signature.replace(":", "-"))
    os.makedirs(directory, exist_ok=True)
    ops_path = os.path.join(directory, "reproducer.ops")
    command = f"rmapfuzz kernel {ops_path}" + ("" if impl == REFERENCE_IMPL else f" --impl {impl}")
    write_atomically(ops_path, header_comment(signature, original_ops, command) + format_script(script))
    write_atomically(os.path.join(directory, "reproducer.c"), export_script(script, impl))
    write_atomically(os.path.join(directory, "differences.txt"), _differences_text(verdict, kernel_name, impl))
    return KernelFinding(signature, directory, len(script_ops(script)), original_ops)


def _differences_text(verdict: Verdict, kernel_name: str, impl: str) -> str:
    """The verdict, then every model/kernel difference at the op that decided it."""
    lines = [f"kernel {kernel_name}, model {impl}", verdict.report(), "",
             f"every difference after line {verdict.line} '{verdict.op}' (model, then kernel):"]
    lines.extend(f"  {difference}" for difference in verdict.differences)
    return "\n".join(lines) + "\n"


def fuzz_kernel(nr_scripts: int, seed: int, kernel: guest.KernelBuild, impl: str = REFERENCE_IMPL,
                corpus: str = KERNEL_CORPUS, minimize: bool = True,
                keep: str | None = None) -> tuple[KernelReport, list[KernelFinding]]:
    """Draw, run in one boot, minimise and save every unexplained disagreement (one per signature)."""
    scripts = draw_scripts(nr_scripts, seed, impl)
    report = check_scripts(scripts, kernel, impl=impl, keep=keep)
    findings: list[KernelFinding] = []
    seen: set[str] = set()
    for script, verdict in zip(scripts, report.verdicts, strict=True):
        if verdict.status != DISAGREE or kernel_signature(verdict) in seen:
            continue
        signature = kernel_signature(verdict)
        seen.add(signature)
        small, small_verdict = minimize_on_kernel(script, verdict, kernel, impl) if minimize else (script, verdict)
        kernel_name = f"{report.kernel_release} ({report.kernel_version})"
        findings.append(save_finding(small, small_verdict, len(script_ops(script)), kernel_name, impl, corpus))
        log.info("kernel_finding", signature=signature, ops=findings[-1].ops, path=findings[-1].path)
    return report, findings
