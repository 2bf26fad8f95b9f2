"""The kernel interface: what an implementation provides, and the tables all callers share.

An implementation (reference/, batched/, a canary's copy of batched/, or a plug-in) is a
module, or any object, exposing `Kernel`: a class built on one `Machine` with one method
per op of SPEC §3, each returning a result code of `machine.errors`. The judge, the
engine and the bench reach an implementation only through this module: they load it
(`load_implementation`), build its `Kernel` and call an op through `OP_DISPATCH`.

The op table (`OP_ARGUMENTS`) is the one list of op names: each op with the `Op` fields
its method takes, in order. The result codes have their one home in `machine.errors`.
"""

from __future__ import annotations

import importlib
import importlib.metadata
from collections.abc import Callable
from types import ModuleType, SimpleNamespace
from typing import Any, Protocol, cast

from fuzz.errors import UsageError, quote_token
from machine import Machine
from machine.errors import RESULTS

# ---------------------------------------------------------------------------
# What an implementation provides


class Kernel(Protocol):
    """One implementation's kernel on one machine: every op of SPEC §3, returning a result
    code (`RESULT_NAMES`). Construction is `Kernel(machine)`; see `Implementation`."""

    def mmap(self, pid: int, addr: int, length: int, prot: str, file: int | None = None,
             offset: int = 0, shared: bool = False) -> str: ...
    def munmap(self, pid: int, addr: int, length: int) -> str: ...
    def dontneed(self, pid: int, addr: int, length: int) -> str: ...
    def free(self, pid: int, addr: int, length: int) -> str: ...
    def mprotect(self, pid: int, addr: int, length: int, prot: str) -> str: ...
    def fault(self, pid: int, addr: int, order: int) -> str: ...
    def write(self, pid: int, addr: int, value: int) -> str: ...
    def read(self, pid: int, addr: int, order: int = 0) -> str: ...
    def pin(self, pid: int, addr: int, nr_pages: int, mode: str) -> str: ...
    def unpin(self, pin_id: int) -> str: ...
    def fork(self, pid: int) -> str: ...
    def exit(self, pid: int) -> str: ...
    def reclaim(self, pid: int, addr: int) -> str: ...
    def try_to_unmap(self, pid: int, addr: int) -> str: ...
    def split_pmd(self, pid: int, addr: int) -> str: ...
    def split(self, pid: int, addr: int, order: int) -> str: ...
    def file(self, file: int, length: int, shmem: bool) -> str: ...
    def sync(self, file: int) -> str: ...
    def uffd(self, pid: int, addr: int, length: int) -> str: ...
    def wp(self, pid: int, addr: int, length: int, mode: str) -> str: ...


class Implementation(Protocol):
    """A loaded implementation: its `Kernel` class, called with the machine it drives."""

    @property
    def Kernel(self) -> Callable[[Machine], Kernel]: ...  # noqa: N802 - the name every implementation exports


# ---------------------------------------------------------------------------
# The op table, result codes and argument values

# Each op of SPEC §3 with the Op fields its Kernel method takes, in the method's order.
OP_ARGUMENTS: dict[str, tuple[str, ...]] = {
    "mmap": ("process", "addr", "length", "prot", "file", "offset", "shared"),
    "munmap": ("process", "addr", "length"),
    "dontneed": ("process", "addr", "length"),
    "free": ("process", "addr", "length"),
    "mprotect": ("process", "addr", "length", "prot"),
    "fault": ("process", "addr", "order"),
    "write": ("process", "addr", "value"),
    "read": ("process", "addr", "order"),
    "pin": ("process", "addr", "nr_pages", "prot"),
    "unpin": ("pin_id",),
    "fork": ("process",),
    "exit": ("process",),
    "reclaim": ("process", "addr"),
    "try_to_unmap": ("process", "addr"),
    "split_pmd": ("process", "addr"),
    "split": ("process", "addr", "order"),
    "file": ("file", "length", "shmem"),
    "sync": ("file",),
    "uffd": ("process", "addr", "length"),
    "wp": ("process", "addr", "length", "mode"),
}
OP_NAMES = tuple(OP_ARGUMENTS)
RANGE_OPS = frozenset(name for name, fields in OP_ARGUMENTS.items() if "length" in fields and "process" in fields)
FILE_OPS = frozenset(name for name, fields in OP_ARGUMENTS.items() if fields[0] == "file")
ORDER_OPS = frozenset(name for name, fields in OP_ARGUMENTS.items() if "order" in fields)
PROT_OPS = frozenset(name for name, fields in OP_ARGUMENTS.items() if "prot" in fields)
PROCESS_OPS = frozenset(name for name, fields in OP_ARGUMENTS.items() if fields == ("process",))
RESULT_NAMES = RESULTS
PROTS = ("rw", "ro")   # an mmap's and mprotect's prot, a pin's mode
WP_MODES = ("on", "off")  # a wp op's mode: UFFDIO_WRITEPROTECT_MODE_WP set or clear
DEFAULT_PROT = "rw"    # an mmap without prot
DEFAULT_ORDER = 0      # a fault without order=

# One call per op: the Kernel method named like the op, with the op's fields (OP_ARGUMENTS).
# op is a fuzz.script.ops.Op; a lambda each, as this is the fuzz loop's hottest dispatch.
OP_DISPATCH: dict[str, Callable[[Kernel, Any], str]] = {
    "mmap": lambda kernel, op: (kernel.mmap(op.process, op.addr, op.length, op.prot or DEFAULT_PROT)
                                if op.file is None else
                                kernel.mmap(op.process, op.addr, op.length, op.prot or DEFAULT_PROT,
                                            op.file, op.offset or 0, op.shared)),
    "munmap": lambda kernel, op: kernel.munmap(op.process, op.addr, op.length),
    "dontneed": lambda kernel, op: kernel.dontneed(op.process, op.addr, op.length),
    "free": lambda kernel, op: kernel.free(op.process, op.addr, op.length),
    "mprotect": lambda kernel, op: kernel.mprotect(op.process, op.addr, op.length, op.prot),
    "fault": lambda kernel, op: kernel.fault(op.process, op.addr, op.order or DEFAULT_ORDER),
    "write": lambda kernel, op: kernel.write(op.process, op.addr, op.value),
    "read": lambda kernel, op: (kernel.read(op.process, op.addr) if not op.order
                                else kernel.read(op.process, op.addr, op.order)),
    "pin": lambda kernel, op: kernel.pin(op.process, op.addr, op.nr_pages, op.prot),
    "unpin": lambda kernel, op: kernel.unpin(op.pin_id),
    "fork": lambda kernel, op: kernel.fork(op.process),
    "exit": lambda kernel, op: kernel.exit(op.process),
    "reclaim": lambda kernel, op: kernel.reclaim(op.process, op.addr),
    "try_to_unmap": lambda kernel, op: kernel.try_to_unmap(op.process, op.addr),
    "split_pmd": lambda kernel, op: kernel.split_pmd(op.process, op.addr),
    "split": lambda kernel, op: kernel.split(op.process, op.addr, op.order),
    "file": lambda kernel, op: kernel.file(op.file, op.length, op.shmem),
    "sync": lambda kernel, op: kernel.sync(op.file),
    "uffd": lambda kernel, op: kernel.uffd(op.process, op.addr, op.length),
    "wp": lambda kernel, op: kernel.wp(op.process, op.addr, op.length, op.mode),
}

# ---------------------------------------------------------------------------
# Loading an implementation

ENTRY_POINT_GROUP = "rmapfuzz.implementations"
BUILTIN_IMPLEMENTATIONS = {"reference": "reference", "batched": "batched", "kernel-c": "kernelc"}
REFERENCE_IMPL = "reference"
DEFAULT_IMPL = "batched"   # the implementation under test unless a command says otherwise


def load_implementation(name: str) -> Implementation:
    """The implementation called name: a module (or object) exposing `Kernel`.

    "reference" and "batched" are the project's packages; any other name is
    first an entry point in the group `rmapfuzz.implementations`, else a
    module path. Raises UsageError if it cannot be loaded or has no Kernel.
    """
    if not name:
        raise UsageError("empty implementation name")
    loaded: object = _load_builtin(name) if name in BUILTIN_IMPLEMENTATIONS else None
    if loaded is None:
        loaded = _load_entry_point(name)
    if loaded is None:
        loaded = _load_module(name)
    if isinstance(loaded, type):       # an entry point may name the Kernel class itself
        loaded = SimpleNamespace(Kernel=loaded, __name__=name)
    return checked_implementation(loaded, quote_token(name))


def checked_implementation(loaded: object, what: str) -> Implementation:
    """loaded as an Implementation; UsageError naming it as what if it has no callable Kernel."""
    if not callable(getattr(loaded, "Kernel", None)):
        raise UsageError(f"implementation {what} does not expose a Kernel class")
    return cast(Implementation, loaded)


def _load_builtin(name: str) -> ModuleType:
    try:
        return importlib.import_module(BUILTIN_IMPLEMENTATIONS[name])
    except Exception as error:
        raise UsageError(f"cannot load implementation {quote_token(name)}: {_one_line(error)}") from error


def _load_entry_point(name: str) -> object | None:
    for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if entry_point.name == name:
            try:
                return entry_point.load()
            except Exception as error:
                raise UsageError(f"cannot load implementation {quote_token(name)} "
                                 f"(entry point {entry_point.value}): {_one_line(error)}") from error
    return None


def _load_module(name: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as error:
        if error.name is not None and name.startswith(error.name) and name[len(error.name):][:1] in ("", "."):
            raise UsageError(f"unknown implementation {quote_token(name)}: not a module or an entry point "
                             f"in {ENTRY_POINT_GROUP}") from error
        raise UsageError(f"cannot load implementation {quote_token(name)}: {_one_line(error)}") from error
    except Exception as error:
        raise UsageError(f"cannot load implementation {quote_token(name)}: {_one_line(error)}") from error


def _one_line(error: BaseException) -> str:
    return " ".join(f"{type(error).__name__}: {error}".split())


def reference_kernel(nr_frames: int) -> tuple[Machine, Kernel]:
    """A fresh machine of nr_frames frames and the reference's kernel on it."""
    machine = Machine(nr_frames)
    return machine, load_implementation(REFERENCE_IMPL).Kernel(machine)
