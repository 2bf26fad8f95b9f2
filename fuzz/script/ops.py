"""Op scripts: the text form of every reproducer, scenario and seed (SPEC §4).

A script is one op or `expect` per line, with `#` comments, numbers in decimal
or `0x` hex and lengths that may end in K, M or G. This module holds the data
model (`Op`, `Expect`, `Script`), the parser and the printer, and nothing that
runs an op: the harness, the decoder and the minimiser all meet here, so the
parser is strict (every argument checked, every error names its line) and the
printer is its exact inverse on valid scripts.

Processes are tracked statically while parsing: P0 is live at the start,
`fork P` makes a child live numbered like the machine numbers it (the lowest
number never used), `exit P` kills P, and naming a process that is not live is
a script error (SPEC §3: "a script error (exit 2), not an op result").
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from fuzz.errors import quote_token, shown_number
from fuzz.implementation import (
    FILE_OPS,
    OP_NAMES,
    ORDER_OPS,
    PROCESS_OPS,
    PROT_OPS,
    RANGE_OPS,
    RESULT_NAMES,
    WP_MODES,
)
from machine.pgtable import HPAGE_PMD_ORDER, PAGE_SIZE, TASK_SIZE

# Keys of `expect P va ...` and `expect pin ID ...`, in the order SPEC §4 lists them.
EXPECT_ENTRY_KEYS = ("value", "state", "exclusive", "writable", "dirty", "young", "level",
                     "cont", "order", "mapcount", "shared", "pinned", "same-page",
                     "distinct-page", "lazyfree", "folio-dirty", "file", "uffd-wp", "marker")
EXPECT_PIN_KEYS = ("value", "coherent")
EXPECT_RESULT_KEYS = ("result",)

VALUE_LIMIT = 1 << 64       # data words are 64-bit
FRAMES_LIMIT = 1 << 24      # largest `frames N`
ORDER_ARG_LIMIT = 63        # `order=K` of fault/split/read; 0..9 is the kernel's check (EINVAL)
EXPECT_ORDER_LIMIT = HPAGE_PMD_ORDER   # largest folio order an `expect ... order=` can name
FILE_LIMIT = 1 << 16        # largest n of a file name Fn


@dataclass(frozen=True)
class Op:
    """One operation of SPEC §3, as written on one script line."""

    name: str                    # one of OP_NAMES
    process: int | None = None   # n of "Pn" (None for unpin)
    addr: int | None = None      # bytes, 4 KiB aligned
    length: int | None = None    # bytes: mmap, munmap, dontneed, mprotect
    nr_pages: int | None = None  # pin
    order: int | None = None     # fault, split, read
    value: int | None = None     # write
    prot: str | None = None      # "rw"/"ro": mmap, mprotect; the mode of pin
    mode: str | None = None      # "on"/"off": wp
    pin_id: int | None = None    # unpin
    file: int | None = None      # n of "Fn": file, sync, and a file mmap
    offset: int | None = None    # bytes: a file mmap's file offset
    shared: bool = False         # a file mmap: MAP_SHARED
    shmem: bool = False          # file: a tmpfs/memfd file
    line: int = field(default=0, compare=False)  # 1-based source line, 0 if built in code


@dataclass(frozen=True)
class Expect:
    """An assertion line: about an entry, a pin, or the previous op's result."""

    kind: str                    # "entry" | "pin" | "result"
    process: int | None = None   # entry
    addr: int | None = None      # entry
    pin_id: int | None = None    # pin
    keys: tuple[tuple[str, str | int], ...] = ()   # source order, values normalised
    line: int = field(default=0, compare=False)


@dataclass
class Script:
    """A parsed script: its source, the optional `frames N`, and its steps in order."""

    path: str
    frames: int | None
    steps: list[Op | Expect]


class ScriptError(Exception):
    """A script that is not valid: str(e) is "path:line: message" (line 0: no line)."""

    def __init__(self, path: str, line: int, message: str) -> None:
        super().__init__(path, line, message)   # all three in args, so it pickles
        self.path = path
        self.line = line
        self.message = message

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.message}"


class _LineError(Exception):
    """A problem with the current line; parse_script adds the path and line number."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


# ---------------------------------------------------------------------------
# Tokens

_DECIMAL_DIGITS = frozenset("0123456789")
_HEX_DIGITS = frozenset("0123456789abcdefABCDEF")
_LENGTH_UNITS = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30,
                 "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
def _decimal(text: str) -> int | None:
    """ASCII decimal digits only: int() would also take '+', '_', spaces and other scripts' digits."""
    if not text or not _DECIMAL_DIGITS.issuperset(text):
        return None
    try:
        return int(text)
    except ValueError:          # more digits than int() converts
        return None


def _number(text: str) -> int | None:
    """A non-negative number, decimal or 0x hex; None if text is not one."""
    if text[:2] in ("0x", "0X"):
        digits = text[2:]
        if not digits or not _HEX_DIGITS.issuperset(digits):
            return None
        return int(digits, 16)
    return _decimal(text)


def _parse_number(text: str) -> int:
    number = _number(text)
    if number is None:
        raise _LineError(f"bad number {quote_token(text)}")
    return number


def _parse_process_number(text: str) -> int | None:
    """n of "Pn", or None."""
    if text[:1] != "P":
        return None
    return _decimal(text[1:])


class _Processes:
    """Which processes are live at the current line: the static mirror of fork and exit;
    and how many pin ops came before it (pin ids below that may have been issued)."""

    def __init__(self) -> None:
        self.live = {0}
        self.next_child = 1     # lowest number never used; numbers are never reused
        self.nr_pin_ops = 0

    def parse(self, text: str) -> int:
        """The number of a live process written as "Pn"."""
        process = _parse_process_number(text)
        if process is None:
            raise _LineError(f"bad process {quote_token(text)}")
        if process not in self.live:
            raise _LineError(f"unknown process P{shown_number(process)}")
        return process

    def fork(self) -> None:
        self.live.add(self.next_child)
        self.next_child += 1

    def exit(self, process: int) -> None:
        self.live.discard(process)


def _parse_addr(text: str) -> int:
    """A page-aligned user address below 2^48."""
    addr = _parse_number(text)
    if addr % PAGE_SIZE:
        raise _LineError(f"address {shown_number(addr, hex_form=True)} is not 4 KiB aligned")
    if addr >= TASK_SIZE:
        raise _LineError(f"address {shown_number(addr, hex_form=True)} is not below 2^48")
    return addr


def _parse_length(text: str) -> int:
    """A positive page-aligned length, decimal or hex, optionally times K, M or G."""
    unit = _LENGTH_UNITS.get(text[-1:], 1)
    number = _number(text[:-1] if unit != 1 else text)
    if number is None:
        raise _LineError(f"bad length {quote_token(text)}")
    length = number * unit
    if length == 0:
        raise _LineError("length must be positive")
    if length % PAGE_SIZE:
        raise _LineError(f"length {shown_number(length, hex_form=True)} is not 4 KiB aligned")
    return length


def _check_range_end(end: int) -> None:
    if end > TASK_SIZE:
        raise _LineError("range ends above 2^48")


def _parse_prot(text: str, what: str) -> str:
    prot = text.lower()
    if prot not in ("rw", "ro"):
        raise _LineError(f"bad {what} {quote_token(text)} (rw|ro)")
    return prot


def _parse_order(text: str) -> int:
    """The `order=K` argument of fault and split: any K in 0..63 (the kernel checks 0..9)."""
    if not text.startswith("order="):
        raise _LineError(f"expected order=K, got {quote_token(text)}")
    order = _parse_number(text[len("order="):])
    if order > ORDER_ARG_LIMIT:
        raise _LineError(f"order {shown_number(order)} out of range 0..{ORDER_ARG_LIMIT}")
    return order


def _parse_value(text: str) -> int:
    """A 64-bit data word."""
    value = _parse_number(text)
    if value >= VALUE_LIMIT:
        raise _LineError(f"value {shown_number(value, hex_form=True)} out of range 0..2^64-1")
    return value


# ---------------------------------------------------------------------------
# Ops: one parser per op, each given the arguments after the op name


def _op_range(name: str, args: list[str], processes: _Processes) -> Op:
    """munmap, dontneed, and the common part of mmap and mprotect: P va len."""
    process = processes.parse(args[0])
    addr = _parse_addr(args[1])
    length = _parse_length(args[2])
    _check_range_end(addr + length)
    return Op(name, process=process, addr=addr, length=length)


def _parse_file_name(text: str) -> int:
    """Fn: a file's number (whether it exists is the kernel's question: EBADF)."""
    number = _decimal(text[1:]) if text[:1] in ("F", "f") else None
    if number is None or number > FILE_LIMIT:
        raise _LineError(f"bad file {quote_token(text)}: want Fn")
    return number


def _op_mmap(name: str, args: list[str], processes: _Processes) -> Op:
    """mmap P va len [rw|ro] [file=Fn] [offset=OFF] [shared]."""
    op = _op_range(name, args[:3], processes)
    prot = "rw"
    file: int | None = None
    offset: int | None = None
    shared = False
    for index, word in enumerate(args[3:]):
        key, _, value = word.partition("=")
        if index == 0 and "=" not in word and word != "shared":
            prot = _parse_prot(word, "prot")
        elif key == "file" and value and file is None:
            file = _parse_file_name(value)
        elif key == "offset" and value and offset is None:
            offset = _parse_addr(value)
        elif word == "shared" and not shared:
            shared = True
        else:
            raise _LineError(f"bad mmap argument {quote_token(word)}: want rw|ro, file=Fn, offset=OFF, shared")
    if file is None and (offset is not None or shared):
        raise _LineError("offset= and shared need file=Fn (anonymous memory is private)")
    return Op(name, process=op.process, addr=op.addr, length=op.length, prot=prot, file=file,
              offset=offset or None, shared=shared)


def _op_file(name: str, args: list[str], processes: _Processes) -> Op:
    """file Fn len [shmem]."""
    file = _parse_file_name(args[0])
    length = _parse_length(args[1])
    _check_range_end(length)
    if len(args) == 3 and args[2] != "shmem":
        raise _LineError(f"bad file kind {quote_token(args[2])}: want shmem or nothing")
    return Op(name, file=file, length=length, shmem=len(args) == 3)


def _op_sync(name: str, args: list[str], processes: _Processes) -> Op:
    return Op(name, file=_parse_file_name(args[0]))


def _op_mprotect(name: str, args: list[str], processes: _Processes) -> Op:
    op = _op_range(name, args, processes)
    prot = _parse_prot(args[3], "prot")
    return Op(name, process=op.process, addr=op.addr, length=op.length, prot=prot)


def _op_wp(name: str, args: list[str], processes: _Processes) -> Op:
    """wp P va len on|off."""
    op = _op_range(name, args, processes)
    mode = args[3].lower()
    if mode not in WP_MODES:
        raise _LineError(f"bad wp mode {quote_token(args[3])} (on|off)")
    return Op(name, process=op.process, addr=op.addr, length=op.length, mode=mode)


def _op_at(name: str, args: list[str], processes: _Processes) -> Op:
    """reclaim, try_to_unmap, split_pmd: P va."""
    return Op(name, process=processes.parse(args[0]), addr=_parse_addr(args[1]))


def _op_fault(name: str, args: list[str], processes: _Processes) -> Op:
    """fault, read: P va [order=K] (K 0 if left out; a read's 0 is None, as it is printed)."""
    process = processes.parse(args[0])
    addr = _parse_addr(args[1])
    order = _parse_order(args[2]) if len(args) == 3 else 0
    return Op(name, process=process, addr=addr, order=order if order or name != "read" else None)


def _op_split(name: str, args: list[str], processes: _Processes) -> Op:
    process = processes.parse(args[0])
    addr = _parse_addr(args[1])
    return Op(name, process=process, addr=addr, order=_parse_order(args[2]))


def _op_write(name: str, args: list[str], processes: _Processes) -> Op:
    process = processes.parse(args[0])
    addr = _parse_addr(args[1])
    return Op(name, process=process, addr=addr, value=_parse_value(args[2]))


def _op_pin(name: str, args: list[str], processes: _Processes) -> Op:
    """pin P va nr_pages ro|rw; nr_pages 0 is left to the kernel (EINVAL)."""
    process = processes.parse(args[0])
    addr = _parse_addr(args[1])
    nr_pages = _parse_number(args[2])
    _check_range_end(addr + nr_pages * PAGE_SIZE)
    mode = _parse_prot(args[3], "pin mode")
    processes.nr_pin_ops += 1
    return Op(name, process=process, addr=addr, nr_pages=nr_pages, prot=mode)


def _op_unpin(name: str, args: list[str], processes: _Processes) -> Op:
    return Op(name, pin_id=_parse_number(args[0]))


def _op_fork(name: str, args: list[str], processes: _Processes) -> Op:
    op = Op(name, process=processes.parse(args[0]))
    processes.fork()
    return op


def _op_exit(name: str, args: list[str], processes: _Processes) -> Op:
    process = processes.parse(args[0])
    processes.exit(process)
    return Op(name, process=process)


_OpParser = Callable[[str, list[str], _Processes], Op]

# name: (fewest arguments, most arguments, parser)
_OP_SYNTAX: dict[str, tuple[int, int, _OpParser]] = {
    "mmap": (3, 7, _op_mmap),
    "munmap": (3, 3, _op_range),
    "dontneed": (3, 3, _op_range),
    "free": (3, 3, _op_range),
    "mprotect": (4, 4, _op_mprotect),
    "fault": (2, 3, _op_fault),
    "write": (3, 3, _op_write),
    "read": (2, 3, _op_fault),
    "pin": (4, 4, _op_pin),
    "unpin": (1, 1, _op_unpin),
    "fork": (1, 1, _op_fork),
    "exit": (1, 1, _op_exit),
    "reclaim": (2, 2, _op_at),
    "try_to_unmap": (2, 2, _op_at),
    "split_pmd": (2, 2, _op_at),
    "split": (3, 3, _op_split),
    "file": (2, 3, _op_file),
    "sync": (1, 1, _op_sync),
    "uffd": (3, 3, _op_range),
    "wp": (4, 4, _op_wp),
}
assert tuple(_OP_SYNTAX) == OP_NAMES


def _arity_message(name: str, fewest: int, most: int, got: int) -> str:
    if fewest == most:
        plural = "" if fewest == 1 else "s"
        return f"{name} takes {fewest} argument{plural}, got {got}"
    if most > fewest + 1:
        return f"{name} takes {fewest} to {most} arguments, got {got}"
    return f"{name} takes {fewest} or {most} arguments, got {got}"


# ---------------------------------------------------------------------------
# Expects


def _choice(*words: str) -> Callable[[str], str | None]:
    """A parser for one of words, case-insensitive, normalised to the spelling given."""
    by_lower = {word.lower(): word for word in words}
    return lambda text: by_lower.get(text.lower())


def _bounded(limit: int | None) -> Callable[[str], int | None]:
    """A parser for a number in 0..limit (no limit if None)."""
    def parse(text: str) -> int | None:
        number = _number(text)
        if number is None or (limit is not None and number > limit):
            return None
        return number
    return parse


_YES_NO = _choice("yes", "no")


def _file_key(text: str) -> int | None:
    """The n of Fn in an expect's file= key, None if malformed."""
    try:
        return _parse_file_name(text)
    except _LineError:
        return None

# key: (parser returning None on a bad value, what a good value looks like)
_KeyParser = tuple[Callable[[str], str | int | None], str]
_ENTRY_KEY_SYNTAX: dict[str, _KeyParser] = {
    "value": (_bounded(VALUE_LIMIT - 1), "0..2^64-1"),
    "state": (_choice("present", "swap", "none", "zero"), "present|swap|none|zero"),
    "exclusive": (_YES_NO, "yes|no"),
    "writable": (_YES_NO, "yes|no"),
    "dirty": (_YES_NO, "yes|no"),
    "young": (_YES_NO, "yes|no"),
    "level": (_choice("pte", "pmd"), "pte|pmd"),
    "cont": (_YES_NO, "yes|no"),
    "order": (_bounded(EXPECT_ORDER_LIMIT), f"0..{EXPECT_ORDER_LIMIT}"),
    "mapcount": (_bounded(None), "integer >= 0"),
    "shared": (_YES_NO, "yes|no"),
    "pinned": (_YES_NO, "yes|no"),
    "same-page": (_parse_process_number, "Pn"),
    "distinct-page": (_parse_process_number, "Pn"),
    "lazyfree": (_YES_NO, "yes|no"),
    "folio-dirty": (_YES_NO, "yes|no"),
    "file": (lambda text: "none" if text == "none" else _file_key(text), "Fn|none"),
    "uffd-wp": (_YES_NO, "yes|no"),
    "marker": (_YES_NO, "yes|no"),
}
_PIN_KEY_SYNTAX: dict[str, _KeyParser] = {
    "value": (_bounded(VALUE_LIMIT - 1), "0..2^64-1"),
    "coherent": (_YES_NO, "yes|no"),
}
_RESULT_KEY_SYNTAX: dict[str, _KeyParser] = {
    "result": (_choice(*RESULT_NAMES), "|".join(RESULT_NAMES)),
}
_PROCESS_KEYS = frozenset(("same-page", "distinct-page"))
_ALL_EXPECT_KEYS = frozenset(_ENTRY_KEY_SYNTAX) | frozenset(_PIN_KEY_SYNTAX) | frozenset(_RESULT_KEY_SYNTAX)
assert tuple(_ENTRY_KEY_SYNTAX) == EXPECT_ENTRY_KEYS
assert tuple(_PIN_KEY_SYNTAX) == EXPECT_PIN_KEYS
assert tuple(_RESULT_KEY_SYNTAX) == EXPECT_RESULT_KEYS

_KIND_PHRASE = {"entry": "an entry expect", "pin": "expect pin", "result": "expect result"}


def _parse_keys(words: list[str], kind: str, syntax: dict[str, _KeyParser],
                processes: _Processes) -> tuple[tuple[str, str | int], ...]:
    """key=value words, at least one, each key once and valid for this kind of expect."""
    if not words:
        raise _LineError("expect needs at least one key=value")
    keys: list[tuple[str, str | int]] = []
    seen: set[str] = set()
    for word in words:
        key, equals, text = word.partition("=")
        if not key or not equals:
            raise _LineError(f"expected key=value, got {quote_token(word)}")
        if key not in _ALL_EXPECT_KEYS:
            raise _LineError(f"unknown expect key {quote_token(key)}")
        if key not in syntax:
            raise _LineError(f"expect key {quote_token(key)} is not valid for {_KIND_PHRASE[kind]}")
        if key in seen:
            raise _LineError(f"expect key {quote_token(key)} given twice")
        seen.add(key)
        parse, expected = syntax[key]
        value = parse(text)
        if value is None:
            raise _LineError(f"bad value {quote_token(text)} for {key} ({expected})")
        if key in _PROCESS_KEYS:
            value = processes.parse(text)     # must name a live process, like any Pn
        keys.append((key, value))
    return tuple(keys)


def _parse_expect(args: list[str], processes: _Processes) -> Expect:
    """expect P va key=value..., expect pin ID key=value..., or expect result=NAME."""
    if not args:
        raise _LineError("expect needs 'P va key=value', 'pin ID key=value' or 'result=NAME'")
    first = args[0]
    if first.startswith("result="):
        return Expect("result", keys=_parse_keys(args, "result", _RESULT_KEY_SYNTAX, processes))
    if "=" in first:
        raise _LineError(f"expect needs 'P va', 'pin ID' or 'result=' before {quote_token(first)}")
    if first == "pin":
        if len(args) < 2:
            raise _LineError("expect pin needs a pin id")
        pin_id = _parse_number(args[1])
        if pin_id >= processes.nr_pin_ops:
            raise _LineError(f"expect pin {shown_number(pin_id)} names a pin id never issued "
                             f"({processes.nr_pin_ops} pin ops come before it)")
        return Expect("pin", pin_id=pin_id,
                      keys=_parse_keys(args[2:], "pin", _PIN_KEY_SYNTAX, processes))
    process = processes.parse(first)
    if len(args) < 2:
        raise _LineError(f"expect P{process} needs an address")
    addr = _parse_addr(args[1])
    return Expect("entry", process=process, addr=addr,
                  keys=_parse_keys(args[2:], "entry", _ENTRY_KEY_SYNTAX, processes))


# ---------------------------------------------------------------------------
# Scripts


def _parse_frames(args: list[str]) -> int:
    if len(args) != 1:
        raise _LineError(_arity_message("frames", 1, 1, len(args)))
    frames = _parse_number(args[0])
    if not 1 <= frames <= FRAMES_LIMIT:
        raise _LineError(f"frames {shown_number(frames)} out of range 1..{FRAMES_LIMIT}")
    return frames


def parse_script(text: str, path: str = "<string>") -> Script:
    """Parse script text; raise ScriptError naming path and line for anything invalid.

    Lines are split at '\\n' only (a trailing '\\r' is whitespace), so line numbers
    agree with editors and with parse_file's byte-level UTF-8 check.
    """
    if text.startswith("\ufeff"):
        text = text[1:]
    processes = _Processes()
    steps: list[Op | Expect] = []
    frames: int | None = None
    seen_line = False       # a line that is neither blank nor comment
    seen_op = False
    for line, raw in enumerate(text.split("\n"), 1):
        comment = raw.find("#")
        words = (raw if comment < 0 else raw[:comment]).split()
        if not words:
            continue
        name, args = words[0], words[1:]
        try:
            if name == "frames":
                if seen_line:
                    raise _LineError("frames must be the first line")
                frames = _parse_frames(args)
            elif name == "expect":
                expect = _parse_expect(args, processes)
                if expect.kind == "result" and not seen_op:
                    raise _LineError("expect result before any op")
                steps.append(_with_line(expect, line))
            else:
                syntax = _OP_SYNTAX.get(name)
                if syntax is None:
                    raise _LineError(f"unknown op {quote_token(name)}")
                fewest, most, parse_op = syntax
                if not fewest <= len(args) <= most:
                    raise _LineError(_arity_message(name, fewest, most, len(args)))
                steps.append(_with_line(parse_op(name, args, processes), line))
                seen_op = True
        except _LineError as error:
            raise ScriptError(path, line, error.message) from None
        seen_line = True
    return Script(path=path, frames=frames, steps=steps)


def _with_line(step: Op | Expect, line: int) -> Op | Expect:
    object.__setattr__(step, "line", line)    # frozen, and freshly made by this parser
    return step


def parse_file(path: str) -> Script:
    """Read and parse a script file; unreadable (line 0) or invalid UTF-8 is a ScriptError."""
    try:
        with open(path, "rb") as file:
            data = file.read()
    except OSError as error:
        raise ScriptError(path, 0, f"cannot read: {error.strerror or error}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        raise ScriptError(path, line, "invalid UTF-8") from None
    return parse_script(text, path)


# ---------------------------------------------------------------------------
# Printer: the inverse of the parser on valid scripts



def _format_addr(addr: int) -> str:
    return f"{addr:#x}"


def _format_length(length: int) -> str:
    """The largest of G, M, K that divides length exactly (always one for a valid length)."""
    for suffix, shift in (("G", 30), ("M", 20), ("K", 10)):
        if length > 0 and length % (1 << shift) == 0:
            return f"{length >> shift}{suffix}"
    return f"{length:#x}"


def _format_value(value: int) -> str:
    """Data words: small ones in decimal as people write them, large ones in hex."""
    return str(value) if value < 1 << 16 else f"{value:#x}"


def _need(value: int | str | None, op: Op, what: str) -> int | str:
    if value is None:
        raise ValueError(f"{op.name} op without {what}: {op!r}")
    return value


def format_op(op: Op) -> str:
    """One op as a script line (no newline); ValueError if a field it needs is missing."""
    name = op.name
    if name not in _OP_SYNTAX:
        raise ValueError(f"unknown op {name!r}")
    if name == "unpin":
        return f"unpin {_need(op.pin_id, op, 'pin_id')}"
    if name in FILE_OPS:
        words = [name, f"F{_need(op.file, op, 'file')}"]
        if name == "file":
            words.append(_format_length(int(_need(op.length, op, "length"))))
            if op.shmem:
                words.append("shmem")
        return " ".join(words)
    words = [name, f"P{_need(op.process, op, 'process')}"]
    if name in PROCESS_OPS:
        return " ".join(words)
    words.append(_format_addr(int(_need(op.addr, op, "addr"))))
    if name in RANGE_OPS:
        words.append(_format_length(int(_need(op.length, op, "length"))))
    if name == "pin":
        words.append(str(_need(op.nr_pages, op, "nr_pages")))
    if name in PROT_OPS:
        words.append(str(_need(op.prot, op, "prot")))
    if name == "mmap" and op.file is not None:
        words.append(f"file=F{op.file}")
        if op.offset:
            words.append(f"offset={_format_addr(op.offset)}")
        if op.shared:
            words.append("shared")
    if name == "wp":
        words.append(str(_need(op.mode, op, "mode")))
    if name == "read":
        if op.order:   # a read of order 0 is written without it
            words.append(f"order={op.order}")
    elif name in ORDER_OPS:
        words.append(f"order={_need(op.order, op, 'order')}")
    if name == "write":
        words.append(_format_value(int(_need(op.value, op, "value"))))
    return " ".join(words)


def _format_key(key: str, value: str | int) -> str:
    if key in _PROCESS_KEYS:
        return f"{key}=P{value}"
    if key == "file":
        return f"file={value}" if value == "none" else f"file=F{value}"
    if isinstance(value, int):
        return f"{key}={_format_value(value)}"
    return f"{key}={value}"


def format_expect(expect: Expect) -> str:
    """One expect as a script line (no newline)."""
    keys = " ".join(_format_key(key, value) for key, value in expect.keys)
    if expect.kind == "entry":
        if expect.process is None or expect.addr is None:
            raise ValueError(f"entry expect without process or addr: {expect!r}")
        return f"expect P{expect.process} {_format_addr(expect.addr)} {keys}"
    if expect.kind == "pin":
        if expect.pin_id is None:
            raise ValueError(f"pin expect without pin_id: {expect!r}")
        return f"expect pin {expect.pin_id} {keys}"
    if expect.kind == "result":
        return f"expect {keys}"
    raise ValueError(f"unknown expect kind {expect.kind!r}")


def format_script(script: Script) -> str:
    """The whole script, `frames N` first if set, one step per line, newline-terminated."""
    lines = [] if script.frames is None else [f"frames {script.frames}"]
    for step in script.steps:
        lines.append(format_op(step) if isinstance(step, Op) else format_expect(step))
    return "".join(line + "\n" for line in lines)
