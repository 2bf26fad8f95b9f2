"""The seven oracles of SPEC §6, an eighth for lazyfree memory and a ninth for uffd-wp (issue 14,
docs/model.md):
the invariants checked on a machine beyond its equality with the other machine.

Each `check_<name>(machine, shadow, scan)` states its rule in its docstring, in
SPEC §6's order and words, then checks it on a `PageTableScan` (fuzz.judge.scan:
the whole-array walks and counts live there, apart from the rules). `ORACLES`
is the one registry; `check_oracles` runs them all on one scan.

Each oracle returns failure details (empty: it holds). A detail names its
subject first (`pfn 37: ...`, `folio 32 (order 4): ...`, `P1 0x200000: ...`,
`pin 2 page 5 (P0 0x205000): ...`, `slot 9: ...`); a check that finds many
alike reports the first MAX_DETAILS and how many more. A check first asks a
cheap question (a count, an equality) and only looks for the culprits, and
builds its messages, when that fails; it skips what is absent (no PMD blocks,
no swap entries, no pins, no large folio).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from fuzz.judge.scan import (
    EMPTY,
    FOLIO_FIELDS,
    PAGE_FIELDS,
    PID_SHIFT,
    ContpteVerdicts,
    PageTableScan,
    indices_of,
    ints,
    joined,
    key_where,
    lookup_keys,
    occurrences,
    reserved_frames_pristine,
    where,
)
from machine.errors import check
from machine.frames import FREE_FOLIO, FrameTable
from machine.pgtable import (
    HPAGE_PMD_ORDER,
    PAGE_SIZE,
    PMD_SIZE,
    PMD_TYPE_TABLE,
    PTE_MARKER_UFFD_WP,
    PTE_SPECIAL,
    PTE_SWP_EXCLUSIVE,
    PTE_TYPE,
    PTE_TYPE_MASK,
    PTE_WRITE,
    SWP_TYPE_MASK,
    TASK_SIZE,
    make_pte_marker,
    pte_cont,
    pte_dirty,
    pte_marker_uffd_wp,
    pte_swp_uffd_wp,
    pte_uffd_wp,
    pte_young,
)

if TYPE_CHECKING:
    from fuzz.judge.shadow import Shadow
    from machine import Machine
    from machine.mm import MM

GUP_PIN_COUNTING_BIAS = 1024
MAX_DETAILS = 16          # details reported per check before "... and N more"
_LARGE_FOLIO_FIELDS = ("folio_large_mapcount", "folio_entire_mapcount", "folio_mm_id", "folio_mm_id_mapcount",
                       "folio_mm_ids_shared")   # free values on an order-0 folio


def details(items: Collection[Any], describe: Callable[..., str]) -> list[str]:
    """describe(item) for the first MAX_DETAILS items, then how many more there were."""
    if len(items) == 0:
        return []
    items = list(items)
    details = [describe(item) for item in items[:MAX_DETAILS]]
    if len(items) > MAX_DETAILS:
        details.append(f"... and {len(items) - MAX_DETAILS} more like the above")
    return details


# --- 1. mapcount -------------------------------------------------------------

def check_mapcount(machine: Machine, shadow: Shadow, scan: PageTableScan) -> list[str]:
    """Rule 1, mapcount: every allocated page's _mapcount equals the present PTEs mapping it;
    a large folio's _large_mapcount equals its mappings (PTEs of any of its pages plus PMD
    blocks) and its _entire_mapcount its PMD blocks; an MM_ID slot in use counts from 1 to its
    process's mappings of the folio, a free slot counts 0, no mm_id sits in both slots, and a
    clear shared bit means at most one process maps the folio; an order-0 folio's large-folio
    fields hold their free values; each process's MM_ANONPAGES and MM_SWAPENTS equal its
    present pages (512 per PMD block) and its swap entries."""
    frames = machine.frames
    allocated = scan.allocated
    found = scan.page_pte_mappings[allocated]
    wrong = indices_of(frames.page_mapcount[allocated] != found)
    failures = details(wrong, lambda i: f"pfn {allocated[i]}: _mapcount {frames.page_mapcount[allocated[i]]}, "
                                         f"mappings found {found[i]}")

    large = scan.large_heads
    if len(large):
        mappings, pmd_mappings = scan.folio_mappings[large], scan.folio_pmd_mappings[large]
        wrong = indices_of(frames.folio_large_mapcount[large] != mappings)
        failures += details(wrong, lambda i: (
            f"folio {large[i]} (order {frames.folio_order[large[i]]}): _large_mapcount "
            f"{frames.folio_large_mapcount[large[i]]}, mappings found {mappings[i]}"))
        wrong = indices_of(frames.folio_entire_mapcount[large] != pmd_mappings)
        failures += details(wrong, lambda i: (
            f"folio {large[i]} (order {frames.folio_order[large[i]]}): _entire_mapcount "
            f"{frames.folio_entire_mapcount[large[i]]}, PMD mappings found {pmd_mappings[i]}"))
        failures += _check_mm_ids(machine, scan, large)
    if not all(scan.zero_outside(name, large) for name in _LARGE_FOLIO_FIELDS):
        failures += _check_small_folio_fields(frames, scan.heads[~scan.large])

    for pid in sorted(machine.processes):
        mm = machine.processes[pid]
        anon, swap, file = scan.rss[pid]
        if mm.rss_file != file:
            failures.append(f"P{pid}: MM_FILEPAGES {mm.rss_file}, present page-cache pages found {file}")
        if mm.rss_anon != anon:
            failures.append(f"P{pid}: MM_ANONPAGES {mm.rss_anon}, present pages found {anon}")
        if mm.rss_swap != swap:
            failures.append(f"P{pid}: MM_SWAPENTS {mm.rss_swap}, swap entries found {swap}")
    return failures


def _check_small_folio_fields(frames: FrameTable, small: np.ndarray) -> list[str]:
    """The large-folio fields of order-0 folios (small: their heads) hold their free values."""
    if len(small) == 0:
        return []
    stray = (frames.folio_large_mapcount[small] != 0) | (frames.folio_entire_mapcount[small] != 0) \
        | frames.folio_mm_id[small].any(axis=1) | frames.folio_mm_id_mapcount[small].any(axis=1) \
        | frames.folio_mm_ids_shared[small]
    return details(small[stray], lambda f: (
        f"folio {f} (order 0): large-folio fields set (_large_mapcount {frames.folio_large_mapcount[f]}, "
        f"_entire_mapcount {frames.folio_entire_mapcount[f]}, mm_id {ints(frames.folio_mm_id[f])}, "
        f"mm_id_mapcount {ints(frames.folio_mm_id_mapcount[f])}, "
        f"shared {bool(frames.folio_mm_ids_shared[f])})"))


def _check_mm_ids(machine: Machine, scan: PageTableScan, large: np.ndarray) -> list[str]:
    """MM_ID of large folios: a slot in use counts between 1 and its process's mappings, a free
    slot counts 0, no mm_id twice, and a clear shared bit means one process maps the folio."""
    frames = machine.frames
    failures: list[str] = []
    mm_ids = frames.folio_mm_id[large]                 # (folios, slots)
    slot_counts = frames.folio_mm_id_mapcount[large]
    in_use = mm_ids != 0
    pids = mm_ids - 1
    found = scan.folio_mm_mappings(large[:, None], pids)
    miscounted = in_use & ((slot_counts > found) | (slot_counts < 1))
    stale = ~in_use & (slot_counts != 0)
    if np.count_nonzero(miscounted) or np.count_nonzero(stale):
        for slot in (0, 1):
            failures += details(indices_of(miscounted[:, slot]), lambda i, slot=slot: (
                f"folio {large[i]}: MM_ID slot {slot} (P{pids[i, slot]}) counts {slot_counts[i, slot]}, "
                f"mappings by that process found {found[i, slot]}"))
            failures += details(large[stale[:, slot]], lambda f, slot=slot: (
                f"folio {f}: free MM_ID slot {slot} has mapcount {frames.folio_mm_id_mapcount[f, slot]}"))
    twice = large[in_use[:, 0] & (mm_ids[:, 0] == mm_ids[:, 1])]
    failures += details(twice, lambda f: f"folio {f}: both MM_ID slots hold mm_id {frames.folio_mm_id[f, 0]}")
    if len(machine.processes) > 1:                    # else no folio is mapped by two processes
        not_shared = large[~frames.folio_mm_ids_shared[large] & (scan.folio_nr_mms[large] > 1)]
        failures += details(not_shared, lambda f: (
            f"folio {f}: shared bit clear but mapped by {scan.folio_nr_mms[f]} processes"))
    return failures


# --- 2. refcount -------------------------------------------------------------

def check_refcount(machine: Machine, shadow: Shadow, scan: PageTableScan) -> list[str]:
    """Rule 2, refcount: a folio's refcount equals its mappings plus its pin references (one
    per pinned page of a large folio, GUP_PIN_COUNTING_BIAS per pin of an order-0 one) plus its
    page-cache and swap-cache references (one per page, per slot); a large
    folio's _pincount equals its pinned pages, an order-0 folio's is 0; no PTE, PMD block or pin
    names a free frame; every allocated folio is mapped, pinned or cached (no leak); the folios tile the
    allocated frames (valid orders, naturally aligned), and free frames and tail pages hold
    their free values."""
    frames = machine.frames
    failures = _check_folio_structure(frames, scan)
    heads = scan.heads

    pins = scan.pin_pages
    if len(pins["id"]):
        pin_folio = scan.folio_of(pins["page"])
        unpinnable = indices_of(pin_folio < 0)
        failures += details(unpinnable, lambda i: (
            f"pin {pins['id'][i]} page {pins['index'][i]}: holds pfn {pins['page'][i]}, which is "
            + _not_a_folio(frames, int(pins["page"][i]))))
        pin_pairs = occurrences(pin_folio, scan.nr_frames)[heads]
        pin_refs = np.where(scan.large, pin_pairs, GUP_PIN_COUNTING_BIAS * pin_pairs)
        expected_pincount = np.where(scan.large, pin_pairs, 0)
    else:
        pin_pairs = pin_refs = expected_pincount = np.zeros(len(heads), np.int64)
    mappings = scan.folio_mappings[heads]
    cache_refs = scan.cache_refs[heads]
    swap_refs = scan.swap_cache_refs[heads]

    wrong = indices_of(frames.folio_refcount[heads] != mappings + pin_refs + cache_refs + swap_refs)
    failures += details(wrong, lambda i: (
        f"folio {heads[i]} (order {frames.folio_order[heads[i]]}): refcount {frames.folio_refcount[heads[i]]}, "
        f"mappings {mappings[i]} + pin references {pin_refs[i]} + page-cache references {cache_refs[i]} "
        f"+ swap-cache references {swap_refs[i]} = {mappings[i] + pin_refs[i] + cache_refs[i] + swap_refs[i]}"))
    wrong = indices_of(frames.folio_pincount[heads] != expected_pincount)
    failures += details(wrong, lambda i: (
        f"folio {heads[i]} (order {frames.folio_order[heads[i]]}): _pincount "
        f"{frames.folio_pincount[heads[i]]}, pinned pages found {expected_pincount[i]}"))
    leaked = heads[(mappings == 0) & (pin_pairs == 0) & (cache_refs == 0) & (swap_refs == 0)]
    failures += details(leaked, lambda f: f"folio {f} (order {frames.folio_order[f]}): allocated but neither "
                                           "mapped nor pinned nor in a page cache nor in the swap cache (leak)")

    for level, pids, addrs, pfns, folios in (
            ("PTE", scan.pte_pid, scan.pte_addr, scan.pte_pfn, scan.pte_folio),
            ("PMD", scan.pmd_pid, scan.pmd_addr, scan.pmd_pfn, scan.pmd_folio)):
        bad = indices_of(folios < 0)
        failures += details(bad, lambda i, level=level, pids=pids, addrs=addrs, pfns=pfns: (
            f"{where(pids[i], addrs[i])}: {level} maps pfn {pfns[i]}, which is " + _not_a_folio(frames, int(pfns[i]))))
    return failures


def _not_a_folio(frames: FrameTable, pfn: int) -> str:
    """Why pfn, named by a mapping or a pin as a folio's page, is none."""
    if pfn < frames.nr_frames:
        return "free"
    if pfn == frames.zero_pfn or frames.huge_zero_pfn <= pfn < frames.zero_pfn:
        return "the zero page taken for a folio (a zero-page mapping is special, and is never pinned)"
    return "beyond the machine"


def _check_folio_structure(frames: FrameTable, scan: PageTableScan) -> list[str]:
    """page_folio agrees with the heads' orders; free frames and tail pages hold free values."""
    failures: list[str] = []
    heads, allocated = scan.heads, scan.allocated
    # Every allocated frame a head of order 0: the folios tile the allocated frames.
    if len(heads) != len(allocated) or np.count_nonzero(frames.folio_order[heads]):
        failures += _check_folio_runs(frames, scan)
    for name in FOLIO_FIELDS:
        if scan.zero_outside(name, heads):
            continue
        array = getattr(frames, name)[:scan.nr_frames]   # the reserved frames: the zero-page oracle's
        set_ = array.any(axis=1) if array.ndim == 2 else array != 0
        set_[heads] = False
        failures += details(indices_of(set_), lambda pfn, name=name, array=array: (
            f"pfn {pfn}: {name} {ints(array[pfn]) if array.ndim == 2 else array[pfn]} on a "
            + ("free frame" if frames.page_folio[pfn] == FREE_FOLIO else "tail page")))
    for name in PAGE_FIELDS:
        if scan.zero_outside(name, allocated):
            continue
        array = getattr(frames, name)[:scan.nr_frames]
        stray = indices_of((array != 0) & (frames.page_folio[:scan.nr_frames] == FREE_FOLIO))
        failures += details(stray, lambda pfn, name=name, array=array: (
            f"pfn {pfn}: {name} {array[pfn]} on a free frame"))
    return failures


def _check_folio_runs(frames: FrameTable, scan: PageTableScan) -> list[str]:
    """Each head's order is valid, its run of 2**order frames naturally aligned inside the
    machine, and the runs tile exactly the allocated frames, each frame naming its own head."""
    failures: list[str] = []
    page_folio = frames.page_folio[:scan.nr_frames]
    heads, allocated = scan.heads, scan.allocated
    orders = frames.folio_order[heads].astype(np.int64)
    bad_order = (orders < 0) | (orders > HPAGE_PMD_ORDER) | (orders == 1)
    sizes = np.left_shift(1, np.where(bad_order, 0, orders))
    placed = ~bad_order & (heads % sizes == 0) & (heads + sizes <= scan.nr_frames)
    if not placed.all():
        failures += details(heads[bad_order], lambda f: f"folio {f}: bad order {frames.folio_order[f]}")
        failures += details(heads[~bad_order & ~placed], lambda f: (
            f"folio {f}: order {frames.folio_order[f]} run is not naturally aligned inside the machine"))
        heads, sizes = heads[placed], sizes[placed]
    starts = np.cumsum(sizes) - sizes
    owners = np.repeat(heads, sizes)
    covered = owners + (np.arange(len(owners), dtype=np.int64) - np.repeat(starts, sizes))
    if not (len(covered) == len(allocated) and np.array_equal(covered, allocated)
            and np.array_equal(page_folio[covered], owners)):
        owner = np.full(scan.nr_frames, FREE_FOLIO, np.int64)
        owner[covered] = owners
        overlap = indices_of(np.bincount(covered, minlength=scan.nr_frames) > 1)
        failures += details(overlap, lambda pfn: f"pfn {pfn}: inside two folios")
        wrong = indices_of(page_folio != owner)
        failures += details(wrong, lambda pfn: f"pfn {pfn}: page_folio {page_folio[pfn]}, expected {owner[pfn]}")
    return failures


# --- 3. swap -----------------------------------------------------------------

def check_swap(machine: Machine, shadow: Shadow, scan: PageTableScan) -> list[str]:
    """Rule 3, swap: a slot's count equals the swap PTEs that reference it; every swap entry
    names a slot of the device with swap type 0, and carries PTE_SWP_EXCLUSIVE only on a slot
    of count 1; a free slot (no count, no swap-cache folio) holds no data; a zeromap bit is
    only on a used slot holding 0; the swap cache and
    folio->swap point at each other (check_swap_cache)."""
    swap = machine.swap
    failures: list[str] = []
    if len(scan.swp_slot) or np.count_nonzero(swap.swap_count):   # else both count 0 everywhere
        found = scan.swap_pte_count + scan.cache_swap_count
        wrong = indices_of(swap.swap_count != found)
        failures += details(wrong, lambda slot: (
            f"slot {slot}: count {swap.swap_count[slot]}, "
            f"swap entries found {found[slot]} (swap PTEs and shmem page-cache entries)"))
    if len(scan.swp_desc):
        pids, addrs, descs, slots = scan.swp_pid, scan.swp_addr, scan.swp_desc, scan.swp_slot
        failures += details(indices_of(slots >= swap.nr_slots), lambda i: (
            f"{where(pids[i], addrs[i])}: swap entry to slot {slots[i]} beyond the device"))
        exclusive = (descs & np.uint64(PTE_SWP_EXCLUSIVE)) != 0
        referencing = scan.swap_pte_count[np.minimum(slots, swap.nr_slots - 1)]
        failures += details(indices_of(exclusive & (referencing != 1)), lambda i: (
            f"{where(pids[i], addrs[i])}: PTE_SWP_EXCLUSIVE on slot {slots[i]} "
            f"referenced by {referencing[i]} swap entries"))
        failures += details(indices_of((descs & np.uint64(SWP_TYPE_MASK)) != 0), lambda i: (
            f"{where(pids[i], addrs[i])}: swap entry {int(descs[i]):#x} has a swap type"))
    nr_data = np.count_nonzero(swap.swap_data)
    free = swap.slots_free()
    if nr_data and nr_data != np.count_nonzero(swap.swap_data[~free]):
        stale = indices_of(free & (swap.swap_data != 0))
        failures += details(stale, lambda slot: f"slot {slot}: free but holds data {swap.swap_data[slot]}")
    if swap.swap_zeromap.any():
        stale = indices_of(swap.swap_zeromap & (free | (swap.swap_data != 0)))
        failures += details(stale, lambda slot: f"slot {slot}: zeromap bit on a " + (
            "free slot" if free[slot] else f"slot holding data {swap.swap_data[slot]}"))
    return failures + check_swap_cache(machine)


def check_swap_cache(machine: Machine) -> list[str]:
    """A slot the swap cache holds names an allocated anon folio whose folio->swap run covers
    it, and every slot of a swap-cache folio's run names that folio; a swap-cache folio is a
    clean copy of its slots (each page's data word equals its slot's) and none of its pages
    is PageAnonExclusive (it is mapped only through non-exclusive swap entries)."""
    frames, swap = machine.frames, machine.swap
    cached_slots = np.flatnonzero(swap.swap_cache >= 0)
    swap_heads = np.flatnonzero(frames.folio_swap[:frames.nr_frames])
    if not len(cached_slots) and not len(swap_heads):
        return []
    failures: list[str] = []
    folios = swap.swap_cache[cached_slots]
    is_folio = (folios < frames.nr_frames) & (frames.page_folio[np.minimum(folios, frames.nr_frames - 1)] == folios)
    failures += details(indices_of(~is_folio), lambda i: (
        f"slot {cached_slots[i]}: the swap cache holds pfn {folios[i]}, which is not a folio's head"))
    ok_slots, ok_folios = cached_slots[is_folio], folios[is_folio]
    first = frames.folio_swap[ok_folios]
    nr_pages = np.left_shift(1, frames.folio_order[ok_folios].astype(np.int64))
    outside = (first == 0) | (ok_slots < first) | (ok_slots >= first + nr_pages) | ~frames.folio_anon[ok_folios]
    failures += details(indices_of(outside), lambda i: (
        f"slot {ok_slots[i]}: the swap cache holds folio {ok_folios[i]}, whose folio->swap is "
        f"{first[i]} (order {frames.folio_order[ok_folios[i]]}, anon {bool(frames.folio_anon[ok_folios[i]])})"))
    for folio in swap_heads.tolist():
        slot, nr = int(frames.folio_swap[folio]), frames.folio_nr_pages(folio)
        if slot + nr > swap.nr_slots or not all_equal(swap.swap_cache[slot:slot + nr], folio):
            failures.append(f"folio {folio}: folio->swap {slot} (order {frames.folio_order[folio]}), "
                            f"but the swap cache holds {ints(swap.swap_cache[slot:slot + nr])} there")
            continue
        pages = slice(folio, folio + nr)
        if not np.array_equal(frames.page_data[pages], swap.swap_data[slot:slot + nr]):
            failures.append(f"folio {folio}: swap-cache data {ints(frames.page_data[pages])}, "
                            f"its slots {slot}.. hold {ints(swap.swap_data[slot:slot + nr])}")
        if frames.page_anon_exclusive[pages].any():
            failures.append(f"folio {folio}: in the swap cache with PageAnonExclusive pages "
                            f"{ints(np.flatnonzero(frames.page_anon_exclusive[pages]) + folio)}")
    return failures


def all_equal(array: np.ndarray, value: int) -> bool:
    return bool((array == value).all())


# --- 4. exclusive ------------------------------------------------------------

def check_exclusive(machine: Machine, shadow: Shadow, scan: PageTableScan) -> list[str]:
    """Rule 4, exclusive: a mapped page with PageAnonExclusive (for a PMD block, the head's bit)
    is mapped once; a writable entry maps an exclusive page (for a PMD block, the head); a
    pinned page still mapped at the pin's address in the pin's process is exclusive as SPEC §4
    reads it (for a PMD map, the head)."""
    exclusive = machine.frames.page_anon_exclusive
    failures: list[str] = []
    # Mapped once: a PTE-mapped page is judged by its own bit, a PMD-mapped folio by its head's;
    # a page's mappings are its PTEs plus its folio's PMD blocks.
    pte_ok = scan.pte_folio >= 0
    judged = scan.pte_pfn[pte_ok]
    if len(scan.pmd_pfn):
        judged = np.concatenate([judged, scan.pmd_pfn[scan.pmd_folio == scan.pmd_pfn]])
    judged = judged[exclusive[judged]]
    if len(judged):
        total = scan.page_pte_mappings[judged]
        if len(scan.pmd_pfn):   # a corrupt page_folio is the refcount oracle's: no mapping here
            folios = machine.frames.page_folio[judged]
            in_range = (folios >= 0) & (folios < len(scan.folio_pmd_mappings))
            total = total + np.where(in_range, scan.folio_pmd_mappings[np.where(in_range, folios, 0)], 0)
        not_once = total != 1
        if np.count_nonzero(not_once):
            shared, first = np.unique(judged[not_once], return_index=True)
            total = total[not_once][first]
            failures += details(range(len(shared)), lambda i: (
                f"pfn {shared[i]}: PageAnonExclusive but mapped {total[i]} times"))

    # Writable => exclusive (the head's bit for a PMD block).
    failures += _writable_not_exclusive("PTE", scan.pte_pid, scan.pte_addr, scan.pte_desc, scan.pte_pfn,
                                        scan.pte_folio, exclusive, machine.frames.folio_anon)
    failures += _writable_not_exclusive("PMD", scan.pmd_pid, scan.pmd_addr, scan.pmd_desc, scan.pmd_pfn,
                                        scan.pmd_folio, exclusive, machine.frames.folio_anon)

    # A pinned page still mapped where it was pinned => exclusive as SPEC §4 reads it.
    pins = scan.pin_pages
    if len(pins["id"]):
        still = pins["live"] & (pins["mapped"] == pins["page"]) & (pins["page"] < scan.nr_frames)
        still &= ~scan.folio_is_file(scan.folio_of(pins["page"]))   # a pinned page-cache page is shared
        bad = indices_of(still & ~exclusive[np.where(still, pins["exclusive_page"], 0)])
        failures += details(bad, lambda i: (
            f"pin {pins['id'][i]} page {pins['index'][i]} ({where(pins['pid'][i], pins['addr'][i])}): "
            f"pinned pfn {pins['page'][i]} still mapped but not exclusive"
            + (f" (head pfn {pins['exclusive_page'][i]})" if pins["exclusive_page"][i] != pins["page"][i] else "")))
    return failures


def _writable_not_exclusive(level: str, pids: np.ndarray, addrs: np.ndarray, descs: np.ndarray, pfns: np.ndarray,
                            folios: np.ndarray, exclusive: np.ndarray, frames_anon: np.ndarray) -> list[str]:
    """Writable entries of one level (PTE or PMD) to an allocated page whose PageAnonExclusive
    (the head's for a PMD block) is clear."""
    if len(descs) == 0:
        return []
    ok = (folios >= 0) & (folios < len(frames_anon))
    ok[ok] = frames_anon[folios[ok]]   # a page-cache page of a shared mapping is writable, never exclusive
    writable = ((descs & np.uint64(PTE_WRITE)) != 0) & ok
    bad = indices_of(writable & ~exclusive[np.where(ok, pfns, 0)])
    return details(bad, lambda i: f"{where(pids[i], addrs[i])}: writable {level} to non-exclusive pfn {pfns[i]}")


# --- 5. pin ------------------------------------------------------------------

def check_pin(machine: Machine, shadow: Shadow, scan: PageTableScan) -> list[str]:
    """Rule 5, pin: each page of a live pin is still mapped at its address in its process,
    unless the process unmapped that address since (munmap, dontneed, exit: the shadow's
    released pages)."""
    pins = scan.pin_pages
    if len(pins["id"]) == 0:
        return []
    incoherent = pins["live"] & (pins["mapped"] != pins["page"])
    # reclaim unmaps a pinned page-cache page and keeps it in the cache (shrink_folio_list:
    # try_to_unmap, then folio_maybe_dma_pinned keeps it): the next fault maps it again.
    incoherent &= ~((pins["mapped"] < 0) & scan.folio_is_file(scan.folio_of(pins["page"])))
    if not incoherent.any():
        return []
    released = np.array([index in shadow.released.get(pin_id, ())
                         for pin_id, index in zip(pins["id"].tolist(), pins["index"].tolist(), strict=True)], bool)
    return details(indices_of(incoherent & ~released), lambda i: (
        f"pin {pins['id'][i]} page {pins['index'][i]} ({where(pins['pid'][i], pins['addr'][i])}): "
        f"pinned pfn {pins['page'][i]}, "
        + (f"mapped pfn {pins['mapped'][i]}" if pins["mapped"][i] >= 0 else "nothing present there")
        + ", and its process did not unmap it"))


# --- 6. data -----------------------------------------------------------------

def check_data(machine: Machine, shadow: Shadow, scan: PageTableScan) -> list[str]:
    """Rule 6, data: every process reads at every mapped address what the shadow says it wrote
    there (0 if nothing), and every address it wrote a non-zero word to, and did not unmap
    since, is still mapped; a page MADV_FREE freed since its last write reads that word or
    0 (a lazyfree folio discarded by reclaim), mapped or not."""
    keys, values, sources = scan.mapped_words()
    if machine.files:
        return _check_file_data(machine, shadow, keys, values, sources)
    lazy_failures: list[str] = []
    if any(shadow.lazy.values()):
        keys, values, sources, lazy_failures = _check_lazy_words(machine, shadow, keys, values, sources)
    written = sorted(((pid << PID_SHIFT) | addr, value)
                     for pid in machine.processes for addr, value in shadow.data.get(pid, {}).items())
    # The cheap question: the non-zero words read are the non-zero words written. As no two
    # leaves share a key, that holds exactly when both checks below do.
    read = indices_of(values != 0)
    if sorted(zip(keys[read].tolist(), values[read].tolist(), strict=True)) == [item for item in written if item[1]]:
        return lazy_failures

    written_keys = np.array([key for key, _ in written], np.int64)
    written_values = np.array([value for _, value in written], np.uint64)
    if len(written_keys):
        found = lookup_keys(written_keys, keys)
        expected = np.where(found >= 0, written_values[np.maximum(found, 0)], np.uint64(0))
    else:
        expected = np.zeros(len(keys), np.uint64)

    def describe_read(i: int) -> str:
        source = f"pfn {sources[i]}" if sources[i] >= 0 else f"swap slot {-1 - sources[i]}"
        return f"{key_where(keys[i])}: reads {values[i]} ({source}), wrote {expected[i]}"

    failures = lazy_failures + details(indices_of(values != expected), describe_read)
    if len(written_keys):
        unmapped = (written_values != 0) & (lookup_keys(np.sort(keys), written_keys) < 0)
        failures += details(indices_of(unmapped), lambda i: (
            f"{key_where(written_keys[i])}: wrote {written_values[i]}, but nothing is mapped there"))
    return failures


def _check_file_data(machine: Machine, shadow: Shadow, keys: np.ndarray, values: np.ndarray,
                     sources: np.ndarray) -> list[str]:
    """Rule 6 with files, word by word: a mapped page reads its private word, else (in a file
    VMA) its file's word, else 0; a private word written is still mapped; and no file lost a
    word: every index reads its shadow word from the page cache, the shmem swap entry or the
    disk, whichever holds it (0 where none)."""
    failures: list[str] = []
    lazy = {(pid, addr) for pid, pages in shadow.lazy.items() for addr in pages}
    mapped = set()
    for key, value, source in zip(keys.tolist(), values.tolist(), sources.tolist(), strict=True):
        pid, addr = key >> PID_SHIFT, key & ((1 << PID_SHIFT) - 1)
        mapped.add((pid, addr))
        if (pid, addr) in lazy:
            continue
        expected = shadow.data.get(pid, {}).get(addr)
        if expected is None:
            expected = shadow.file_word(machine, pid, addr) or 0
        if value != expected:
            where_from = f"pfn {source}" if source >= 0 else f"swap slot {-1 - source}"
            failures.append(f"{key_where(key)}: reads {value} ({where_from}), wrote {expected}")
    for pid in sorted(machine.processes):
        for addr, value in sorted(shadow.data.get(pid, {}).items()):
            if value and (pid, addr) not in mapped:
                failures.append(f"{where(pid, addr)}: wrote {value}, but nothing is mapped there")
    frames, swap = machine.frames, machine.swap
    for file_id in sorted(machine.files):
        file = machine.files[file_id]
        words = shadow.files.get(file_id, {})
        for index in sorted(set(words) | set(file.cache) | set(file.swap) | set(file.disk)):
            if index in file.cache:
                folio = file.cache[index]
                held, place = int(frames.page_data[folio + index - int(frames.folio_index[folio])]), "page cache"
            elif index in file.swap:
                held, place = int(swap.swap_data[file.swap[index]]), f"swap slot {file.swap[index]}"
            else:
                held, place = file.disk.get(index, 0), "disk"
            if held != words.get(index, 0):
                failures.append(f"F{file_id} index {index}: holds {held} ({place}), wrote {words.get(index, 0)}")
    return failures[:20]


def _check_lazy_words(machine: Machine, shadow: Shadow, keys: np.ndarray, values: np.ndarray,
                      sources: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """The mapped words of the pages MADV_FREE freed since their last write, checked (each
    reads its word or 0), and the other mapped words, returned for the rest of rule 6."""
    lazy = sorted(((pid << PID_SHIFT) | addr, value)
                  for pid in machine.processes for addr, value in shadow.lazy.get(pid, {}).items())
    lazy_keys = np.array([key for key, _ in lazy], np.int64)
    lazy_values = np.array([value for _, value in lazy], np.uint64)
    at = lookup_keys(lazy_keys, keys)
    is_lazy = at >= 0
    allowed = np.where(is_lazy, lazy_values[np.maximum(at, 0)], np.uint64(0)) if len(lazy) else values
    bad = is_lazy & (values != 0) & (values != allowed)
    failures = details(indices_of(bad), lambda i: (
        f"{key_where(keys[i])}: reads {values[i]}, wrote {allowed[i]} before MADV_FREE (0 if discarded)"))
    keep = ~is_lazy
    return keys[keep], values[keep], sources[keep], failures


# --- 7. layout ---------------------------------------------------------------

def check_layout(machine: Machine, shadow: Shadow, scan: PageTableScan) -> list[str]:
    """Rule 7, layout: every folded contpte block is valid (docs/model.md #91: CONT on all 16
    or none, and the 16 could be folded); every valid PTE is a page
    descriptor; every PTE marker is a uffd-wp marker; every PMD entry is a block or a table with
    its PTE table; a PMD block is 2 MiB aligned and maps the head of an order-9 folio; every
    VMA is non-empty, page aligned, inside the VA space, and sorted before and disjoint from
    the next; every leaf lies inside a VMA (a PMD block inside a single one)."""
    frames = machine.frames
    failures = list(scan.bad_pmds)
    failures += details(scan.invalid_blocks(), lambda block: (
        f"{where(block[0], block[1])}: contpte block not validly folded (CONT on "
        f"{int(pte_cont(block[2]).sum())}/16, young {int(pte_young(block[2]).sum())}/16, "
        f"dirty {int(pte_dirty(block[2]).sum())}/16)"))
    if len(scan.pte_desc):
        not_page = indices_of((scan.pte_desc & np.uint64(PTE_TYPE)) == 0)
        failures += details(not_page, lambda i: (f"{where(scan.pte_pid[i], scan.pte_addr[i])}: valid PTE "
                                                  f"{int(scan.pte_desc[i]):#x} is not a page descriptor"))
    if len(scan.marker_desc):
        bogus = indices_of(scan.marker_desc != np.uint64(make_pte_marker(PTE_MARKER_UFFD_WP)))
        failures += details(bogus, lambda i: (f"{key_where(scan.marker_key[i])}: PTE marker "
                                              f"{int(scan.marker_desc[i]):#x} is not a uffd-wp marker"))
    if len(scan.pmd_desc):
        misaligned = indices_of(scan.pmd_addr % PMD_SIZE != 0)
        failures += details(misaligned, lambda i: (f"{where(scan.pmd_pid[i], scan.pmd_addr[i])}: "
                                                    "PMD block not 2 MiB aligned"))
        pfns = scan.pmd_pfn
        in_range = pfns < scan.nr_frames
        safe = np.where(in_range, pfns, 0)
        on_thp_head = in_range & (frames.page_folio[safe] == pfns) & (frames.folio_order[safe] == HPAGE_PMD_ORDER)
        failures += details(indices_of(~on_thp_head), lambda i: (
            f"{where(scan.pmd_pid[i], scan.pmd_addr[i])}: PMD block maps pfn {pfns[i]}, "
            "not the head of an order-9 folio"))
    return failures + _check_vmas(machine, scan)


def _check_vmas(machine: Machine, scan: PageTableScan) -> list[str]:
    """Every process's VMAs are sorted, disjoint, non-empty and page aligned, and hold its leaves
    (a PMD block inside one VMA)."""
    failures: list[str] = []
    vma_keys, vma_ends = [], []
    for pid in sorted(machine.processes):
        vmas = machine.processes[pid].vmas
        for vma in vmas:
            if not (vma.start < vma.end and vma.start % PAGE_SIZE == 0 and vma.end % PAGE_SIZE == 0
                    and vma.start >= 0 and vma.end <= TASK_SIZE):
                failures.append(f"P{pid} VMA {vma.start:#x}-{vma.end:#x}: empty, unaligned or outside the VA space")
            vma_keys.append((pid << PID_SHIFT) + vma.start)
            vma_ends.append((pid << PID_SHIFT) + vma.end)   # +, not |: an end may be 2**48
        for before, after in itertools.pairwise(vmas):
            if before.end > after.start:
                failures.append(f"P{pid} VMA {before.start:#x}-{before.end:#x}: not sorted before or "
                                f"overlaps VMA {after.start:#x}-{after.end:#x}")

    leaf_keys = joined([keys for keys in (scan.pte_key, scan.zero_key, scan.swp_key, scan.marker_key, scan.pmd_key)
                        if len(keys)],
                       EMPTY)
    if len(leaf_keys) == 0:
        return failures
    leaf_ends = leaf_keys + PAGE_SIZE
    if len(scan.pmd_key):
        leaf_ends[len(leaf_keys) - len(scan.pmd_key):] += PMD_SIZE - PAGE_SIZE
    starts = np.array(vma_keys, np.int64)
    ends = np.array(vma_ends, np.int64)
    if failures:                # else the VMAs are sorted and disjoint already
        order = np.argsort(starts, kind="stable")
        starts, ends = starts[order], ends[order]
    index = np.searchsorted(starts, leaf_keys, side="right") - 1
    outside = indices_of((index < 0) | (leaf_ends > ends[np.maximum(index, 0)]) if len(starts) else
                       np.ones(len(leaf_keys), bool))
    if len(outside) == 0:
        return failures
    levels = (["PTE"] * len(scan.pte_key) + ["zero-page PTE"] * len(scan.zero_key) + ["swap PTE"] * len(scan.swp_key)
              + ["PTE marker"] * len(scan.marker_key)
              + ["PMD block"] * len(scan.pmd_key))
    return failures + details(outside, lambda i: (
        f"{key_where(leaf_keys[i])}: {levels[i]} outside "
        + ("a single VMA" if levels[i] == "PMD block" else "any VMA")))


# --- 8. lazyfree ----------------------------------------------------------------

def check_lazyfree(machine: Machine, shadow: Shadow, scan: PageTableScan) -> list[str]:
    """Rule 8, lazyfree: a page a process wrote a non-zero word to since its last MADV_FREE
    is never mapped there by a clean entry of a lazyfree folio (anon, PG_swapbacked clear),
    so reclaim, which discards a lazyfree folio only while every entry of it is clean, can
    never discard a page that still holds what a process needs."""
    frames = machine.frames
    lazyfree = frames.folio_anon & ~frames.folio_swapbacked
    if not lazyfree.any() or not any(shadow.data.values()):
        return []
    keys = [scan.pte_key, scan.pmd_key]
    clean = [~pte_dirty(scan.pte_desc), ~pte_dirty(scan.pmd_desc)]
    pfns = [scan.pte_pfn, scan.pmd_pfn]
    failures: list[str] = []
    written = {(pid << PID_SHIFT) | addr: value
               for pid, pages in shadow.data.items() for addr, value in pages.items() if value}
    for level, span in (("pte", PAGE_SIZE), ("pmd", PMD_SIZE)):
        index = 0 if level == "pte" else 1
        ok = pfns[index] < scan.nr_frames
        folios = np.full(len(ok), FREE_FOLIO, np.int64)
        folios[ok] = frames.page_folio[pfns[index][ok]]
        suspect = indices_of(clean[index] & (folios >= 0) & lazyfree[np.maximum(folios, 0)])
        for i in suspect.tolist():
            key = int(keys[index][i])
            hits = [key + offset for offset in range(0, span, PAGE_SIZE) if key + offset in written]
            failures += [f"{key_where(hit)}: wrote {written[hit]} since MADV_FREE, mapped by a clean {level} "
                         f"entry of lazyfree folio {int(folios[i])}" for hit in hits[:1]]
    return failures[:MAX_DETAILS]


# --- 9. zero page ---------------------------------------------------------------

def check_zero_page(machine: Machine, shadow: Shadow, scan: PageTableScan) -> list[str]:
    """Rule 9, zero_page: a zero-page entry (a special PTE of the shared zero page, a special PMD
    block of the huge zero folio) is neither writable nor dirty; PTE_SPECIAL marks nothing else,
    and nothing else maps or pins a reserved frame; the reserved frames keep every field as the
    machine made them (no mapcount, refcount, pin, flag or data word: the zero page reads 0 and
    is never taken for a folio)."""
    frames = machine.frames
    failures: list[str] = []
    for level, pids, addrs, descs in (("PTE", scan.zero_pid, scan.zero_addr, scan.zero_desc),
                                      ("PMD", scan.zero_pmd_pid, scan.zero_pmd_addr, scan.zero_pmd_desc)):
        if len(descs):
            bad = indices_of(((descs & np.uint64(PTE_WRITE)) != 0) | pte_dirty(descs))
            failures += details(bad, lambda i, level=level, pids=pids, addrs=addrs, descs=descs: (
                f"{where(pids[i], addrs[i])}: zero-page {level} {int(descs[i]):#x} is writable or dirty"))
    for level, pids, addrs, descs, pfns in (("PTE", scan.pte_pid, scan.pte_addr, scan.pte_desc, scan.pte_pfn),
                                            ("PMD", scan.pmd_pid, scan.pmd_addr, scan.pmd_desc, scan.pmd_pfn)):
        if len(descs) == 0:
            continue
        special = (descs & np.uint64(PTE_SPECIAL)) != 0
        failures += details(indices_of(special), lambda i, level=level, pids=pids, addrs=addrs, pfns=pfns: (
            f"{where(pids[i], addrs[i])}: special {level} maps pfn {pfns[i]}, not the "
            + ("zero page" if level == "PTE" else "huge zero folio's head")))
        reserved = ~special & (pfns >= frames.nr_frames) & (pfns <= frames.zero_pfn)
        failures += details(indices_of(reserved), lambda i, level=level, pids=pids, addrs=addrs, pfns=pfns: (
            f"{where(pids[i], addrs[i])}: {level} without PTE_SPECIAL maps reserved pfn {pfns[i]} "
            "(the zero page taken for a folio)"))
    pins = scan.pin_pages
    if len(pins["id"]):
        failures += details(indices_of(np.asarray(frames.is_zero_pfn(pins["page"]))), lambda i: (
            f"pin {pins['id'][i]} page {pins['index'][i]}: pins the zero page (pfn {pins['page'][i]})"))
    def describe_reserved(change: tuple[int, str]) -> str:
        pfn, name = change
        kind = ("zero page" if pfn == frames.zero_pfn else
                "huge zero folio" if pfn >= frames.huge_zero_pfn else "padding before the zero pages")
        value = getattr(frames, name)[pfn]
        return f"pfn {pfn} ({kind}): {name} {ints(value) if np.ndim(value) else value}, never set on a reserved frame"
    if not reserved_frames_pristine(frames):
        failures += details(frames.reserved_frames_changed(), describe_reserved)
    return failures


# --- 11. uffd-wp ---------------------------------------------------------------

def check_uffd_wp(machine: Machine, shadow: Shadow, scan: PageTableScan) -> list[str]:
    """Rule 11, uffd-wp: a page `wp on` write-protected, not since unprotected or dropped with
    its content (munmap, exit; in an anonymous VMA also dontneed, MADV_FREE and a lazyfree
    discard by reclaim or try_to_unmap, which leave no marker there; a file VMA's zap and
    unmap leave one), keeps its protection through every op:
    the uffd-wp bit on its present entry (PTE or PMD, the zero pages' too) or swap entry, or a uffd-wp marker on
    its empty one; and no write (write, fault, rw pin) ever succeeded on such a page."""
    failures = [f"{where(pid, addr)}: a write succeeded on a uffd-wp protected page" for pid, addr in shadow.landed]
    if not any(shadow.protected.values()):
        return failures[:MAX_DETAILS]
    keys = np.array(sorted((pid << PID_SHIFT) | addr for pid, pages in shadow.protected.items()
                           for addr in pages), np.int64)
    protected = np.zeros(len(keys), bool)
    for leaf_keys, leaf_desc, bit in ((scan.pte_key, scan.pte_desc, pte_uffd_wp),
                                      (scan.zero_key, scan.zero_desc, pte_uffd_wp),
                                      (scan.swp_key, scan.swp_desc, pte_swp_uffd_wp),
                                      (scan.marker_key, scan.marker_desc, pte_marker_uffd_wp)):
        if len(leaf_keys):
            order = np.argsort(leaf_keys)
            index = lookup_keys(leaf_keys[order], keys)
            found = index >= 0
            protected[found] |= bit(leaf_desc[order][index[found]]).astype(bool)
    head_keys = keys & ~np.int64(PMD_SIZE - 1)
    for pmd_keys, pmd_desc in ((scan.pmd_key, scan.pmd_desc), (scan.zero_pmd_key, scan.zero_pmd_desc)):
        if len(pmd_keys):   # a PMD block: a THP's, or the huge zero folio's
            order = np.argsort(pmd_keys)
            index = lookup_keys(pmd_keys[order], head_keys)
            found = index >= 0
            protected[found] |= pte_uffd_wp(pmd_desc[order][index[found]]).astype(bool)
    failures += details(indices_of(~protected), lambda i: (
        f"{key_where(keys[i])}: uffd-wp protected page without the bit or a marker"))
    return failures


# --- the registry ------------------------------------------------------------

@dataclass(frozen=True)
class Oracle:
    """One oracle of SPEC §6: its name and the check of its rule on a scan."""

    name: str
    check: Callable[[Machine, Shadow, PageTableScan], list[str]]

    @property
    def rule(self) -> str:
        """The rule, as the check's docstring states it."""
        return " ".join((self.check.__doc__ or "").split("\n\n")[0].split())

    def __call__(self, machine: Machine, shadow: Shadow,
                 contpte_verdicts: ContpteVerdicts | None = None) -> list[str]:
        """The rule's failure details on machine (empty: it holds), from a scan of its own."""
        return self.check(machine, shadow, PageTableScan(machine, contpte_verdicts))


# --- 10. page cache ------------------------------------------------------------

def check_pagecache(machine: Machine, shadow: Shadow, scan: PageTableScan) -> list[str]:
    """Rule 10, pagecache: every page-cache folio fills exactly the slots of its file at its
    index (folio->mapping and ->index agree with the cache: one slot per page, no other
    folio or swap entry there, none past the file's end), and every folio whose mapping is
    set is in its file's cache; a page-cache folio is never anon."""
    frames = machine.frames
    failures: list[str] = []
    for file_id in sorted(machine.files):
        file = machine.files[file_id]
        seen: set[int] = set()   # the heads this file's cache holds
        for index, folio in sorted(file.cache.items()):
            if folio < 0 or folio >= scan.nr_frames or frames.page_folio[folio] != folio:
                failures.append(f"F{file_id} index {index}: holds pfn {folio}, not a folio's head")
                continue
            seen.add(folio)
            start = int(frames.folio_index[folio])
            nr_pages = frames.folio_nr_pages(folio)
            if frames.folio_mapping[folio] != file_id + 1 or not start <= index < start + nr_pages:
                failures.append(f"F{file_id} index {index}: folio {folio} says mapping "
                                f"{int(frames.folio_mapping[folio]) - 1}, index {start}")
            if frames.folio_anon[folio]:
                failures.append(f"F{file_id} index {index}: folio {folio} is anon")
            if index >= file.nr_pages:
                failures.append(f"F{file_id} index {index}: past the file's end ({file.nr_pages} pages)")
            if index in file.swap:
                failures.append(f"F{file_id} index {index}: both a folio and swap slot {file.swap[index]}")
        for folio in seen:
            if frames.folio_mapping[folio] == file_id + 1:
                start = int(frames.folio_index[folio])
                missing = [i for i in range(start, start + frames.folio_nr_pages(folio)) if file.cache.get(i) != folio]
                if missing:
                    failures.append(f"F{file_id}: folio {folio} at index {start} missing from slots {missing[:4]}")

    def cached(folio: int) -> bool:
        file = machine.files.get(int(frames.folio_mapping[folio]) - 1)
        return file is not None and file.cache.get(int(frames.folio_index[folio])) == folio

    orphans = scan.heads[frames.folio_mapping[scan.heads] != 0]
    failures += details([f for f in orphans.tolist() if not cached(f)], lambda f: (
        f"folio {f}: mapping F{int(frames.folio_mapping[f]) - 1} but not in that page cache"))
    return failures


ORACLES: dict[str, Oracle] = {oracle.name: oracle for oracle in (
    Oracle("mapcount", check_mapcount),
    Oracle("refcount", check_refcount),
    Oracle("swap", check_swap),
    Oracle("exclusive", check_exclusive),
    Oracle("pin", check_pin),
    Oracle("data", check_data),
    Oracle("layout", check_layout),
    Oracle("lazyfree", check_lazyfree),
    Oracle("zero_page", check_zero_page),
    Oracle("pagecache", check_pagecache),
    Oracle("uffd-wp", check_uffd_wp),
)}


@dataclass(frozen=True)
class OracleFailure:
    """One oracle that does not hold, with one human-readable detail of why."""

    oracle: str
    detail: str


def check_oracles(machine: Machine, shadow: Shadow,
                  contpte_verdicts: ContpteVerdicts | None = None) -> list[OracleFailure]:
    """Every oracle of SPEC §6, in order, from one scan of all page tables."""
    scan = PageTableScan(machine, contpte_verdicts)
    return [OracleFailure(oracle.name, detail)
            for oracle in ORACLES.values()
            for detail in oracle.check(machine, shadow, scan)]


def same_oracle_inputs(a: Machine, a_shadow: Shadow, b: Machine, b_shadow: Shadow) -> bool:
    """Whether check_oracles reads the same on b as on a, given compare_machines(a, b) found no
    difference: then it returns the same on both. What the comparison leaves out is checked
    here: the shadows, each process's VMA list in its order, and its page-table shape (which
    PMD entries are table descriptors, which PTE tables exist; the comparison masks the first
    and reads a missing PTE table as zeros).

    Context: compare_machines(a, b) == [] (same processes, frames, swap, pins, leaves).
    """
    check(a.processes.keys() == b.processes.keys(), "machines with different processes")
    if (a_shadow.data != b_shadow.data or a_shadow.lazy != b_shadow.lazy
            or a_shadow.released != b_shadow.released or a_shadow.protected != b_shadow.protected
            or a_shadow.landed != b_shadow.landed):
        return False
    for pid, mm in a.processes.items():
        other = b.processes[pid]
        if [(vma.start, vma.end) for vma in mm.vmas] != [(vma.start, vma.end) for vma in other.vmas]:
            return False
        if _table_shape(mm) != _table_shape(other):
            return False
    return True


def _table_shape(mm: MM) -> list[tuple[int, list[int], list[int], list[int]]]:
    """Per PMD table: its base, where its table descriptors are, which PTE tables it holds, and
    the descriptors of the table entries without a PTE table (their value is in the scan's detail)."""
    shape = []
    for table in mm.pmd_tables():
        descriptors = [(index, pmd) for index, pmd in table.nonzero_entries()
                       if pmd & PTE_TYPE_MASK == PMD_TYPE_TABLE]
        shape.append((table.base, [index for index, _ in descriptors], sorted(table.ptes),
                      [pmd for index, pmd in descriptors if index not in table.ptes]))
    return shape


__all__ = ["GUP_PIN_COUNTING_BIAS", "MAX_DETAILS", "ORACLES", "Oracle", "OracleFailure", "check_oracles",
           "same_oracle_inputs"]
