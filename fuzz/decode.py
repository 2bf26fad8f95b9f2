"""Raw fuzzer inputs and op scripts, both ways (issue 4: the input decoding).

A raw input is a stream of choices read with atheris' FuzzedDataProvider
(`ConsumeIntInRange`, which takes its bytes from the end of the input). The
decoder is total and deterministic: any bytes give a valid op sequence, because
each op is drawn against the reference machine's state after the ops before
it: only live processes and issued pins are named; addresses are drawn near VMA
edges, folio, contpte and PMD boundaries or pages already used; orders lean to
0, 2, 4 and 9; the op count is capped. The encoder plays the same grammar the
other way, so seeds and reproducers can be kept as `.ops` and turned back into
bytes: `decode(encode(script)) == script` for every script it accepts.

The first choice is the encoding version. Decoding ignores a wrong one (a
mutated input is still an input); stored raw files are always written by the
encoder, and `check_version` refuses files of another version.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import atheris

from machine import DEFAULT_NR_FRAMES, Machine

from .errors import UsageError
from .ops import OP_NAMES, PAGE_SIZE, VA_LIMIT, Op, Script
from .runner import OP_DISPATCH, load_implementation

ENCODING_VERSION = 2  # 2: raw frames, pin pages and lengths capped (fast executions)
MAX_OPS = 24
FRAMES_CHOICES = (DEFAULT_NR_FRAMES, 1024, 256)
RAW_FRAMES = 2 * DEFAULT_NR_FRAMES  # raw draws stay small: every execution stays fast
WINDOW_BASE = 0x200000
WINDOW_SIZE = 8 << 20
PMD_SIZE = 2 << 20
CONT_SIZE = 64 << 10
# Op kinds, repeated to weight them: faults and writes make the states the others act on.
KIND_TABLE = ("mmap", "mmap", "fault", "fault", "fault", "write", "write", "write", "read", "pin", "pin",
              "unpin", "fork", "fork", "exit", "munmap", "dontneed", "mprotect", "mprotect", "reclaim",
              "reclaim", "try_to_unmap", "try_to_unmap", "split_pmd", "split", "split")
# Weighted: structured addresses first; the last entry (any page) is how the encoder draws.
ADDR_CATEGORIES = ("vma_edge", "vma_edge", "vma_edge", "boundary", "boundary", "boundary", "used", "raw")
LISTED_WEIGHT = 3  # a listed value is drawn 3 times in 4, a raw one once
RAW_PAGES = VA_LIMIT // PAGE_SIZE
BOUNDARY_GRANULES = (PMD_SIZE, CONT_SIZE, PAGE_SIZE)
BOUNDARY_OFFSETS = (0, -1, 1, 15, 16, 17, 511)
LENGTHS = (PAGE_SIZE, 2 * PAGE_SIZE, CONT_SIZE, CONT_SIZE + PAGE_SIZE, PMD_SIZE, PMD_SIZE + CONT_SIZE,
           2 * PMD_SIZE, 4 * PMD_SIZE)
RAW_LENGTH_PAGES = 4096            # up to 16 MiB: eight PMDs, twice the address window
ORDERS = (0, 2, 4, 9, 1, 3, 8)
RAW_ORDERS = 64
VALUES = (1, 2, 7, 0xdead, (1 << 64) - 1)
PIN_PAGES = (1, 2, 16, 17)
RAW_PIN_PAGES = 1024               # two PMDs' worth
PROTS = ("rw", "ro")

assert set(KIND_TABLE) == set(OP_NAMES)


class EncodeError(UsageError):
    """An op script the grammar cannot produce (e.g. an address the decoder never draws)."""


@dataclass
class DecodeState:
    """What the next op may name, read off the reference machine, plus addresses used."""

    machine: Machine
    used: list[int] = field(default_factory=list)

    def live(self) -> list[int]:
        return sorted(self.machine.processes)

    def vma_edges(self, pid: int) -> list[int]:
        edges = []
        for vma in self.machine.processes[pid].vmas:
            edges.extend((vma.start, vma.end - PAGE_SIZE))
        return edges or [WINDOW_BASE]


class ByteChoices:
    """Choices read from raw bytes, as atheris' FuzzedDataProvider gives them."""

    def __init__(self, data: bytes) -> None:
        self.provider = atheris.FuzzedDataProvider(data)

    def choose(self, count: int, wanted: int | None = None) -> int:
        return self.provider.ConsumeIntInRange(0, count - 1)

    def exhausted(self) -> bool:
        return self.provider.remaining_bytes() == 0


class RecordedChoices:
    """The encoder's side: each choice is the wanted value, recorded to be written out."""

    def __init__(self) -> None:
        self.choices: list[tuple[int, int]] = []

    def choose(self, count: int, wanted: int | None = None) -> int:
        if wanted is None or not 0 <= wanted < count:
            raise EncodeError(f"cannot encode choice {wanted} of {count}")
        self.choices.append((wanted, count))
        return wanted

    def to_bytes(self) -> bytes:
        """The bytes FuzzedDataProvider turns back into these choices: each one little-endian
        in as many bytes as its range needs, the first choice at the very end."""
        parts = [value.to_bytes(((count - 1).bit_length() + 7) // 8, "little") for value, count in self.choices]
        return b"".join(reversed(parts))


def _index(options: tuple | list, wanted: object) -> int | None:
    return options.index(wanted) if wanted in options else None


class OpGrammar:
    """One op drawn from choices against a state; with RecordedChoices and a target op the
    same code records the choices that draw exactly that op."""

    def __init__(self, choices: ByteChoices | RecordedChoices, state: DecodeState) -> None:
        self.choices = choices
        self.state = state

    def op(self, target: Op | None = None) -> Op:
        choose = self.choices.choose
        name = KIND_TABLE[choose(len(KIND_TABLE), _index(KIND_TABLE, target and target.name))]
        if name == "unpin":
            nr_pins = self.state.machine.nr_pins
            pin_id = choose(nr_pins + 1, target.pin_id if target else None)
            return Op("unpin", pin_id=pin_id)
        live = self.state.live()
        process = live[choose(len(live), _index(live, target and target.process))]
        if name in ("fork", "exit"):
            return Op(name, process=process)
        addr = self.addr(process, target.addr if target else None)
        if name in ("mmap", "munmap", "dontneed", "mprotect"):
            length = self.length(addr, target.length if target else None)
            prot = None
            if name in ("mmap", "mprotect"):
                prot = PROTS[choose(len(PROTS), _index(PROTS, target and (target.prot or "rw")))]
            return Op(name, process=process, addr=addr, length=length, prot=prot)
        if name in ("fault", "split"):
            return Op(name, process=process, addr=addr, order=self.order(target.order if target else None))
        if name == "write":
            return Op(name, process=process, addr=addr, value=self.value(target.value if target else None))
        if name == "pin":
            nr_pages = self.pin_pages(target.nr_pages if target else None)
            prot = PROTS[choose(len(PROTS), _index(PROTS, target and target.prot))]
            return Op(name, process=process, addr=addr, nr_pages=nr_pages, prot=prot)
        return Op(name, process=process, addr=addr)

    def addr(self, process: int, wanted: int | None) -> int:
        """Near a VMA edge, at or near a boundary in the window, already used, or any page."""
        choose = self.choices.choose
        category = ADDR_CATEGORIES[choose(len(ADDR_CATEGORIES), None if wanted is None else len(ADDR_CATEGORIES) - 1)]
        if category == "vma_edge":
            edges = self.state.vma_edges(process)
            addr = edges[choose(len(edges))]
        elif category == "boundary":
            granule = BOUNDARY_GRANULES[choose(len(BOUNDARY_GRANULES))]
            addr = WINDOW_BASE + choose(WINDOW_SIZE // granule) * granule
            addr += BOUNDARY_OFFSETS[choose(len(BOUNDARY_OFFSETS))] * PAGE_SIZE
            addr = min(max(addr, 0), VA_LIMIT - PAGE_SIZE)
        elif category == "used" and self.state.used:
            addr = self.state.used[choose(len(self.state.used))]
        else:
            addr = choose(RAW_PAGES, None if wanted is None else wanted // PAGE_SIZE) * PAGE_SIZE
        self.state.used.append(addr)
        return addr

    def length(self, addr: int, wanted: int | None) -> int:
        choose = self.choices.choose
        if choose(LISTED_WEIGHT + 1, None if wanted is None else LISTED_WEIGHT) < LISTED_WEIGHT:
            length = LENGTHS[choose(len(LENGTHS))]
        else:
            raw_pages = None if wanted is None else wanted // PAGE_SIZE - 1
            length = (choose(RAW_LENGTH_PAGES, raw_pages) + 1) * PAGE_SIZE
        return max(PAGE_SIZE, min(length, VA_LIMIT - addr))

    def order(self, wanted: int | None) -> int:
        return pick(self.choices, ORDERS, RAW_ORDERS, wanted)

    def value(self, wanted: int | None) -> int:
        return pick(self.choices, VALUES, 1 << 64, wanted)

    def pin_pages(self, wanted: int | None) -> int:
        return pick(self.choices, PIN_PAGES, RAW_PIN_PAGES, wanted)


def pick(choices: ByteChoices | RecordedChoices, listed: tuple[int, ...], raw_count: int,
         wanted: int | None) -> int:
    """One of the listed values (3 times in 4), else any value below raw_count; the
    encoder always takes the raw way."""
    if choices.choose(LISTED_WEIGHT + 1, None if wanted is None else LISTED_WEIGHT) < LISTED_WEIGHT:
        return listed[choices.choose(len(listed))]
    return choices.choose(raw_count, wanted)


def draw_frames(choices: ByteChoices | RecordedChoices, wanted: int | None = None) -> int:
    """The machine size: a usual one, or any from 1 to RAW_FRAMES."""
    return pick(choices, FRAMES_CHOICES, RAW_FRAMES + 1, wanted) or 1


def _reference_kernel(frames: int):
    machine = Machine(frames)
    return machine, load_implementation("reference").Kernel(machine)


class OpStream:
    """The decoder as a stream: each op drawn against the machine it is handed (the
    reference's, after the ops before), so decoding and running are one pass."""

    def __init__(self, data: bytes, path: str = "<input>") -> None:
        self.choices = ByteChoices(data)
        self.choices.choose(256)  # the encoding version: ignored here (see check_version)
        frames = draw_frames(self.choices)
        self.script = Script(path=path, frames=None if frames == DEFAULT_NR_FRAMES else frames, steps=[])
        self.used: list[int] = []
        self.ended = False   # set when next_op has drawn the last op: script holds them all

    def next_op(self, machine: Machine) -> Op | None:
        if self.choices.exhausted() or len(self.script.steps) >= MAX_OPS or not machine.processes:
            self.ended = True
            return None
        state = DecodeState(machine, self.used)
        return OpGrammar(self.choices, state).op()


def decode(data: bytes, path: str = "<input>") -> Script:
    """The op script a raw input stands for (total: any bytes decode). The reference runs
    alone to give each op its state; the harness runs both implementations instead."""
    stream = OpStream(data, path)
    frames = stream.script.frames if stream.script.frames is not None else DEFAULT_NR_FRAMES
    machine, kernel = _reference_kernel(frames)
    while (op := stream.next_op(machine)) is not None:
        OP_DISPATCH[op.name](kernel, op)
        stream.script.steps.append(op)
    return stream.script


def encode(script: Script) -> bytes:
    """The raw input that decodes to script's ops (its expects are dropped).

    Raises EncodeError if the grammar cannot draw the script (a machine size the decoder
    never picks, more than MAX_OPS ops, a process or pin it could not name).
    """
    frames = script.frames if script.frames is not None else DEFAULT_NR_FRAMES
    recorded = RecordedChoices()
    recorded.choose(256, ENCODING_VERSION)
    draw_frames(recorded, frames)
    ops = [step for step in script.steps if isinstance(step, Op)]
    if len(ops) > MAX_OPS:
        raise EncodeError(f"{script.path}: {len(ops)} ops, the decoder draws at most {MAX_OPS}")
    machine, kernel = _reference_kernel(frames)
    state = DecodeState(machine)
    for op in ops:
        if not machine.processes:
            raise EncodeError(f"{script.path}:{op.line}: no process is left to name")
        drawn = OpGrammar(recorded, state).op(op)
        if drawn != op:
            raise EncodeError(f"{script.path}:{op.line}: the decoder cannot draw this op exactly")
        OP_DISPATCH[op.name](kernel, op)
    return recorded.to_bytes()


def check_version(data: bytes, path: str) -> None:
    """Refuse a stored raw input written by another encoding version."""
    version = ByteChoices(data).choose(256)
    if version != ENCODING_VERSION:
        raise UsageError(f"{path}: raw input of encoding version {version}, this rmapfuzz reads "
                         f"version {ENCODING_VERSION}")
