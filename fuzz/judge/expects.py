"""Checking `expect` lines against a machine (SPEC §4).

An entry expect looks up the leaf mapping (P, va): `state` is none, swap or
present. `value` and `state` apply to every state, `exclusive` to present and
swap entries, every other key only to present entries (`cont` only at pte
level), `same-page`/`distinct-page` need present entries in both processes.
A key that does not apply to the state found fails. Values come in already
normalised by the parser: "yes"/"no", lowercase words, ints, process numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

from fuzz.script.ops import Expect
from machine import FREE_FOLIO, Machine, Pin
from machine.mm import MM
from machine.pgtable import (
    PAGE_SHIFT,
    PAGE_SIZE,
    PMD_SIZE,
    is_pte_marker,
    is_swap_pte,
    pmd_pte,
    pte_cont,
    pte_dirty,
    pte_marker_uffd_wp,
    pte_pfn,
    pte_present,
    pte_special,
    pte_swp_exclusive,
    pte_swp_offset,
    pte_swp_uffd_wp,
    pte_uffd_wp,
    pte_write,
    pte_young,
)

GUP_PIN_COUNTING_BIAS = 1024   # refs a pin takes on a small folio (include/linux/mm.h)


@dataclass(frozen=True)
class ExpectFailure:
    """One key of an expect that does not hold, with a readable message."""

    key: str
    message: str


class _KeyFails(Exception):
    """The key cannot be evaluated here (not applicable, bad frame): message says why."""


def _yes_no(flag: object) -> str:
    return "yes" if flag else "no"


def check_expect(machine: Machine, expect: Expect, last_result: str | None) -> list[str]:
    """Failure messages of expect on machine; [] when it holds.

    last_result is the result of the previous op (None before any op).
    """
    return [failure.message for failure in expect_failures(machine, expect, last_result)]


def expect_failures(machine: Machine, expect: Expect, last_result: str | None) -> list[ExpectFailure]:
    """As check_expect, with the key each failure is about."""
    if expect.kind == "result":
        return _result_failures(expect, last_result)
    if expect.kind == "pin":
        if expect.pin_id is None:
            raise ValueError(f"pin expect without pin_id: {expect!r}")
        return _key_failures(f"pin {expect.pin_id}", expect, _PinFacts(machine, expect.pin_id))
    if expect.kind == "entry":
        if expect.process is None or expect.addr is None:
            raise ValueError(f"entry expect without process or addr: {expect!r}")
        where = f"P{expect.process} {expect.addr:#x}"
        mm = machine.processes.get(expect.process)
        if mm is None:
            return [ExpectFailure(key, f"{where}: {key}: P{expect.process} does not exist")
                    for key, _ in expect.keys]
        return _key_failures(where, expect, _EntryFacts(machine, mm, expect.addr))
    raise ValueError(f"unknown expect kind {expect.kind!r}")


def _result_failures(expect: Expect, last_result: str | None) -> list[ExpectFailure]:
    failures = []
    for key, want in expect.keys:
        if last_result is None:
            failures.append(ExpectFailure(key, f"{key}: expected {want}, but no op has run"))
        elif last_result != want:
            failures.append(ExpectFailure(key, f"{key}: expected {want}, got {last_result}"))
    return failures


def _key_failures(where: str, expect: Expect, facts: _EntryFacts | _PinFacts) -> list[ExpectFailure]:
    failures = []
    for key, want in expect.keys:
        try:
            got = facts.get(key, want)
        except _KeyFails as reason:
            failures.append(ExpectFailure(key, f"{where}: {key}={_shown(key, want)}: {reason}"))
            continue
        if got != want:
            failures.append(ExpectFailure(
                key, f"{where}: {key}: expected {_shown(key, want)}, got {_shown(key, got)}"))
    return failures


def _shown(key: str, value: str | int) -> str:
    if key in ("same-page", "distinct-page") and isinstance(value, int):
        return f"P{value}"
    return str(value)


class _EntryFacts:
    """What the leaf mapping (mm, addr) shows, computed key by key."""

    def __init__(self, machine: Machine, mm: MM, addr: int) -> None:
        self.machine = machine
        self.mm = mm
        self.addr = addr
        self.level, self.desc = machine.lookup(mm, addr)
        if pte_present(self.desc) and pte_special(self.desc) and machine.frames.is_zero_pfn(int(pte_pfn(self.desc))):
            self.state = "zero"    # the shared zero page (a special PTE) or the huge zero folio
        elif pte_present(self.desc):
            self.state = "present"
        elif is_swap_pte(self.desc):
            self.state = "swap"
        else:
            self.state = "none"
        # A PTE marker is none to every key but marker and uffd-wp (pagemap: neither present nor swapped).
        self.marker = bool(is_pte_marker(self.desc)) and self.level == "pte"
        if self.marker:
            self.state = "none"
        # The PMD block in PTE format, so the pte_* helpers read it (SPEC §2.2).
        self.pte = pmd_pte(self.desc) if self.level == "pmd" else self.desc

    def get(self, key: str, want: str | int) -> str | int:
        return getattr(self, "_" + key.replace("-", "_"))(want)

    # Shared evaluation.

    def _need(self, *states: str) -> None:
        if self.state not in states:
            raise _KeyFails(f"does not apply to {self._state_phrase()}")

    def _state_phrase(self) -> str:
        return {"present": "a present entry", "swap": "a swap entry", "none": "an empty entry",
                "zero": "the zero page"}[self.state]

    def _page(self) -> int:
        """The pfn mapped at addr; for a PMD block head + (addr % 2M) >> 12."""
        page = int(pte_pfn(self.pte))
        if self.level == "pmd":
            page += (self.addr % PMD_SIZE) >> PAGE_SHIFT
        if page >= self.machine.frames.nr_frames:
            raise _KeyFails(f"maps pfn {page}, beyond the {self.machine.frames.nr_frames} frames")
        return page

    def _folio(self) -> int:
        page = self._page()
        folio = int(self.machine.frames.page_folio[page])
        if folio == FREE_FOLIO:
            raise _KeyFails(f"maps pfn {page}, which is free")
        return folio

    def _slot(self) -> int:
        slot = int(pte_swp_offset(self.desc))
        if slot >= self.machine.swap.nr_slots:
            raise _KeyFails(f"references swap slot {slot}, beyond the {self.machine.swap.nr_slots} slots")
        return slot

    # One method per key.

    def _state(self, want: str | int) -> str:
        return self.state

    def _value(self, want: str | int) -> int:
        if self.state == "present":
            return int(self.machine.frames.page_data[self._page()])
        if self.state == "swap":
            return int(self.machine.swap.swap_data[self._slot()])
        if self.state == "zero":
            page = int(pte_pfn(self.pte)) + ((self.addr % PMD_SIZE) >> PAGE_SHIFT if self.level == "pmd" else 0)
            return int(self.machine.frames.page_data[page])
        return 0

    def _exclusive(self, want: str | int) -> str:
        self._need("present", "swap")
        if self.state == "swap":
            return _yes_no(pte_swp_exclusive(self.desc))
        # PageAnonExclusive of the page; of the head (the PMD's pfn) for a PMD map.
        page = int(pte_pfn(self.pte)) if self.level == "pmd" else self._page()
        if page >= self.machine.frames.nr_frames:
            raise _KeyFails(f"maps pfn {page}, beyond the {self.machine.frames.nr_frames} frames")
        return _yes_no(self.machine.frames.page_anon_exclusive[page])

    def _writable(self, want: str | int) -> str:
        self._need("present", "zero")
        return _yes_no(pte_write(self.pte))

    def _dirty(self, want: str | int) -> str:
        self._need("present", "zero")
        return _yes_no(pte_dirty(self.pte))

    def _young(self, want: str | int) -> str:
        self._need("present", "zero")
        return _yes_no(pte_young(self.pte))

    def _level(self, want: str | int) -> str:
        self._need("present", "zero")
        return self.level

    def _cont(self, want: str | int) -> str:
        self._need("present", "zero")
        if self.level != "pte":
            raise _KeyFails("does not apply at pmd level")
        return _yes_no(pte_cont(self.pte))

    def _order(self, want: str | int) -> int:
        self._need("present")
        return int(self.machine.frames.folio_order[self._folio()])

    def _mapcount(self, want: str | int) -> int:
        """page_mapcount of the page plus folio_entire_mapcount of its folio."""
        self._need("present")
        frames = self.machine.frames
        folio = self._folio()
        return int(frames.page_mapcount[self._page()]) + int(frames.folio_entire_mapcount[folio])

    def _shared(self, want: str | int) -> str:
        """folio_maybe_mapped_shared: the MM_ID bit for a large folio, mapcount > 1 for a small one."""
        self._need("present")
        frames = self.machine.frames
        folio = self._folio()
        if frames.folio_order[folio] > 0:
            return _yes_no(frames.folio_mm_ids_shared[folio])
        mapcount = int(frames.page_mapcount[folio]) + int(frames.folio_entire_mapcount[folio])
        return _yes_no(mapcount > 1)

    def _pinned(self, want: str | int) -> str:
        """folio_maybe_dma_pinned: _pincount for a large folio, refcount >= 1024 for a small one."""
        self._need("present")
        frames = self.machine.frames
        folio = self._folio()
        if frames.folio_order[folio] > 0:
            return _yes_no(frames.folio_pincount[folio] > 0)
        return _yes_no(frames.folio_refcount[folio] >= GUP_PIN_COUNTING_BIAS)

    def _lazyfree(self, want: str | int) -> str:
        """folio_test_lazyfree: an anon folio without PG_swapbacked (MADV_FREE)."""
        self._need("present")
        frames = self.machine.frames
        folio = self._folio()
        return _yes_no(frames.folio_anon[folio] and not frames.folio_swapbacked[folio])

    def _folio_dirty(self, want: str | int) -> str:
        """PG_dirty of the folio (not the entry's dirty bit: that is `dirty`)."""
        self._need("present")
        return _yes_no(self.machine.frames.folio_dirty[self._folio()])

    def _file(self, want: str | int) -> str | int:
        """folio->mapping: the file (n of Fn) whose page cache holds the folio, "none" for anon."""
        self._need("present")
        mapping = int(self.machine.frames.folio_mapping[self._folio()])
        return mapping - 1 if mapping else "none"

    def _uffd_wp(self, want: str | int) -> str:
        """The uffd-wp bit: pte_uffd_wp of a present or zero-page entry (PTE or PMD), pte_swp_uffd_wp of a
        swap entry, PTE_MARKER_UFFD_WP of a marker."""
        if self.marker:
            return _yes_no(pte_marker_uffd_wp(self.desc))
        self._need("present", "swap", "zero")
        if self.state in ("present", "zero"):   # a zero page's entry carries the bit too
            return _yes_no(pte_uffd_wp(self.pte))
        return _yes_no(pte_swp_uffd_wp(self.desc))

    def _marker(self, want: str | int) -> str:
        """A PTE marker (swap type SWP_PTE_MARKER) and nothing else, whatever its bits."""
        return _yes_no(self.marker)

    def _same_page(self, want: str | int) -> int:
        page, other_page = self._page_pair(int(want))
        if other_page != page:
            raise _KeyFails(f"P{want} maps pfn {other_page}, P{self.mm.pid} pfn {page}")
        return int(want)

    def _distinct_page(self, want: str | int) -> int:
        page, other_page = self._page_pair(int(want))
        if other_page == page:
            raise _KeyFails(f"P{want} maps the same pfn {page}")
        return int(want)

    def _page_pair(self, pid: int) -> tuple[int, int]:
        """(this entry's pfn, the pfn process pid maps at the same address); both present."""
        self._need("present")
        mm = self.machine.processes.get(pid)
        if mm is None:
            raise _KeyFails(f"P{pid} does not exist")
        other_page = self.machine.page_at(mm, self.addr)
        if other_page is None:
            raise _KeyFails(f"P{pid} has no present entry there")
        return self._page(), other_page


class _PinFacts:
    """What a pin shows: its first page's data word and whether it is still coherent."""

    def __init__(self, machine: Machine, pin_id: int) -> None:
        self.machine = machine
        self.pin_id = pin_id

    def get(self, key: str, want: str | int) -> str | int:
        pin = self.machine.pins.get(self.pin_id)
        if pin is None:
            issued = self.pin_id < self.machine.nr_pins
            raise _KeyFails("already unpinned" if issued else "never issued")
        if key == "value":
            if not pin.pages or not 0 <= pin.pages[0] < self.machine.frames.nr_frames:
                raise _KeyFails(f"first page {pin.pages[:1]} is not a frame")
            return int(self.machine.frames.page_data[pin.pages[0]])
        if key == "coherent":
            return _yes_no(self._coherent(pin))
        raise ValueError(f"unknown pin expect key {key!r}")

    def _coherent(self, pin: Pin) -> bool:
        """Every page of the pin is the page its process maps there now (process gone: no)."""
        mm = self.machine.processes.get(pin.pid)
        if mm is None:
            return False
        return all(self.machine.page_at(mm, pin.addr + index * PAGE_SIZE) == page
                   for index, page in enumerate(pin.pages))


__all__ = ["GUP_PIN_COUNTING_BIAS", "ExpectFailure", "check_expect", "expect_failures"]
