"""The machine's undo journal (machine/journal.py): a rollback restores the state exactly.

Every op of many seeded random scripts is run on each implementation inside a journal
and rolled back; the machine must then equal a deep snapshot taken before the op in
everything SPEC §5 compares, and in its page-table tree. Then the op runs for real.
"""

from __future__ import annotations

import contextlib

import numpy as np
import pytest

import batched
import reference
from fuzz.engine.generate import random_script
from fuzz.implementation import OP_DISPATCH
from fuzz.judge.compare import compare_machines
from fuzz.script.ops import Op
from machine import Machine, MachineBug
from machine.journal import JournaledArray

NR_SCRIPTS = 400
NR_CHUNKS = 8


def _table_keys(machine: Machine) -> dict[int, tuple[list[int], list[int]]]:
    """Per process, which PMD and PTE tables exist (not compared by SPEC §5, but restored)."""
    return {pid: (sorted(mm.pmd_tables_by_addr), sorted(mm.pte_tables)) for pid, mm in machine.processes.items()}


def _run(kernel: object, op: Op) -> None:
    # A name a failed fork left unbound raises: the rollback must still be exact.
    with contextlib.suppress(MachineBug, KeyError):
        OP_DISPATCH[op.name](kernel, op)


def _check_rollback(machine: Machine, kernel: object, op: Op, where: str) -> None:
    before = machine.snapshot()
    tables = _table_keys(machine)
    machine.journal_begin()
    _run(kernel, op)
    machine.journal_rollback()
    differences = compare_machines(before, machine)
    assert differences == [], f"{where}: {op}: " + "; ".join(map(str, differences[:5]))
    assert _table_keys(machine) == tables, f"{where}: {op}: page-table tree not restored"
    assert not isinstance(machine.frames.page_folio, JournaledArray), "journaled view left in place"
    assert machine.frames.nr_free_frames == before.frames.nr_free_frames


@pytest.mark.parametrize("chunk", range(NR_CHUNKS))
@pytest.mark.parametrize("module", [reference, batched], ids=["reference", "batched"])
def test_rollback_restores_the_state_before_every_op(module, chunk: int) -> None:
    for seed in range(chunk, NR_SCRIPTS, NR_CHUNKS):
        script = random_script(seed)
        machine = Machine(script.frames)
        kernel = module.Kernel(machine)
        for number, op in enumerate(step for step in script.steps if isinstance(step, Op)):
            _check_rollback(machine, kernel, op, f"seed {seed} op {number}")
            try:
                OP_DISPATCH[op.name](kernel, op)
            except (MachineBug, KeyError):
                break  # a failed fork left a later name unbound


def test_nested_rollback_undoes_only_the_inner_writes() -> None:
    machine = Machine(64)
    kernel = reference.Kernel(machine)
    kernel.mmap(0, 0x200000, 0x200000, "rw")
    machine.journal_begin()
    kernel.fault(0, 0x200000, 0)
    machine.journal_begin()
    kernel.write(0, 0x201000, 7)
    machine.journal_rollback()
    assert machine.page_at(machine.processes[0], 0x201000) is None
    assert machine.page_at(machine.processes[0], 0x200000) is not None
    machine.journal_rollback()
    assert machine.page_at(machine.processes[0], 0x200000) is None
    assert machine.frames.nr_free_frames == 64


def test_journal_records_what_an_op_writes_not_the_machine() -> None:
    """A copy-on-write fault on a machine of 1 GiB records a few dozen old values."""
    machine = Machine(1 << 18)
    kernel = reference.Kernel(machine)
    kernel.mmap(0, 0x200000, 0x200000, "rw")
    kernel.write(0, 0x200000, 1)
    kernel.fork(0)
    machine.journal_begin()
    assert kernel.write(0, 0x200000, 2) == "ok"
    assert 0 < len(machine.journal) < 64
    machine.journal_rollback()
    assert machine.frames.page_data[machine.page_at(machine.processes[0], 0x200000)] == 1


def test_journaled_view_records_ufunc_at_and_out_writes() -> None:
    machine = Machine(16)
    machine.journal_begin()
    frames = machine.frames
    np.add.at(frames.folio_refcount, np.array([3, 3, 5]), np.int64(1))
    np.add(frames.page_data[2:4], np.uint64(9), out=frames.page_data[2:4])
    counts = frames.folio_mm_id_mapcount[7]
    counts[1] += 4
    counts += 1
    frames.folio_mm_id[3] = (5, 6)  # a whole row by an int index: its old value is copied
    assert frames.folio_refcount[3] == 2 and frames.page_data[3] == 9 and frames.folio_mm_id_mapcount[7, 1] == 5
    machine.journal_rollback()
    assert not frames.folio_refcount.any() and not frames.page_data.any()
    assert not frames.folio_mm_id_mapcount.any() and not frames.folio_mm_id.any()


def test_transaction_copies_a_small_machine_and_journals_a_large_one() -> None:
    from machine.machine import TRANSACTION_COPY_MAX_FRAMES

    cases = ((TRANSACTION_COPY_MAX_FRAMES, False), (TRANSACTION_COPY_MAX_FRAMES + 1, True))
    for nr_frames, journaled_expected in cases:
        machine = Machine(nr_frames)
        reference.Kernel(machine).mmap(0, 0x200000, 0x200000, "rw")
        machine.transaction_begin()
        assert (machine.journal.depth == 1) == journaled_expected
        machine.frames.folio_refcount[5] = 3
        machine.transaction_rollback()
        assert machine.frames.folio_refcount[5] == 0 and machine.journal.depth == 0
