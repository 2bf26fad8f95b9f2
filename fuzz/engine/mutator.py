"""The structural mutator: one change to a raw input's ops (insert, delete, duplicate, swap,
or change an argument), re-encoded to a raw input; or new ops drawn after its ops or after a
prefix of them (grow, regrow), against the state those leave.

libFuzzer mutates the input it has just run, or a corpus entry it picks again. Both are
remembered with what they decode to (`StructuralMutator`'s two caches), so the mutator
seldom decodes, and the encoder reuses what each kept op could name (`Decoded.names`),
running the reference only when a fork, exit or pin follows the mutated op.
"""

from __future__ import annotations

import random
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from fuzz.engine import decode
from fuzz.engine.decode import Decoded, EncodeError, encode
from fuzz.script.ops import Op, Script
from machine import check
from machine.pgtable import CONT_PTE_SIZE, PAGE_SIZE, PMD_SIZE

# Inputs remembered in each cache: a few MiB at most.
RECENT_SCRIPTS = 4096
MUTATIONS = ("insert", "delete", "duplicate", "swap", "argument")
# New ops: the decoder reads its choices from the end of an input, so bytes put before an
# input draw ops after its own, each against the reference's state (the act on a folio of
# note included): a state the corpus reached is built on rather than drawn again from nothing.
GROWTHS = ("grow", "regrow")
GROWTH_SHARE = 0.6             # of the structural mutations
GROWTH_BYTES = (8, 48)         # random bytes put before the input
ADDR_STEPS = (-16, -1, 1, 16, 512)    # pages an address moves by
ORDERS = (0, 2, 3, 4, 8, 9)
LENGTHS = (PAGE_SIZE, CONT_PTE_SIZE, PMD_SIZE, PMD_SIZE + CONT_PTE_SIZE)
NR_PAGES = (1, 2, 16, 17, 512)
ARGUMENTS = ("order", "length", "value", "nr_pages", "prot", "mode")   # besides the address and sharing
# Where a mutation changes an input the snapshot cache holds points for: it runs from the
# point after the ops it keeps (fuzz.engine.snapshots), so late ops change most. One change
# in UNIFORM_SHARE is at any op alike; of the others, 1 - LATE_KEEP at the last op, and each
# op before has LATE_KEEP times the chance of the one after it. Without points, any op alike.
UNIFORM_SHARE = 0.2
LATE_KEEP = 0.5


class RecentScripts:
    """What raw inputs seen lately decode to; the least recently used is forgotten first."""

    def __init__(self, limit: int = RECENT_SCRIPTS) -> None:
        self.limit = limit
        self.scripts: OrderedDict[bytes, Decoded] = OrderedDict()

    def remember(self, data: bytes, decoded: Decoded) -> None:
        """Keep decoded as what data decodes to."""
        self.scripts[data] = decoded
        self.scripts.move_to_end(data)
        if len(self.scripts) > self.limit:
            self.scripts.popitem(last=False)

    def get(self, data: bytes) -> Decoded | None:
        """What data decodes to, if it was remembered lately."""
        decoded = self.scripts.get(data)
        if decoded is not None:
            self.scripts.move_to_end(data)
        return decoded


class StructuralMutator:
    """The mutator of one fuzzing process and its two caches: the inputs the harness ran to
    their end (`ran`), and those the mutator had to decode itself (`decoded_here`: corpus
    entries libFuzzer picks again and again, which every execution would push out of `ran`)."""

    def __init__(self, limit: int = RECENT_SCRIPTS) -> None:
        self.ran = RecentScripts(limit)
        self.decoded_here = RecentScripts(limit)
        # The snapshot points held for an input: (bytes kept, ops run) of each, if the session resumes.
        self.points_of: Callable[[bytes], list[tuple[int, int]]] = lambda data: []

    def remember_run(self, data: bytes, decoded: Decoded) -> None:
        """The harness ran data to its end: decoded is what it decodes to."""
        self.ran.remember(data, decoded)

    def decoded_input(self, data: bytes) -> Decoded:
        """What data decodes to: remembered from its run or an earlier mutation, else decoded
        (the reference runs it) and remembered for the next time libFuzzer picks it."""
        decoded = self.ran.get(data) or self.decoded_here.get(data)
        if decoded is None:
            decoded = decode.decode_input(data)
            self.decoded_here.remember(data, decoded)
        return decoded

    def mutate(self, data: bytes, max_size: int, rng: random.Random) -> bytes | None:
        """A structural mutation of data: new ops after its own or after a prefix of them
        (grow_input) GROWTH_SHARE of the time, else a change to its ops (mutate_input)."""
        if rng.random() < GROWTH_SHARE:
            kind = rng.choice(GROWTHS)
            return grow_input(data, max_size, rng, self.decoded_input(data) if kind == "regrow" else None, kind,
                              self.points_of(data))
        return mutate_input(data, max_size, rng, self.decoded_input(data), self.points_of(data))


def late_index(count: int, rng: random.Random, late: bool = True) -> int:
    """An index below count, the later ones likelier (see UNIFORM_SHARE and LATE_KEEP), or
    unless late any alike."""
    check(count > 0, "no index below 0")
    if not late or rng.random() < UNIFORM_SHARE:
        return rng.randrange(count)
    back = 0
    while back < count - 1 and rng.random() < LATE_KEEP:
        back += 1
    return count - 1 - back


def mutate_ops(ops: list[Op], rng: random.Random, late: bool = False) -> list[Op]:
    """One structural mutation of an op list (if late, at a late op more often than an early
    one): insert a copy of an op elsewhere, delete, duplicate in place, swap two, or change one argument."""
    ops = list(ops)
    if not ops:
        return ops
    index = late_index(len(ops), rng, late)
    kind = rng.choice(MUTATIONS)
    if kind == "insert":
        ops.insert(late_index(len(ops) + 1, rng, late), ops[index])
    elif kind == "delete":
        del ops[index]
    elif kind == "duplicate":
        ops.insert(index, ops[index])
    elif kind == "swap":
        other = late_index(len(ops), rng, late)
        ops[index], ops[other] = ops[other], ops[index]
    else:
        ops[index] = mutate_argument(ops[index], rng)
    return ops


def mutate_argument(op: Op, rng: random.Random) -> Op:
    """op with one argument changed: its address half the time, else one of the others it
    has (order, length, value, page count, prot, wp mode, a file mapping's sharing)."""
    if op.addr is not None and rng.random() < 0.5:
        return replace(op, addr=max(0, op.addr + rng.choice(ADDR_STEPS) * PAGE_SIZE))
    others = [name for name in ARGUMENTS if getattr(op, name) is not None]
    if op.name == "mmap" and op.file is not None:
        others.append("shared")
    if not others:
        return op
    name = rng.choice(others)
    changes: dict[str, Any] = {}
    if name == "order":
        changes["order"] = rng.choice(ORDERS)
    elif name == "length":
        changes["length"] = rng.choice(LENGTHS)
    elif name == "value":
        changes["value"] = rng.randrange(1 << 64)
    elif name == "nr_pages":
        changes["nr_pages"] = rng.choice(NR_PAGES)
    elif name == "prot":
        changes["prot"] = "ro" if op.prot == "rw" else "rw"
    elif name == "mode":
        changes["mode"] = "off" if op.mode == "on" else "on"
    else:
        changes["shared"] = not op.shared
    return replace(op, **changes)


def mutate_input(data: bytes, max_size: int, rng: random.Random, decoded: Decoded,
                 points: Sequence[tuple[int, int]] = ()) -> bytes | None:
    """A structural mutation of a raw input's ops (late ones likelier if points), re-encoded;
    None if the mutated ops cannot be drawn (e.g. an op now names a process that does not exist yet).

    decoded is what data decodes to; the encoder reuses its names for the ops the
    mutation keeps at the start. points as for with_kept_bytes.
    """
    script = decoded.script
    ops = [step for step in script.steps if isinstance(step, Op)]
    mutated = mutate_ops(ops, rng, bool(points))
    try:
        encoded = encode(Script(path=script.path, frames=script.frames, steps=list(mutated)), decoded)
        encoded = with_kept_bytes(encoded, mutated, data, decoded, points)
    except EncodeError:
        return None
    return encoded if len(encoded) <= max_size else None


def with_kept_bytes(encoded: bytes, ops: list[Op], data: bytes, decoded: Decoded,
                    points: Sequence[tuple[int, int]]) -> bytes:
    """encoded (the encoding of ops) ending with data's own bytes for the first ops it shares
    with data, as far as the latest snapshot point of data (points: its (bytes kept, ops run)
    pairs) within them: data's bytes need not be the encoder's (the decoder reads many
    bytes as one choice), and the mutated input resumes from that point only if they are data's."""
    known = decoded.script.steps
    shared = 0
    while shared < min(len(ops), len(known)) and ops[shared] == known[shared]:
        shared += 1
    usable = [(length, nr_ops) for length, nr_ops in points if nr_ops <= shared]
    if not usable:
        return encoded
    length, nr_ops = max(usable, key=lambda point: point[1])
    script = decoded.script
    canonical = len(encode(Script(path=script.path, frames=script.frames, steps=list(ops[:nr_ops])), decoded))
    return encoded[:len(encoded) - canonical] + data[len(data) - length:]


def grow_input(data: bytes, max_size: int, rng: random.Random, decoded: Decoded | None, kind: str,
               points: Sequence[tuple[int, int]] = ()) -> bytes | None:
    """data with random bytes put before it (grow: its ops, then new ones), or the encoding of
    a random prefix of its ops (a long one likelier if points; decoded: what data decodes to)
    with random bytes before it (regrow: the rest replaced by new ops); None if there is no
    room within max_size or the prefix cannot be encoded; points as for with_kept_bytes."""
    if kind == "grow":
        base = data
    else:
        check(decoded is not None, "regrow needs what the input decodes to")
        assert decoded is not None
        script = decoded.script
        ops = [step for step in script.steps if isinstance(step, Op)]
        kept = ops[:late_index(len(ops) + 1, rng, bool(points))]
        try:
            base = with_kept_bytes(encode(Script(path=script.path, frames=script.frames, steps=list(kept)), decoded),
                                   kept, data, decoded, points)
        except EncodeError:
            return None
    room = max_size - len(base)
    if room <= 0:
        return None
    nr_bytes = min(rng.randint(*GROWTH_BYTES), room)
    return rng.randbytes(nr_bytes) + base
