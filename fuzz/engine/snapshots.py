"""Resuming a fuzzer input from a snapshot of an earlier one (issue 16).

The decoder reads an input's choices from its end, one op after another, each drawn
against the reference machine after the ops before. So two inputs that end with the same
bytes draw the same first ops, as far as those bytes go, and reach the same states after
them: an input run after one that ends like it may start from the state the earlier one
had after those ops, instead of from its first op.

`SnapshotCache` keeps those states (`RunPoint`): everything a stream run carries from one
op to the next, copied (`copy_state`): both machines with their kernels, both shadows, the
run's results, and the decoder itself (its stream, script and grammar). A point after an
op is keyed by the bytes the decoder had consumed then; the key of an input is looked up
from its longest such suffix down. A point is valid only where none of the decoder's reads
found fewer bytes than it reads (`ByteChoices.short`), and only after an op that read a byte:
an op that reads none (the rest of an act, `OpGrammar.pending`) leaves the key as it was, and
an input that is just that key ends before it (the decoder stops when no byte is left). So a
key always stands for one state, and the same suffix draws the same ops, also where it was
all of an input.

Copies cost time (about an op's worth): a run's last state is kept as it is, without a
copy, once the run ends (`RunCapture`); the state before its last op is copied as that op
is drawn (the mutations change an input's late ops most, fuzz.engine.mutator); elsewhere a
point is taken only once the run has done enough work since the last one (`CAPTURE_FACTOR`
times what a copy costs, measured as it goes). An input resumes only from a point that
saves more than its copy costs. The cache holds at most `budget` bytes (what its copies'
arrays and objects take, estimated), the least recently used point going first.

`copy_state` is generic: it copies every numpy array, container and plain object it
reaches (a frozen dataclass and the immutable builtins are shared), so new machine state
is covered without a list to update; it refuses what it cannot copy exactly
(`SnapshotError`), and the session then runs every input from its first op.
"""

from __future__ import annotations

import dataclasses
import sys
import time
import types
from collections import Counter, OrderedDict, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fuzz.engine.decode import MAX_OPS, OpStream
from machine.machine import Machine
from machine.pgtable import PAGE_SIZE

DEFAULT_BUDGET = 256 << 20     # bytes of copies kept (the issue allows up to 1 GiB): see the README
# Work between points (besides RunCapture's last two), in copies' costs: copying stays under
# a quarter of the work; 4 measured 1.08x in the campaign A/B, 2 0.83x (see the README).
CAPTURE_FACTOR = 4.0
# Bytes left to read under which RunCapture copies the decoder after an op, to keep the state
# there if the next op is the input's last (more than an op reads): the mutations resume from
# an input's last points most (fuzz.engine.mutator, harness).
TAIL_BYTES = 24
OBJECT_BYTES = 64              # what one copied Python object is counted as, beside its arrays
# Classes whose instances copy_state shares: the immutable builtins, and each frozen
# dataclass and numpy scalar type as _handler meets it.
_IMMUTABLE = {int, float, bool, str, bytes, complex, type(None), range, type,
              types.FunctionType, types.BuiltinFunctionType, types.ModuleType, types.MethodType}


class SnapshotError(Exception):
    """A value copy_state cannot copy exactly (a handle, a lock, a C object)."""


@dataclass
class CopyStats:
    """What a copy reached: its arrays' bytes and how many other objects."""

    nbytes: int = 0
    objects: int = 0

    @property
    def size(self) -> int:
        """The copy's size as the cache counts it."""
        return self.nbytes + self.objects * OBJECT_BYTES


_SLOTS: dict[type, tuple[str, ...]] = {}
_PYTHON_CLASSES: dict[type, bool] = {}


def _python_class(cls: type) -> bool:
    """Whether cls and its bases (but object) are all written in Python: only then are its
    instances' state their attributes, which copy_state copies."""
    known = _PYTHON_CLASSES.get(cls)
    if known is None:
        files = [getattr(sys.modules.get(klass.__module__), "__file__", None) or "" for klass in cls.__mro__[:-1]]
        known = _PYTHON_CLASSES[cls] = all(file.endswith(".py") for file in files)
    return known


def _slots(cls: type) -> tuple[str, ...]:
    """The slot names of cls and its bases."""
    slots = _SLOTS.get(cls)
    if slots is None:
        slots = tuple(name for klass in cls.__mro__ for name in getattr(klass, "__slots__", ())
                      if name not in ("__dict__", "__weakref__"))
        _SLOTS[cls] = slots
    return slots


def _placed_copy(value: np.ndarray) -> np.ndarray:
    """A copy of a view (a page-table page cut out of a larger buffer to sit where it must)
    at the same offset within a page as value's data: code may read an entry's place from
    its address (arm64's pte_batch_hint; kernel-c wants a page-aligned table)."""
    offset = value.__array_interface__["data"][0] % PAGE_SIZE
    buffer = np.empty(value.nbytes + PAGE_SIZE, np.uint8)
    skip = (offset - buffer.__array_interface__["data"][0]) % PAGE_SIZE
    copied = buffer[skip:skip + value.nbytes].view(value.dtype).reshape(value.shape)
    copied[...] = value
    return copied


def copy_state(value: Any, memo: dict[int, Any] | None = None, stats: CopyStats | None = None) -> Any:
    """An exact, independent copy of value: numpy arrays copied, dicts (in their order),
    lists, sets, tuples and plain objects copied through, shared references kept shared
    (memo); immutable values and frozen dataclasses shared. Raises SnapshotError for a
    value it cannot copy (an object of a C type, a generator, a lock, ...)."""
    return _Copier(memo if memo is not None else {}, stats or CopyStats()).copy(value)


class _Copier:
    """One copy_state call: the memo and the handler of each class met (_handler)."""

    def __init__(self, memo: dict[int, Any], stats: CopyStats) -> None:
        self.memo = memo
        self.stats = stats

    def copy(self, value: Any) -> Any:
        cls = value.__class__
        if cls in _IMMUTABLE:
            return value
        found = self.memo.get(id(value))
        if found is not None:
            return found
        handler = _HANDLERS.get(cls) or _handler(cls)
        copied = handler(self, value)
        self.memo[id(value)] = copied
        return copied

    def _dict(self, value: dict) -> dict:
        self.stats.objects += 1
        copy = self.copy
        return {key: item if item.__class__ in _IMMUTABLE else copy(item) for key, item in value.items()}

    def _list(self, value: list) -> list:
        self.stats.objects += 1
        copy = self.copy
        return [item if item.__class__ in _IMMUTABLE else copy(item) for item in value]

    def _tuple(self, value: tuple) -> tuple:
        """A tuple (a named tuple too): itself if its items need no copy."""
        if all(item.__class__ in _IMMUTABLE for item in value):
            return value
        items = [self.copy(item) for item in value]
        if all(item is old for item, old in zip(items, value, strict=True)):
            return value
        self.stats.objects += 1
        return value._make(items) if hasattr(value, "_make") else value.__class__(items)

    def _set(self, value: set | frozenset) -> set | frozenset:
        self.stats.objects += 1
        return value.__class__(self.copy(item) for item in value)

    def _mapping(self, value: Any) -> Any:
        """An OrderedDict, a Counter or a defaultdict, of its class."""
        self.stats.objects += 1
        items = {key: self.copy(item) for key, item in value.items()}
        if isinstance(value, defaultdict):
            return defaultdict(value.default_factory, items)
        return value.__class__(items)

    def _array(self, value: np.ndarray) -> np.ndarray:
        copied = value.copy() if value.base is None else _placed_copy(value)
        self.stats.nbytes += copied.nbytes if copied.base is None else copied.base.nbytes
        if type(value) is not np.ndarray:   # a subclass (a journaled view): its attributes too
            for name, item in vars(value).items():
                setattr(copied, name, self.copy(item))
        return copied

    def _complete(self, value: Any, copied: Any) -> None:
        """copied, a clone of value, given the attributes its clone method does not know (state
        added since) copied the generic way, in value's order: so a clone method that lags
        behind the state costs speed, never exactness."""
        made = vars(copied)
        if made.keys() != vars(value).keys():
            copied.__dict__ = {name: made[name] if name in made else self.copy(item)
                               for name, item in vars(value).items()}

    def _shared(self, value: Any) -> Any:
        return value

    def _machine(self, value: Machine) -> Machine:
        """A machine between two ops: its own deep copy (Machine.snapshot, the copy a
        transaction's rollback restores exactly), a third of the walk's cost, completed where
        the clone methods leave out newer state (_complete); its size counted as the walk's."""
        copied = value.snapshot()
        self._complete(value, copied)
        self._complete(value.frames, copied.frames)
        self._complete(value.swap, copied.swap)
        for mm, mm_copy in zip(value.processes.values(), copied.processes.values(), strict=True):
            self._complete(mm, mm_copy)
            for vma, vma_copy in zip(mm.vmas, mm_copy.vmas, strict=True):
                self._complete(vma, vma_copy)
        nbytes, objects = machine_size(copied)
        self.stats.nbytes += nbytes
        self.stats.objects += objects
        return copied

    def _object(self, value: Any) -> Any:
        """A plain object: a new one of its class with each slot and __dict__ entry copied."""
        self.stats.objects += 1
        cls = value.__class__
        copied: Any = object.__new__(cls)
        self.memo[id(value)] = copied   # before its attributes: they may refer back to it
        copy = self.copy
        for name in _slots(cls):
            if hasattr(value, name):
                item = getattr(value, name)
                object.__setattr__(copied, name, item if item.__class__ in _IMMUTABLE else copy(item))
        attributes = getattr(value, "__dict__", None)
        if attributes:
            copied.__dict__.update({name: item if item.__class__ in _IMMUTABLE else copy(item)
                                    for name, item in attributes.items()})
        return copied


def _refuse(cls: type) -> Callable[[_Copier, Any], Any]:
    def refuse(_copier: _Copier, _value: Any) -> Any:
        raise SnapshotError(f"cannot copy a {cls.__module__}.{cls.__qualname__}")
    return refuse


_HANDLERS: dict[type, Callable[[_Copier, Any], Any]] = {
    dict: _Copier._dict, list: _Copier._list, tuple: _Copier._tuple, set: _Copier._set, frozenset: _Copier._set,
    OrderedDict: _Copier._mapping, Counter: _Copier._mapping, defaultdict: _Copier._mapping,
    np.ndarray: _Copier._array, Machine: _Copier._machine,
}


def machine_size(machine: Machine) -> tuple[int, int]:
    """The bytes of machine's arrays (each page-table page in its aligned buffer) and the
    number of its other objects: what the walk would count of it (CopyStats)."""
    frames, swap = machine.frames, machine.swap
    nbytes = sum(getattr(frames, name).nbytes for name in frames.ARRAYS) + frames.block_nr_free.nbytes
    nbytes += swap.swap_data.nbytes + swap.swap_count.nbytes + swap.swap_cache.nbytes + swap.swap_zeromap.nbytes
    objects = 4 + len(machine.pins) + len(machine.files)
    for mm in machine.processes.values():
        pmd_tables = mm.pmd_tables_by_addr.values()
        nbytes += sum(table.entries.nbytes for table in pmd_tables) + 2 * PAGE_SIZE * len(mm.pte_tables)
        objects += 5 + len(mm.vmas) + len(pmd_tables) + len(mm.pte_tables)
    return nbytes, objects


def _handler(cls: type) -> Callable[[_Copier, Any], Any]:
    """How copy_state copies an instance of cls (found once per class)."""
    params = getattr(cls, "__dataclass_params__", None)
    handler: Callable[[_Copier, Any], Any]
    if issubclass(cls, np.ndarray):
        handler = _Copier._array
    elif issubclass(cls, np.generic) or (params is not None and params.frozen):
        handler = _Copier._shared
        _IMMUTABLE.add(cls)
    elif issubclass(cls, tuple):
        handler = _Copier._tuple
    elif issubclass(cls, (dict, list, set)) or not _python_class(cls):
        handler = _refuse(cls)
    else:
        handler = _Copier._object
    _HANDLERS[cls] = handler
    return handler


# ---------------------------------------------------------------------------
# Points and the cache


@dataclass
class RunPoint:
    """The state of a stream run after some ops: the decoder's stream and what the runner
    carries (runner.Carried), kept as copies; consumed: the input bytes read so far (from
    its end); work: the seconds the kernels and the decoder took to reach it."""

    consumed: int
    nr_ops: int
    stream: OpStream
    carried: Any
    work: float
    size: int


@dataclass
class SnapshotStats:
    """Counts of one cache: inputs looked up, those resumed and the ops their points
    saved, points taken and dropped, and the seconds spent copying."""

    lookups: int = 0
    resumed: int = 0
    resumed_ops: int = 0
    points: int = 0
    evicted: int = 0
    copy_seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class SnapshotCache:
    """The points of the inputs run lately, by the input suffix each was reached with,
    least recently used first; at most budget bytes."""

    budget: int = DEFAULT_BUDGET
    points: OrderedDict[bytes, RunPoint] = field(default_factory=OrderedDict)
    lengths: Counter[int] = field(default_factory=Counter)   # how many points have each key length
    size: int = 0
    copy_cost: float = 1e-4     # seconds per copy, a running mean
    point_size: float = 1 << 20   # bytes per copy (CopyStats.size), a running mean
    thrifty: bool = True        # False: a point after every op, any point used (the equivalence check's)
    stats: SnapshotStats = field(default_factory=SnapshotStats)

    def lookup(self, data: bytes) -> RunPoint | None:
        """The point reached with the longest suffix of data, if it saves more than a copy costs."""
        self.stats.lookups += 1
        for length in sorted(self.lengths, reverse=True):
            if length > len(data):
                continue
            point = self.points.get(data[len(data) - length:])
            if point is not None:
                self.points.move_to_end(point_key(data, length))
                return point if point.work > self.copy_cost or not self.thrifty else None
        return None

    def resume(self, point: RunPoint, data: bytes) -> tuple[OpStream, Any]:
        """A copy of point's stream, reading data, and of what the runner carries."""
        started = time.perf_counter()
        stream, carried = copy_state((point.stream, point.carried))
        stream.choices.data = data
        stream.choices.remaining = len(data) - point.consumed
        self._copied(time.perf_counter() - started)
        self.stats.resumed += 1
        self.stats.resumed_ops += point.nr_ops
        return stream, carried

    def wants(self, work_since: float) -> bool:
        """Whether a point is worth taking after work_since seconds of work since the last one
        (besides those RunCapture takes near the end of an input)."""
        return work_since >= CAPTURE_FACTOR * self.copy_cost or not self.thrifty

    def points_of(self, data: bytes) -> list[tuple[int, int]]:
        """(bytes kept, ops run) of each point the cache holds for a suffix of data."""
        return [(length, self.points[point_key(data, length)].nr_ops) for length in self.suffixes(data)]

    def suffixes(self, data: bytes) -> list[int]:
        """The lengths of the suffixes of data the cache holds a point for, longest first:
        where data's ops may change and a run still resume."""
        return [length for length in sorted(self.lengths, reverse=True)
                if length <= len(data) and point_key(data, length) in self.points]

    def capture(self, data: bytes, stream: OpStream, carried: Any, nr_ops: int, work: float,
                stream_copied: bool = False) -> None:
        """Keep a copy of the state after nr_ops ops of data (stream, unless stream_copied
        says it is a copy already, and carried), unless a choice of the decoder's found fewer
        bytes than it reads (a longer input would read on there) or no op can follow (MAX_OPS)."""
        key = self._new_key(data, stream, nr_ops)
        if key is None:
            return
        started = time.perf_counter()
        stats = CopyStats()
        if stream_copied:
            copy_carried = copy_state(carried, None, stats)
        else:
            stream, copy_carried = copy_state((stream, carried), None, stats)
        self._copied(time.perf_counter() - started)
        self.point_size += (stats.size - self.point_size) / 16
        self._add(key, RunPoint(len(key), nr_ops, stream, copy_carried, work, stats.size + len(key)))

    def keep(self, data: bytes, stream: OpStream, carried: Any, nr_ops: int, work: float) -> None:
        """Keep the state a run ended with as a point, without copying it: carried is no one
        else's any more (the run is over and its final checks only read it); stream, a copy
        of the decoder as it was after its last op (copy_stream)."""
        key = self._new_key(data, stream, nr_ops)
        if key is not None:   # its size is not counted (as long as a copy): the copies' mean
            self._add(key, RunPoint(len(key), nr_ops, stream, carried, work, int(self.point_size) + len(key)))

    def copy_stream(self, stream: OpStream) -> OpStream:
        """A copy of stream (for keep), timed as the cache's copies but not counted in copy_cost."""
        started = time.perf_counter()
        copied = copy_state(stream)
        self.stats.copy_seconds += time.perf_counter() - started
        return copied

    def _new_key(self, data: bytes, stream: OpStream, nr_ops: int) -> bytes | None:
        """The key of the state after nr_ops ops of data, if a point there is valid and new."""
        if stream.choices.short or nr_ops >= MAX_OPS:
            return None
        key = point_key(data, len(data) - stream.choices.remaining)
        if key in self.points:
            self.points.move_to_end(key)
            return None
        return key

    def _add(self, key: bytes, point: RunPoint) -> None:
        self.points[key] = point
        self.lengths[len(key)] += 1
        self.size += point.size
        self.stats.points += 1
        while self.size > self.budget and len(self.points) > 1:   # the newest stays
            self._evict()

    def _evict(self) -> None:
        key, point = self.points.popitem(last=False)
        self.lengths[len(key)] -= 1
        if not self.lengths[len(key)]:
            del self.lengths[len(key)]
        self.size -= point.size
        self.stats.evicted += 1

    def _copied(self, seconds: float) -> None:
        self.stats.copy_seconds += seconds
        self.copy_cost += (seconds - self.copy_cost) / 16


class RunCapture:
    """The points one run leaves in the cache: its state after its last op, taken over
    without a copy once the run ends; after the op before that, copied as the last op is
    drawn (the decoder's stream copied after each op within TAIL_BYTES of the input's start,
    the rest before that op runs); and elsewhere as the cache wants (copy_cost). None after
    an op that read no byte (see the module's doc)."""

    def __init__(self, cache: SnapshotCache, data: bytes, stream: OpStream, base_work: float) -> None:
        """stream: the run's decoder, resumed after base_work seconds of work, or new (0)."""
        self.cache = cache
        self.data = data
        self.stream = stream
        self.base_work = base_work
        self.last_capture = 0.0
        self.drawing_seconds = 0.0   # of copies made in next_op, which the runner times as the decoder's
        self.before: tuple[OpStream, Any, float] | None = None   # after the latest op, till the next is drawn
        self.unread = stream.choices.remaining   # the bytes left to read as the latest op was drawn

    def after_op(self, carried: Any, work: float) -> None:
        """The runner's after_op: carried after an op, work seconds into the run."""
        stream, cache = self.stream, self.cache
        self.before = None
        nr_ops = len(stream.script.steps)
        if stream.choices.short or nr_ops >= MAX_OPS:   # no longer input goes on from here
            return
        if stream.choices.remaining == self.unread:   # the op read no byte: its key is the state's before it
            return
        if stream.choices.remaining <= TAIL_BYTES or nr_ops == MAX_OPS - 1:
            self.before = (cache.copy_stream(stream), carried, self.base_work + work)
        elif cache.wants(work - self.last_capture):
            self.last_capture = work
            cache.capture(self.data, stream, carried, carried.ops_run, self.base_work + work)

    def next_op(self, machine: Any) -> Any:
        """The runner's next_op: the stream's, and the state after the op before it kept if
        it is the input's last (nothing of the run has changed since after_op)."""
        self.unread = self.stream.choices.remaining
        op = self.stream.next_op(machine)
        before, self.before = self.before, None
        if before is None:
            return op
        stream, carried, work = before
        if op is None:   # the end: what after_op saw is what the run ended with
            self.before = before
        elif self.stream.choices.remaining == 0 or len(self.stream.script.steps) == MAX_OPS - 1:
            started = time.perf_counter()
            self.cache.capture(self.data, stream, carried, carried.ops_run, work, stream_copied=True)
            self.drawing_seconds += time.perf_counter() - started
        return op

    def ended(self) -> None:
        """The run ended without a finding: its last state becomes a point as it is."""
        if self.before is not None:
            stream, carried, work = self.before
            self.cache.keep(self.data, stream, carried, carried.ops_run, work)


def point_key(data: bytes, consumed: int) -> bytes:
    """The key of the state reached after reading data's last consumed bytes."""
    return data[len(data) - consumed:]


__all__ = ["CAPTURE_FACTOR", "DEFAULT_BUDGET", "TAIL_BYTES", "CopyStats", "RunCapture", "RunPoint", "SnapshotCache",
           "SnapshotError", "SnapshotStats", "copy_state", "point_key"]
