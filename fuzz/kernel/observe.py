"""What a page looks like from outside, on the model and on a real kernel (issue: the kernel bridge).

One observation is a dict from (process, page address) to a `PageView`, for
every page a script's `mmap`s named in every live process; pages with nothing
mapped are absent. The model side is `project()` of a machine; the kernel side
is parsed from the guest runtime's output (`parse_guest_output`). PFNs differ
between the two (and between boots), so identities are compared as relations:
each page, folio and swap slot is named by the first (process, address) that
shows it, in ascending process and address order (`identities`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import NamedTuple

from machine import FREE_FOLIO, Machine
from machine.pgtable import (
    HPAGE_PMD_NR,
    PAGE_SHIFT,
    PAGE_SIZE,
    PTE_CONT,
    is_pte_marker,
    is_swap_slot_pte,
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

PRESENT, SWAP, ZERO, MARKER = "present", "swap", "zero", "marker"
SWP_PTE_MARKER = 31   # the swap type of a PTE marker (pagemap shows it as PM_SWAP | PM_UFFD_WP)

Key = tuple[int, int]   # (process number, page address)


class PageView(NamedTuple):
    """One page of one process as the kernel's interfaces show it (raw pfns and slots)."""

    state: str                 # PRESENT, SWAP, ZERO (the shared zero page or huge zero folio) or MARKER
    pfn: int = 0
    head: int = 0              # the folio's first pfn
    order: int = 0
    level: str = "pte"         # "pte" or "pmd"
    cont: bool = False
    dirty: bool = False        # pte_dirty as ptep_get() shows it (a contpte block gathers its 16)
    young: bool = False
    writable: bool = False
    exclusive: bool = False    # PageAnonExclusive (the head's for a PMD map), or PTE_SWP_EXCLUSIVE
    mapcount: int = 0          # the page's PTE mappings plus its folio's PMD mappings
    refcount: int = 0          # folio_ref_count
    pincount: int = 0          # _pincount of a large folio (a small one's pins are in its refcount)
    shared: bool = False       # the MM_ID "maybe mapped shared" bit of a large folio
    value: int = 0             # the frame's first data word
    slot: int = 0              # swap offset
    lazyfree: bool = False     # folio_test_lazyfree: anon without PG_swapbacked (MADV_FREE)
    folio_dirty: bool = False  # PG_dirty of the folio
    file: bool = False         # a page-cache folio (folio->mapping is a file's; KPF_ANON clear)
    uffd_wp: bool = False      # PM_UFFD_WP: the entry's (PTE, PMD, swap PTE) uffd-wp bit, or a uffd-wp marker


Observation = dict[Key, PageView]

# The fields compared for each state, in report order; identities come first.
PRESENT_FIELDS = ("order", "level", "cont", "dirty", "young", "writable", "exclusive", "mapcount",
                  "refcount", "pincount", "shared", "value", "lazyfree", "folio_dirty", "file", "uffd_wp")
SWAP_FIELDS = ("exclusive", "uffd_wp")
# A zero-page entry maps no folio: what it is, its entry's bits and what it reads.
ZERO_FIELDS = ("level", "cont", "dirty", "young", "writable", "value", "uffd_wp")
MARKER_FIELDS = ("uffd_wp",)


@dataclass(frozen=True)
class Difference:
    """One field of one page that differs between the model and the kernel."""

    process: int
    addr: int
    field: str
    model: object
    kernel: object

    def describe(self) -> str:
        return f"P{self.process} {self.addr:#x} {self.field}: model {self.model}, kernel {self.kernel}"


# ---------------------------------------------------------------------------
# The observed pages


@dataclass(frozen=True)
class PageRanges:
    """The page ranges a script's mmaps name, in order of first appearance, as the runtime keeps them."""

    ranges: tuple[tuple[int, int], ...]

    @classmethod
    def of_mmaps(cls, mmaps: Iterable[tuple[int, int]]) -> PageRanges:
        ranges: list[tuple[int, int]] = []
        for start, length in mmaps:
            if (start, start + length) not in ranges:
                ranges.append((start, start + length))
        return cls(tuple(ranges))

    @property
    def nr_pages(self) -> int:
        return sum((end - start) >> PAGE_SHIFT for start, end in self.ranges)

    def __contains__(self, addr: object) -> bool:
        return isinstance(addr, int) and any(start <= addr < end for start, end in self.ranges)


# ---------------------------------------------------------------------------
# The model's side


def project(machine: Machine, pages: PageRanges) -> Observation:
    """The observation of a model machine: every non-none leaf of every live process, page by page."""
    observation: Observation = {}
    for pid in sorted(machine.processes):
        mm = machine.processes[pid]
        for addr, level, desc in mm.leaves():
            if level == "pmd":
                huge_zero = bool(pte_special(desc)) and int(pte_pfn(desc)) == machine.frames.huge_zero_pfn
                view = _zero_view if huge_zero else _present_view   # the huge zero folio, KPF_ZERO_PAGE
                for index in range(HPAGE_PMD_NR):
                    page_addr = addr + index * PAGE_SIZE
                    if page_addr in pages:
                        observation[(pid, page_addr)] = view(machine, pmd_pte(desc), index, "pmd")
            elif addr in pages:
                if desc & PTE_CONT:
                    desc = machine.ptep_get(mm, addr)   # as the kernel shows it: young and dirty gathered
                if pte_present(desc) and pte_special(desc) and machine.frames.is_zero_pfn(int(pte_pfn(desc))):
                    observation[(pid, addr)] = _zero_view(machine, desc, 0, "pte")
                elif pte_present(desc):
                    observation[(pid, addr)] = _present_view(machine, desc, 0, "pte")
                elif is_swap_slot_pte(desc):
                    observation[(pid, addr)] = PageView(SWAP, slot=int(pte_swp_offset(desc)),
                                                        exclusive=bool(pte_swp_exclusive(desc)),
                                                        uffd_wp=bool(pte_swp_uffd_wp(desc)))
                elif is_pte_marker(desc):
                    observation[(pid, addr)] = PageView(MARKER, uffd_wp=bool(pte_marker_uffd_wp(desc)))
    return observation


def _zero_view(machine: Machine, pte: int, index: int, level: str) -> PageView:
    """A zero-page entry (the shared zero page, or a page of the huge zero folio under a PMD)."""
    page = int(pte_pfn(pte)) + index
    return PageView(ZERO, pfn=page, head=int(pte_pfn(pte)), level=level,
                    cont=level == "pte" and bool(pte_cont(pte)), dirty=bool(pte_dirty(pte)),
                    young=bool(pte_young(pte)), writable=bool(pte_write(pte)),
                    value=int(machine.frames.page_data[page]), uffd_wp=bool(pte_uffd_wp(pte)))


def _present_view(machine: Machine, pte: int, index: int, level: str) -> PageView:
    """A present page: pte is the entry (a PMD block in PTE form), index the page within a PMD map."""
    frames = machine.frames
    page = int(pte_pfn(pte)) + index
    folio = int(frames.page_folio[page])
    if folio == FREE_FOLIO:
        raise ValueError(f"pfn {page} is mapped but free")
    order = int(frames.folio_order[folio])
    exclusive_page = int(pte_pfn(pte)) if level == "pmd" else page
    return PageView(
        PRESENT, pfn=page, head=folio, order=order, level=level,
        cont=level == "pte" and bool(pte_cont(pte)), dirty=bool(pte_dirty(pte)),
        young=bool(pte_young(pte)), writable=bool(pte_write(pte)),
        exclusive=bool(frames.page_anon_exclusive[exclusive_page]),
        mapcount=int(frames.page_mapcount[page]) + int(frames.folio_entire_mapcount[folio]),
        refcount=int(frames.folio_refcount[folio]),
        pincount=int(frames.folio_pincount[folio]) if order else 0,
        shared=bool(frames.folio_mm_ids_shared[folio]) if order else False,
        value=int(frames.page_data[page]),
        lazyfree=bool(frames.folio_anon[folio]) and not frames.folio_swapbacked[folio],
        folio_dirty=bool(frames.folio_dirty[folio]), file=bool(frames.folio_mapping[folio]),
        uffd_wp=bool(pte_uffd_wp(pte)))


# ---------------------------------------------------------------------------
# The kernel's side: the guest runtime's output


@dataclass
class GuestScript:
    """One script's run on the kernel: each op's errno and the observation after it."""

    name: str
    results: list[int] = field(default_factory=list)
    observations: list[Observation] = field(default_factory=list)
    failure: str = ""          # an X line: the script could not run
    complete: bool = False     # its Z line was seen


@dataclass
class GuestRun:
    """Everything one boot printed."""

    kernel_release: str = ""
    scripts: dict[str, GuestScript] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    failure: str = ""          # an X line outside any script: the runtime could not start
    finished: bool = False     # the runtime's final D line was seen
    uptimes: list[float] = field(default_factory=list)   # T lines: before the first script, after the last


def parse_guest_output(lines: Iterable[str]) -> GuestRun:
    """Rebuild each script's per-op observations from the runtime's delta lines (see runtime.c)."""
    run = GuestRun()
    script: GuestScript | None = None
    state: Observation = {}
    for line in lines:
        words = line.split()
        if not words:
            continue
        tag = words[0]
        if tag == "P" and script is not None:
            _apply_page_line(state, words)
        elif tag == "E" and script is not None:
            script.observations.append(dict(state))
        elif tag == "R" and script is not None:
            script.results.append(int(words[2]))
        elif tag == "G" and script is not None:
            gone = int(words[1])
            state = {key: view for key, view in state.items() if key[0] != gone}
        elif tag == "S":
            script = GuestScript(words[1])
            run.scripts[script.name] = script
            state = {}
        elif tag == "Z" and script is not None:
            script.complete = True
            script = None
        elif tag == "K":
            run.kernel_release = " ".join(words[1:])
        elif tag == "X":
            if script is not None:
                script.failure = " ".join(words[1:])
            else:
                run.failure = " ".join(words[1:])
        elif tag == "X-warning":
            run.warnings.append(" ".join(words[1:]))
        elif tag == "D":
            run.finished = True
        elif tag == "T":
            run.uptimes.append(float(words[1]))
    return run


def _apply_page_line(state: Observation, words: list[str]) -> None:
    """P n va n | s slot excl uffd-wp type | p pfn head order pmd cont dirty young write excl mapcount ref pin
    shared zero value lazyfree folio_dirty file uffd-wp [private]. The model's refcount leaves out a
    filesystem's private reference (buffer heads: folio_attach_private), as folio_expected_ref_count
    counts it apart: the kernel's is compared less PG_private."""
    key = (int(words[1]), int(words[2], 16))
    kind = words[3]
    if kind == "n":
        state.pop(key, None)
    elif kind == "s" and int(words[7]) == SWP_PTE_MARKER:
        state[key] = PageView(MARKER, uffd_wp=words[6] == "1")
    elif kind == "s":
        state[key] = PageView(SWAP, slot=int(words[4], 16), exclusive=words[5] == "1", uffd_wp=words[6] == "1")
    elif kind == "p":
        (pfn, head, order, pmd, cont, dirty, young, write, excl, mapcount, ref, pin, shared, zero,
         value, lazyfree, folio_dirty, file, uffd_wp) = words[4:23]
        private = int(words[23]) if len(words) > 23 else 0
        if zero == "1":
            state[key] = PageView(ZERO, pfn=int(pfn, 16), head=int(head, 16), level="pmd" if pmd == "1" else "pte",
                                  cont=cont == "1", dirty=dirty == "1", young=young == "1",
                                  writable=write == "1", value=int(value, 16), uffd_wp=uffd_wp == "1")
            return
        state[key] = PageView(
            PRESENT, pfn=int(pfn, 16), head=int(head, 16), order=int(order),
            level="pmd" if pmd == "1" else "pte", cont=cont == "1", dirty=dirty == "1",
            young=young == "1", writable=write == "1", exclusive=excl == "1", mapcount=int(mapcount),
            refcount=int(ref) - private, pincount=int(pin), shared=shared == "1", value=int(value, 16),
            lazyfree=lazyfree == "1", folio_dirty=folio_dirty == "1", file=file == "1", uffd_wp=uffd_wp == "1")
    else:
        raise ValueError(f"unknown page line {' '.join(words)!r}")


# ---------------------------------------------------------------------------
# Comparison


def _first_key_of(observation: Observation, attribute: str, states: tuple[str, ...]) -> dict[int, Key]:
    """For each raw pfn, head or slot: the first (process, address), in ascending order, showing it."""
    first: dict[int, Key] = {}
    for key in sorted(observation):
        view = observation[key]
        if view.state in states:
            first.setdefault(getattr(view, attribute), key)
    return first


@dataclass(frozen=True)
class Identities:
    """Pages, folios and swap slots named by the first (process, address) that shows each."""

    pages: dict[int, Key]
    folios: dict[int, Key]
    slots: dict[int, Key]

    @classmethod
    def of(cls, observation: Observation) -> Identities:
        return cls(_first_key_of(observation, "pfn", (PRESENT,)),
                   _first_key_of(observation, "head", (PRESENT,)),
                   _first_key_of(observation, "slot", (SWAP,)))

    def page(self, view: PageView) -> str:
        return _key_text(self.pages[view.pfn])

    def folio(self, view: PageView) -> str:
        return f"{_key_text(self.folios[view.head])}+{view.pfn - view.head}"

    def slot(self, view: PageView) -> str:
        return _key_text(self.slots[view.slot])


def _key_text(key: Key) -> str:
    return f"P{key[0]}:{key[1]:#x}"


def compare_observations(model: Observation, kernel: Observation) -> list[Difference]:
    """Every field that differs, page by page in ascending order; states first, then identities."""
    model_ids, kernel_ids = Identities.of(model), Identities.of(kernel)
    differences: list[Difference] = []
    for key in sorted(model.keys() | kernel.keys()):
        differences.extend(_page_differences(key, model.get(key), kernel.get(key), model_ids, kernel_ids))
    return differences


def _page_differences(key: Key, model: PageView | None, kernel: PageView | None,
                      model_ids: Identities, kernel_ids: Identities) -> Iterator[Difference]:
    process, addr = key
    model_state = model.state if model else "none"
    kernel_state = kernel.state if kernel else "none"
    if model_state != kernel_state:
        yield Difference(process, addr, "state", model_state, kernel_state)
        return
    if model is None or kernel is None:
        return
    if model.state == ZERO:
        fields: tuple[str, ...] = ZERO_FIELDS
    elif model.state == MARKER:
        fields = MARKER_FIELDS
    elif model.state == SWAP:
        if model_ids.slot(model) != kernel_ids.slot(kernel):
            yield Difference(process, addr, "slot", model_ids.slot(model), kernel_ids.slot(kernel))
        fields = SWAP_FIELDS
    else:
        if model_ids.page(model) != kernel_ids.page(kernel):
            yield Difference(process, addr, "page", model_ids.page(model), kernel_ids.page(kernel))
        if model_ids.folio(model) != kernel_ids.folio(kernel):
            yield Difference(process, addr, "folio", model_ids.folio(model), kernel_ids.folio(kernel))
        fields = PRESENT_FIELDS
    for name in fields:
        model_value, kernel_value = getattr(model, name), getattr(kernel, name)
        if model_value != kernel_value:
            yield Difference(process, addr, name, model_value, kernel_value)
