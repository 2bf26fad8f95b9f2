"""The fuzz loop in this process, without libFuzzer: inputs made as libFuzzer makes them
(a corpus entry, then a chain of mutations of it, half structural and half byte-level),
each run by a `Session`. It serves to check that resuming from snapshots changes nothing
(`check_resume`: every input run both ways, verdicts and final states compared) and to
time and profile the loop's own parts (`rmapfuzz bench --resume-check N`).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fuzz.engine.decode import encode
from fuzz.engine.harness import custom_mutator_for
from fuzz.engine.session import Session
from fuzz.engine.snapshots import DEFAULT_BUDGET
from fuzz.judge.runner import RunResult
from fuzz.script.ops import parse_file
from machine.mm import PmdTable
from machine.pgtable import PMD_TYPE_TABLE, PTE_TYPE_MASK

SEEDS = Path(__file__).resolve().parents[2] / "corpus" / "seeds"
MUTATE_DEPTH = 5          # libFuzzer's -mutate_depth: mutations of one corpus entry in a row
MAX_LEN = 4096            # libFuzzer's -max_len for the default campaign


def byte_mutation(rng: random.Random, data: bytes, max_size: int) -> bytes:
    """One of libFuzzer's byte-level mutations: change, insert or erase bytes, or copy a part."""
    mutated = bytearray(data)
    kind = rng.randrange(4)
    if kind == 0 and mutated:
        mutated[rng.randrange(len(mutated))] = rng.randrange(256)
    elif kind == 1:
        mutated.insert(rng.randrange(len(mutated) + 1), rng.randrange(256))
    elif kind == 2 and len(mutated) > 1:
        first = rng.randrange(len(mutated))
        del mutated[first:first + rng.randrange(1, 4)]
    elif mutated:
        source, target = rng.randrange(len(mutated)), rng.randrange(len(mutated))
        mutated[target:target] = mutated[source:source + rng.randrange(1, 8)]
    return bytes(mutated[:max_size])


def seed_inputs(seeds: Path = SEEDS) -> list[bytes]:
    """The seed corpus as raw inputs."""
    return [encode(parse_file(str(path))) for path in sorted(seeds.glob("*.ops"))]


def mutated_inputs(session: Session, nr_inputs: int, seed: int, corpus: list[bytes]) -> Iterator[bytes]:
    """nr_inputs inputs: a corpus entry every MUTATE_DEPTH, each mutated from the one before by
    the harness's custom mutator (session's structural mutator, or a byte mutation). The caller
    runs each (session.run_input) before asking for the next, as libFuzzer does."""
    rng = random.Random(seed)
    mutate = custom_mutator_for(session, lambda data, max_size: byte_mutation(rng, data, max_size))
    data = b""
    for number in range(nr_inputs):
        if number % MUTATE_DEPTH == 0:
            data = rng.choice(corpus)
        data = mutate(data, MAX_LEN, rng.randrange(1 << 32))
        yield data


def same_state(a: object, b: object) -> bool:
    """Whether a and b hold the same state, compared as copy_state copies it: arrays by dtype,
    shape and contents, containers item by item, objects attribute by attribute; but what
    holds id()s, which differ between any two runs, is compared without them: a PMD table
    descriptor's address (its PTE table object's id) and the keys of a dict keyed by id."""
    if type(a) is not type(b):
        return False
    if isinstance(a, PmdTable):
        assert isinstance(b, PmdTable)
        return (a.base == b.base and same_state(a.ptes, b.ptes)
                and same_state(_without_table_addresses(a.entries), _without_table_addresses(b.entries)))
    if isinstance(a, np.ndarray):
        assert isinstance(b, np.ndarray)
        return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()
    if isinstance(a, dict):
        assert isinstance(b, dict)
        if _id_keyed(a) and _id_keyed(b):   # keys that are id()s differ between any two runs
            return same_state(list(a.values()), list(b.values()))
        return list(a) == list(b) and all(same_state(a[key], b[key]) for key in a)
    if isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple))
        return len(a) == len(b) and all(same_state(x, y) for x, y in zip(a, b, strict=True))
    attributes = getattr(a, "__dict__", None)
    slots = [name for klass in type(a).__mro__ for name in getattr(klass, "__slots__", ())
             if name not in ("__dict__", "__weakref__")]
    if attributes is None and not slots:
        return a == b
    if slots and not all(same_state(getattr(a, name, None), getattr(b, name, None)) for name in slots):
        return False
    return attributes is None or same_state(attributes, vars(b))


def _id_keyed(mapping: dict) -> bool:
    """Whether mapping is keyed by the id() of each value (or of its first item): the machine's
    tables touched in an op, a journal's new tables."""
    return bool(mapping) and all(
        key == id(value) or (isinstance(value, list) and value and key == id(value[0]))
        for key, value in mapping.items())


def _without_table_addresses(entries: np.ndarray) -> np.ndarray:
    """entries with each table descriptor's address bits cleared."""
    tables = (entries & np.uint64(PTE_TYPE_MASK)) == np.uint64(PMD_TYPE_TABLE)
    return np.where(tables, np.uint64(PMD_TYPE_TABLE), entries)


def same_run(a: RunResult, b: RunResult) -> str:
    """"" if two runs of one input agree in verdict, signature, results and final state, else what differs."""
    if [finding.signature for finding in a.findings] != [finding.signature for finding in b.findings]:
        return f"signatures {[f.signature for f in a.findings]} against {[f.signature for f in b.findings]}"
    if [finding.report() for finding in a.findings] != [finding.report() for finding in b.findings]:
        return "finding reports differ"
    if a.ops_run != b.ops_run or a.results != b.results:
        return f"ops run {a.ops_run} against {b.ops_run}, or their results"
    if (a.final is None) != (b.final is None):
        return "one run has no final state"
    if a.final is not None and not same_state(a.final, b.final):
        return "final states differ"
    return ""


@dataclass
class ResumeCheck:
    """What check_resume saw: inputs run both ways, how many resumed and from which op on
    average, and each input whose two runs differ (its bytes and what differed)."""

    inputs: int = 0
    resumed: int = 0
    resumed_ops: int = 0
    ops: int = 0
    findings: int = 0
    mismatches: list[tuple[bytes, str]] = field(default_factory=list)

    @property
    def resumed_share(self) -> float:
        return self.resumed / self.inputs if self.inputs else 0.0

    @property
    def mean_resumed_op(self) -> float:
        """The mean number of ops a resumed input skipped."""
        return self.resumed_ops / self.resumed if self.resumed else 0.0


def check_resume(nr_inputs: int, impl: str = "batched", seed: int = 0, budget: int = DEFAULT_BUDGET,
                 thrifty: bool = False) -> ResumeCheck:
    """Run nr_inputs mutated inputs from the seeds twice, from snapshots and from the first op,
    comparing each pair of runs (same_run). Unless thrifty, the cache takes a snapshot after
    every op and resumes from any (the campaign's takes and uses only those worth a copy)."""
    crashes = Path("/nonexistent-rmapfuzz-crashes")   # run_input never saves a finding
    plain = Session(impl, crashes, None, snapshot_budget=None)
    resuming = Session(impl, crashes, None, snapshot_budget=budget)
    assert resuming.snapshots is not None
    resuming.snapshots.thrifty = thrifty
    check = ResumeCheck()
    for data in mutated_inputs(resuming, nr_inputs, seed, seed_inputs()):   # as the campaign mutates
        stream, expected = plain.run_input(data)
        if stream.ended:
            resuming.mutator.remember_run(data, stream.decoded())
        cache = resuming.snapshots
        resumed_before = cache.stats.resumed_ops if cache is not None else 0
        _stream, got = resuming.run_input(data)
        check.inputs += 1
        check.ops += expected.ops_run
        check.findings += bool(expected.findings)
        if cache is not None and cache.stats.resumed_ops != resumed_before:
            check.resumed += 1
            check.resumed_ops += cache.stats.resumed_ops - resumed_before
        difference = same_run(expected, got)
        if difference:
            check.mismatches.append((data, difference))
    return check


__all__ = ["ResumeCheck", "byte_mutation", "check_resume", "mutated_inputs", "same_run", "same_state",
           "seed_inputs"]
