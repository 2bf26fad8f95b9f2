"""The model's run of a script, op by op, as the kernel bridge compares it.

Each op of the script runs on one implementation's machine (the reference
unless the caller names another); after each, the machine is projected to the
observation the kernel side shows (`observe.project`). `expect` lines are not
the bridge's business: the kernel is compared on every field instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fuzz.implementation import OP_DISPATCH, REFERENCE_IMPL, load_implementation
from fuzz.script.ops import Op, Script, ScriptError, format_op
from machine import DEFAULT_NR_FRAMES, Machine
from machine.errors import RESULTS

from .observe import Observation, PageRanges, project


class ModelError(Exception):
    """The implementation raised or returned a non-result on an op: a finding for `replay`, not for the bridge."""


@dataclass
class ModelStep:
    """One op and what the model did with it."""

    op: Op
    result: str
    before: Observation
    after: Observation
    new_process: int | None = None   # fork: the child's number
    vmas: tuple[tuple[int, int, int], ...] = ()   # the op's process's VMAs after it: (start, end, anon_vma)
    large_cache_folios: frozenset[tuple[int, int, int]] = frozenset()   # after it: (file, index, order)


@dataclass
class ModelRun:
    """A script's ops on the model, with the pages the bridge observes."""

    script: Script
    pages: PageRanges
    steps: list[ModelStep] = field(default_factory=list)


def script_ops(script: Script) -> list[Op]:
    """The script's ops in order (its `expect` lines left out)."""
    return [step for step in script.steps if isinstance(step, Op)]


def observed_pages(script: Script) -> PageRanges:
    """Every page named by any mmap of the script, as the guest runtime collects them."""
    return PageRanges.of_mmaps((op.addr or 0, op.length or 0) for op in script_ops(script)
                               if op.name == "mmap")


def large_cache_folios(machine: Machine) -> frozenset[tuple[int, int, int]]:
    """Every page-cache folio of order > 0 in the machine's files: (file id, first index, order)."""
    folios = set()
    for file_id, file in machine.files.items():
        for index, head in file.cache.items():
            order = int(machine.frames.folio_order[head])
            if order and index % (1 << order) == 0:
                folios.add((file_id, index, order))
    return frozenset(folios)


def run_model(script: Script, impl: str = REFERENCE_IMPL) -> ModelRun:
    """Run every op of script on a fresh machine of impl, projecting the state after each."""
    module = load_implementation(impl)
    machine = Machine(script.frames if script.frames is not None else DEFAULT_NR_FRAMES)
    kernel = module.Kernel(machine)
    run = ModelRun(script, observed_pages(script))
    before: Observation = {}
    for op in script_ops(script):
        if op.process is not None and op.process not in machine.processes:
            raise ScriptError(script.path, op.line, f"P{op.process} does not exist here")
        nr_processes = machine.nr_processes
        try:
            result = OP_DISPATCH[op.name](kernel, op)
        except Exception as error:  # noqa: BLE001 - reported as the model's own failure
            raise ModelError(f"{script.path}:{op.line}: {impl} raised {type(error).__name__} on "
                             f"'{format_op(op)}': {error}") from error
        if result not in RESULTS:
            raise ModelError(f"{script.path}:{op.line}: {impl} returned {result!r} on '{format_op(op)}'")
        after = project(machine, run.pages)
        new_process = nr_processes if machine.nr_processes > nr_processes else None
        mm = machine.processes.get(op.process) if op.process is not None else None
        vmas = tuple((vma.start, vma.end, vma.anon_vma) for vma in mm.vmas) if mm is not None else ()
        run.steps.append(ModelStep(op, str(result), before, after, new_process, vmas,
                                   large_cache_folios(machine)))
        before = after
    return run
