"""Resuming inputs from snapshots (issue 16): the copies are exact and independent whatever
state the machine holds, the cache keeps its budget, and an input resumed from a snapshot
gives the verdict, signature and final states of its run from the first op."""

from __future__ import annotations

import dataclasses
import random
import threading
from pathlib import Path

import numpy as np
import pytest

from fuzz.engine import snapshots
from fuzz.engine.decode import OpStream, encode
from fuzz.engine.loop import check_resume, same_run, same_state
from fuzz.engine.session import Session
from fuzz.engine.snapshots import SnapshotCache, SnapshotError, copy_state
from fuzz.implementation import OP_DISPATCH, reference_kernel
from fuzz.judge.runner import Carried, run_stream
from fuzz.script.ops import parse_file
from machine import DEFAULT_NR_FRAMES, Machine
from machine.pgtable import PAGE_SIZE

ROOT = Path(__file__).resolve().parent.parent
# Seeds whose end states hold files, pins, swap entries, forks, uffd-wp and large folios.
RICH_SEEDS = ("05-fault-order4-order8-cont.ops", "06-fault-pmd.ops")
IMMUTABLE_LEAVES = (int, float, str, bytes, bool, type(None))


def final_state(name: str) -> tuple[OpStream, Carried]:
    """The decoder's stream and what the runner carries at the end of a seed's run."""
    session = Session("batched", Path("/nonexistent"), None, snapshot_budget=None)
    stream = OpStream(encode(parse_file(str(ROOT / "corpus/seeds" / name))))
    result = run_stream(stream.script, stream.next_op, session.impl, session.reference)
    assert result.final is not None and not result.findings
    return stream, result.final


def reachable(value: object, seen: dict[int, object] | None = None) -> dict[int, object]:
    """Every object reachable from value through containers and attributes, by id."""
    seen = {} if seen is None else seen
    if id(value) in seen or isinstance(value, (*IMMUTABLE_LEAVES, type)):
        return seen
    seen[id(value)] = value
    if isinstance(value, dict):
        items: list[object] = list(value.values())
    elif isinstance(value, (list, tuple, set, frozenset)):
        items = list(value)
    elif isinstance(value, np.ndarray):
        items = []
    else:
        items = [getattr(value, name) for klass in type(value).__mro__ for name in getattr(klass, "__slots__", ())
                 if name not in ("__dict__", "__weakref__") and hasattr(value, name)]
        items += list(getattr(value, "__dict__", {}).values())
    for item in items:
        reachable(item, seen)
    return seen


def frozen(value: object) -> bool:
    return dataclasses.is_dataclass(value) and type(value).__dataclass_params__.frozen  # type: ignore[attr-defined]


@pytest.mark.parametrize("seed", RICH_SEEDS)
def test_a_copy_holds_every_attribute_and_shares_nothing_that_changes(seed):
    """Generic over the machine: whatever attribute machine/ (or a kernel, the shadow, the
    decoder) adds, the copy holds the same and shares no mutable object with the original."""
    state = final_state(seed)
    copied = copy_state(state)
    assert same_state(copied, state)
    original = reachable(state)
    shared = [obj for key, obj in reachable(copied).items() if key in original
              and not frozen(obj) and not isinstance(obj, tuple) and not isinstance(obj, np.generic)]
    assert shared == []


def test_frozen_state_is_immutable_all_the_way_down():
    """copy_state shares frozen dataclasses (pins, ops): that holds only while their fields are immutable."""
    for obj in reachable(final_state(RICH_SEEDS[0])).values():
        if frozen(obj):
            for field in dataclasses.fields(obj):
                leaves = reachable(getattr(obj, field.name))
                assert all(isinstance(leaf, tuple) or frozen(leaf) for leaf in leaves.values()), \
                    (type(obj).__name__, field.name)


def test_a_new_machine_attribute_is_copied_and_then_independent():
    machine = Machine(256)
    machine.new_state = {"table": np.arange(4), "seen": {1, 2}, "pages": [np.zeros(2, np.int64)]}  # type: ignore[attr-defined]
    copied = copy_state(machine)
    assert same_state(copied, machine)
    machine.new_state["table"][0] = 7      # type: ignore[attr-defined]
    machine.new_state["seen"].add(3)       # type: ignore[attr-defined]
    machine.new_state["pages"][0][1] = 5   # type: ignore[attr-defined]
    assert copied.new_state["table"][0] == 0 and copied.new_state["seen"] == {1, 2}
    assert copied.new_state["pages"][0][1] == 0
    assert not same_state(copied, machine)


def test_state_newer_than_the_clone_methods_is_copied_too():
    machine = Machine(256)
    machine.processes[0].new_counter = [1]      # type: ignore[attr-defined]
    machine.frames.new_field = np.zeros(3)      # type: ignore[attr-defined]
    copied = copy_state(machine)
    assert same_state(copied, machine)
    machine.processes[0].new_counter.append(2)  # type: ignore[attr-defined]
    machine.frames.new_field[0] = 1             # type: ignore[attr-defined]
    assert copied.processes[0].new_counter == [1] and not copied.frames.new_field.any()


def test_what_cannot_be_copied_exactly_is_refused():
    machine = Machine(256)
    machine.lock = threading.Lock()   # type: ignore[attr-defined]
    with pytest.raises(SnapshotError):
        copy_state(machine)


def test_a_page_table_copy_sits_where_the_table_sat_in_its_page():
    _stream, carried = final_state(RICH_SEEDS[0])
    copied = copy_state(carried)
    for original, copy in ((carried.sides[0][0], copied.sides[0][0]), (carried.sides[1][0], copied.sides[1][0])):
        for mm, mm_copy in zip(original.processes.values(), copy.processes.values(), strict=True):
            for key, table in mm.pte_tables.items():
                address = mm_copy.pte_tables[key].entries.__array_interface__["data"][0]
                assert address % PAGE_SIZE == table.entries.__array_interface__["data"][0] % PAGE_SIZE == 0


def test_the_cache_finds_the_longest_suffix_and_keeps_its_budget():
    stream, carried = final_state(RICH_SEEDS[0])
    stream.choices.remaining = 1   # as if the decoder had one byte left
    data = stream.choices.data
    cache = SnapshotCache(budget=1)
    cache.copy_cost = 0.0
    cache.capture(data, stream, carried, carried.ops_run, work=1.0)
    assert len(cache.points) == 1   # the newest point stays even over the budget
    point = cache.lookup(b"\x99" + data[1:])
    assert point is not None and point.consumed == len(data) - 1
    assert cache.lookup(data[:-1] + b"\x00") is None
    stream.choices.remaining = 2
    cache.capture(data, stream, carried, carried.ops_run, work=1.0)
    assert len(cache.points) == 1 and cache.stats.evicted == 1


def test_resumed_runs_equal_runs_from_the_first_op():
    """The CI share of the 10,000-input check (`rmapfuzz bench --resume-check 10000` runs it all)."""
    check = check_resume(500, seed=3)
    assert check.mismatches == []
    assert check.resumed > 30 and check.mean_resumed_op >= 1


def test_a_run_keeps_its_end_as_it_is_and_the_state_before_its_last_op():
    """An input's last two states are points (the mutations resume from them most): the end
    taken over without a copy, unless the last op found fewer bytes than it reads."""
    data = encode(parse_file(str(ROOT / "corpus/seeds" / RICH_SEEDS[0])))
    session = Session("batched", Path("/nonexistent"), None, snapshot_budget=64 << 20)
    stream, result = session.run_input(data)
    cache = session.snapshots
    assert cache is not None and result.final is not None and not stream.choices.short
    end = cache.points[data]
    assert end.nr_ops == result.ops_run and end.carried.sides[0][0] is result.final.sides[0][0]
    assert same_state(end.carried, result.final)
    before = cache.lookup(b"\x07" * 3 + data)
    assert before is end
    assert cache.suffixes(data)[0] == len(data) and any(
        cache.points[data[len(data) - length:]].nr_ops == result.ops_run - 1 for length in cache.suffixes(data))
    cut = data[1:]   # the last op's last choice finds no byte: a longer input reads one there
    cut_session = Session("batched", Path("/nonexistent"), None, snapshot_budget=64 << 20)
    cut_stream, cut_result = cut_session.run_input(cut)
    assert cut_stream.choices.short and cut_result.ops_run == result.ops_run
    assert cut_session.snapshots is not None and cut not in cut_session.snapshots.points


def inputs_ending_inside_an_act(count: int) -> list[bytes]:
    """Inputs whose last byte is read by an op that starts an act of several ops (a new
    mapping and its fault): the decoder stops with the rest of the act still to draw, which
    a longer input draws on without reading a byte. The shortest suffixes of random inputs."""
    rng = random.Random(16)
    found = []
    while len(found) < count:
        data = rng.randbytes(200)
        for length in range(3, len(data) + 1):
            stream = OpStream(data[len(data) - length:])
            machine, kernel = reference_kernel(stream.script.frames or DEFAULT_NR_FRAMES)
            while (op := stream.next_op(machine)) is not None:
                OP_DISPATCH[op.name](kernel, op)
                stream.script.steps.append(op)
            if stream.choices.remaining == 0 and not stream.choices.short and stream.grammar.pending:
                found.append(data[len(data) - length:])
                break
    return found


def test_an_input_that_ends_inside_an_act_does_not_resume_after_it():
    """A longer input runs the rest of an act after the input's bytes are all read: the
    state after it has the input's bytes as its key, but the input alone ends before it."""
    plain = Session("batched", Path("/nonexistent"), None, snapshot_budget=None)
    for data in inputs_ending_inside_an_act(4):
        for prefix in (b"\x00", b"\xff\xff", b"\x05\x07\x03"):
            session = Session("batched", Path("/nonexistent"), None, snapshot_budget=64 << 20)
            assert session.snapshots is not None
            session.snapshots.thrifty = False
            session.run_input(prefix + data)
            _stream, expected = plain.run_input(data)
            _stream, got = session.run_input(data)
            assert same_run(expected, got) == "", (data.hex(), prefix.hex())


def test_resumed_runs_equal_runs_from_the_first_op_with_the_campaign_s_snapshots():
    """As above with the campaign's snapshots only (a run's end, the state before its last op,
    one per four copies' worth of work), the mutations aimed at them."""
    check = check_resume(200, seed=4, thrifty=True)
    assert check.mismatches == []
    assert check.resumed > 40 and check.mean_resumed_op >= 3


def test_resumed_runs_keep_a_planted_bug_s_findings():
    check = check_resume(250, impl="fuzz.canaries.folio_ref_per_batch", seed=5)
    assert check.mismatches == [] and check.findings > 0 and check.resumed > 0


def test_the_check_sees_a_resume_that_loses_state(monkeypatch):
    """The equivalence check can fail: a resume that forgets the shadow's words is caught."""
    original = snapshots.SnapshotCache.resume

    def forgetful(self, point, data):
        stream, carried = original(self, point, data)
        for _machine, _kernel, shadow, _result in carried.sides:
            shadow.data.clear()
        return stream, carried

    monkeypatch.setattr(snapshots.SnapshotCache, "resume", forgetful)
    assert check_resume(150, seed=3).mismatches


def test_a_bad_resume_budget_is_one_line_and_exit_2(monkeypatch, capsys):
    from fuzz.front.cli import main

    monkeypatch.setenv("RMAPFUZZ_RESUME_MIB", "lots")
    assert main(["fuzz", "--runs", "1"]) == 2
    assert capsys.readouterr().err.startswith("rmapfuzz: RMAPFUZZ_RESUME_MIB='lots': not a number of MiB")


def test_resuming_is_off_unless_asked():
    from fuzz.engine.session import snapshot_budget

    assert snapshot_budget("") is None and snapshot_budget("0") is None and snapshot_budget("8") == 8 << 20
