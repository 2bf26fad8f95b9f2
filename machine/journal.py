"""The undo journal: exact rollback of an op that fails half-way (SPEC §1, transactional
failure), at a cost proportional to what the op wrote, not to the machine's size.

While a journal is open, every write to machine state records the old value first:
- the frame and swap arrays are swapped for JournaledArray views of themselves, which
  record every element written through them (item assignment, in-place ufuncs, `out=`
  and `ufunc.at`), so the kernels' plain `frames.folio_refcount[folio] += 1` is covered;
- page-table entries, table dictionaries and the pin table are written only by machine/,
  which records them explicitly (record_array, record_key);
- the scalars and the small containers whose size follows the script, not the machine
  (the process table, each process's counters and VMAs) are saved whole when it opens.
Rollback replays the records backwards. Nothing of it is kernel policy.
"""

from __future__ import annotations

from typing import Any

import numpy as np

_MISSING = object()


def _frozen_key(key: Any) -> Any:
    """A copy of an index that later writes to the caller's arrays cannot change."""
    if isinstance(key, np.ndarray):
        return np.array(key)
    if isinstance(key, tuple):
        return tuple(_frozen_key(part) for part in key)
    return key


def _plain(value: Any) -> Any:
    return value.view(np.ndarray) if isinstance(value, JournaledArray) else value


class Journal:
    """Old values of everything written since open(), newest last. Journals nest: each
    open() starts a level that close() keeps (into the level around it) or roll_back() undoes."""

    def __init__(self) -> None:
        self.recording = False
        self._undo: list[tuple] = []
        self._levels: list[int] = []  # where each open level's records start
        # Page-table entry arrays of tables made since the outermost open: a rollback drops
        # those tables from the tree, so their entries need no records (kept alive here).
        self._fresh: dict[int, np.ndarray] = {}

    @property
    def depth(self) -> int:
        return len(self._levels)

    def open(self) -> None:
        self._levels.append(len(self._undo))
        self.recording = True

    def close(self) -> None:
        """End the innermost level, keeping its writes (the records stay for an outer level)."""
        self._levels.pop()
        if not self._levels:
            self.recording = False
            self._undo = []
            self._fresh = {}

    def record_array(self, array: np.ndarray, key: Any) -> None:
        """Remember array[key] before it is written."""
        old = np.ndarray.__getitem__(array, key)
        if isinstance(old, np.ndarray):
            old = old.copy()  # a view (a row, a slice) would follow the write; a scalar is immutable
        if type(key) is not int:
            key = _frozen_key(key)
        self._undo.append((np.ndarray.__setitem__, array, key, old))

    def new_table(self, entries: np.ndarray) -> None:
        """A page table was made with these entries: at the outermost level, its writes
        need no records (the rollback drops the table itself)."""
        if len(self._levels) == 1:
            self._fresh[id(entries)] = entries

    def record_entries(self, entries: np.ndarray, key: Any) -> None:
        """Remember entries[key] of a page table before it is written, unless the table
        is new since the outermost open and that is the level open (an inner level's
        rollback keeps the table, so it needs the records)."""
        if len(self._levels) > 1 or id(entries) not in self._fresh:
            self.record_array(entries, key)

    def record_key(self, mapping: dict, key: Any) -> None:
        """Remember mapping[key] (or its absence) before it is set or deleted."""
        self._undo.append((_put_back_key, mapping, key, mapping.get(key, _MISSING)))

    def roll_back(self) -> None:
        """Write back every old value recorded in the innermost level, newest first, and end it."""
        start = self._levels[-1]
        recording, self.recording = self.recording, False  # the write-backs are not recorded
        for restore, container, key, old in reversed(self._undo[start:]):
            restore(container, key, old)
        del self._undo[start:]
        self.recording = recording
        self.close()

    def __len__(self) -> int:
        return len(self._undo)


def _put_back_key(mapping: dict, key: Any, old: Any) -> None:
    if old is _MISSING:
        mapping.pop(key, None)
    else:
        mapping[key] = old


class JournaledArray(np.ndarray):
    """A view of a machine array that records, in its journal, the old value of every
    element written through it (or through a view of it) while the journal records."""

    _journal: Journal | None = None

    def __array_finalize__(self, obj: Any) -> None:
        self._journal = getattr(obj, "_journal", None)

    def __setitem__(self, key: Any, value: Any) -> None:
        journal = self._journal
        if journal is not None and journal.recording:
            journal.record_array(self, key)
        np.ndarray.__setitem__(self, key, value)

    def __array_ufunc__(self, ufunc: np.ufunc, method: str, *inputs: Any, **kwargs: Any) -> Any:
        """Record what the ufunc writes (`out=` arrays whole, `ufunc.at` at its indices),
        then run it on plain arrays: results of reads are plain ndarrays."""
        out = kwargs.get("out")
        journal = self._journal
        if journal is not None and journal.recording:
            if method == "at" and isinstance(inputs[0], JournaledArray):
                journal.record_array(inputs[0], _plain(inputs[1]))
            for array in out or ():
                if isinstance(array, JournaledArray):
                    journal.record_array(array, Ellipsis)
        if out is not None:
            kwargs["out"] = tuple(_plain(array) for array in out)
        result = getattr(ufunc, method)(*(_plain(value) for value in inputs), **kwargs)
        if out is not None and method != "at":
            return out[0] if len(out) == 1 else out  # in-place operators keep the journaled view
        return result


def journaled(array: np.ndarray, journal: Journal) -> JournaledArray:
    """A JournaledArray view of array recording into journal."""
    view = array.view(JournaledArray)
    view._journal = journal
    return view


__all__ = ["Journal", "JournaledArray", "journaled"]
