"""Tests of the SPEC §6 oracles and the harness's shadow memory.

Each oracle test builds a healthy state by hand with machine primitives (the
values the kernel would leave), shows every oracle holds on it, then plants one
specific bug and shows that exactly that oracle fires.
"""

from __future__ import annotations

import numpy as np
import pytest

from fuzz.implementation import OP_DISPATCH
from fuzz.judge.oracles import (
    GUP_PIN_COUNTING_BIAS,
    ORACLES,
    OracleFailure,
    PageTableScan,
    check_oracles,
)
from fuzz.judge.shadow import Shadow
from fuzz.script.ops import Op, parse_script
from machine import VMA, Machine
from machine.mm import MM
from machine.pgtable import (
    CONT_PTES,
    HPAGE_PMD_NR,
    PAGE_SIZE,
    PMD_SIZE,
    PTE_CONT,
    PTE_MARKER_UFFD_WP,
    make_pte_marker,
    pfn_pte,
    pte_clear_uffd_wp,
    pte_cont,
    pte_mkclean,
    pte_mkdirty,
    pte_mkold,
    pte_mkspecial,
    pte_mkuffd_wp,
    pte_mkwrite,
    pte_mkyoung,
    pte_pfn,
    pte_pmd,
    pte_present,
    pte_swp_clear_uffd_wp,
    pte_swp_mkexclusive,
    pte_swp_mkuffd_wp,
    pte_wrprotect,
    swp_entry_to_pte,
    vm_get_page_prot,
)
from reference import Kernel

VMA_START = 0x100000
VMA_END = 0x1000000
SMALL_ADDR = 0x100000
MTHP_ADDR = 0x210000          # 64 KiB aligned
THP_ADDR = 0x400000           # 2 MiB aligned
SWAP_ADDR = 0x300000


# --- builders: healthy states as the kernel leaves them --------------------

def faulted_pte(pfn: int, writable: bool = True) -> int:
    """What a write fault maps: maybe_mkwrite(pte_mkdirty(mk_pte)) (SPEC §2.3)."""
    pte = pte_mkdirty(pfn_pte(pfn, vm_get_page_prot(writable)))
    return pte_mkwrite(pte) if writable else pte


def new_world() -> tuple[Machine, Shadow, MM]:
    """A machine whose P0 has one rw VMA [VMA_START, VMA_END)."""
    machine = Machine()
    mm = machine.processes[0]
    mm.vma_insert(VMA(VMA_START, VMA_END, True, machine.lineage_alloc()))
    return machine, Shadow(), mm


def new_child(machine: Machine, parent: MM) -> MM:
    """A process with a copy of parent's VMAs and nothing mapped (the start of a fork)."""
    child = machine.mm_alloc()
    for vma in parent.vmas:
        child.vma_insert(VMA(vma.start, vma.end, vma.writable, vma.lineage))
    return child


def new_anon_folio(machine: Machine, order: int, addr: int) -> int:
    frames = machine.frames
    folio = frames.folio_alloc(order)
    frames.folio_refcount[folio] = 0   # the builders count each mapping and pin
    frames.folio_anon[folio] = True
    frames.folio_swapbacked[folio] = True
    frames.folio_index[folio] = addr >> 12
    frames.folio_lineage[folio] = 0
    return folio


def write_shadow(shadow: Shadow, machine: Machine, mm: MM, addr: int, value: int) -> None:
    """A user write of value at addr, in the machine and the shadow."""
    page = machine.page_at(mm, addr)
    machine.frames.page_data[page] = value
    shadow.data.setdefault(mm.pid, {})[addr] = value


def map_small_folio(machine: Machine, shadow: Shadow, mm: MM, addr: int, value: int) -> int:
    """An order-0 folio faulted by a write: exclusive, writable, dirty, young."""
    frames = machine.frames
    folio = new_anon_folio(machine, 0, addr)
    frames.folio_refcount[folio] = 1
    frames.page_mapcount[folio] = 1
    frames.page_anon_exclusive[folio] = True
    machine.set_pte_at(mm, addr, faulted_pte(folio))
    mm.rss_anon += 1
    write_shadow(shadow, machine, mm, addr, value)
    return folio


def map_mthp(machine: Machine, shadow: Shadow, mm: MM, addr: int, order: int = 4) -> int:
    """An mTHP faulted whole: every page exclusive, one set_ptes, MM_ID slot 0 owns all."""
    frames = machine.frames
    nr_pages = 1 << order
    folio = new_anon_folio(machine, order, addr)
    span = slice(folio, folio + nr_pages)
    frames.folio_refcount[folio] = nr_pages
    frames.folio_large_mapcount[folio] = nr_pages
    frames.folio_mm_id[folio, 0] = mm.mm_id
    frames.folio_mm_id_mapcount[folio, 0] = nr_pages
    frames.page_mapcount[span] = 1
    frames.page_anon_exclusive[span] = True
    machine.set_ptes(mm, addr, faulted_pte(folio), nr_pages)
    mm.rss_anon += nr_pages
    for i in range(nr_pages):
        write_shadow(shadow, machine, mm, addr + i * PAGE_SIZE, 100 + i)
    return folio


def map_pmd_thp(machine: Machine, shadow: Shadow, mm: MM, addr: int) -> int:
    """A PMD-mapped THP faulted by a write: only the head exclusive."""
    frames = machine.frames
    folio = new_anon_folio(machine, 9, addr)
    frames.folio_refcount[folio] = 1
    frames.folio_large_mapcount[folio] = 1
    frames.folio_entire_mapcount[folio] = 1
    frames.folio_mm_id[folio, 0] = mm.mm_id
    frames.folio_mm_id_mapcount[folio, 0] = 1
    frames.page_anon_exclusive[folio] = True
    machine.set_pmd_at(mm, addr, pte_pmd(faulted_pte(folio)))
    mm.rss_anon += HPAGE_PMD_NR
    write_shadow(shadow, machine, mm, addr, 9)
    write_shadow(shadow, machine, mm, addr + 300 * PAGE_SIZE, 300)
    return folio


def map_shared_small(machine: Machine, shadow: Shadow, mms: list[MM], addr: int, value: int) -> int:
    """An order-0 folio after fork: read-only in every process, not exclusive."""
    frames = machine.frames
    folio = new_anon_folio(machine, 0, addr)
    frames.folio_refcount[folio] = len(mms)
    frames.page_mapcount[folio] = len(mms)
    for mm in mms:
        machine.set_pte_at(mm, addr, pte_wrprotect(faulted_pte(folio)))
        mm.rss_anon += 1
        write_shadow(shadow, machine, mm, addr, value)
    return folio


def map_shared_mthp(machine: Machine, shadow: Shadow, mms: list[MM], addr: int, order: int = 4) -> int:
    """An mTHP after fork: read-only in two processes, each owning an MM_ID slot, shared bit set."""
    frames = machine.frames
    nr_pages = 1 << order
    folio = new_anon_folio(machine, order, addr)
    frames.folio_refcount[folio] = 2 * nr_pages
    frames.folio_large_mapcount[folio] = 2 * nr_pages
    frames.page_mapcount[folio:folio + nr_pages] = 2
    for slot, mm in enumerate(mms):
        frames.folio_mm_id[folio, slot] = mm.mm_id
        frames.folio_mm_id_mapcount[folio, slot] = nr_pages
        machine.set_ptes(mm, addr, pte_wrprotect(faulted_pte(folio)), nr_pages)
        mm.rss_anon += nr_pages
    frames.folio_mm_ids_shared[folio] = True
    for mm in mms:
        write_shadow(shadow, machine, mm, addr, 55)
    return folio


def map_shared_pmd_thp(machine: Machine, shadow: Shadow, mms: list[MM], addr: int) -> int:
    """A PMD-mapped THP after fork: a read-only PMD block in two processes, each owning an MM_ID
    slot, shared bit set, no page exclusive."""
    frames = machine.frames
    folio = new_anon_folio(machine, 9, addr)
    frames.folio_refcount[folio] = len(mms)
    frames.folio_large_mapcount[folio] = len(mms)
    frames.folio_entire_mapcount[folio] = len(mms)
    for slot, mm in enumerate(mms):
        frames.folio_mm_id[folio, slot] = mm.mm_id
        frames.folio_mm_id_mapcount[folio, slot] = 1
        machine.set_pmd_at(mm, addr, pte_pmd(pte_wrprotect(faulted_pte(folio))))
        mm.rss_anon += HPAGE_PMD_NR
    frames.folio_mm_ids_shared[folio] = True
    frames.page_data[folio] = 9
    for mm in mms:
        shadow.data.setdefault(mm.pid, {})[addr] = 9
    return folio


def map_swap(machine: Machine, shadow: Shadow, mms: list[MM], addr: int, value: int) -> int:
    """A page swapped out of every process in mms (exclusive iff only one maps it)."""
    slot = machine.swap.find_free_slots(0)
    pte = swp_entry_to_pte(slot)
    if len(mms) == 1:
        pte = pte_swp_mkexclusive(pte)
    for mm in mms:
        machine.set_pte_at(mm, addr, pte)
        mm.rss_swap += 1
        shadow.data.setdefault(mm.pid, {})[addr] = value
    machine.swap.swap_count[slot] = len(mms)
    machine.swap.swap_data[slot] = value
    return slot


def swap_in_shared(machine: Machine, shadow: Shadow, mm: MM, addr: int, slot: int) -> int:
    """A read swap-in of a slot another swap PTE shares (do_swap_page): the folio stays in the
    swap cache (one reference) and is mapped read-only, not exclusive, clean."""
    frames = machine.frames
    folio = new_anon_folio(machine, 0, addr)
    frames.folio_refcount[folio] = 2           # the mapping and the swap cache
    frames.page_mapcount[folio] = 1
    frames.page_data[folio] = machine.swap.swap_data[slot]
    frames.folio_swap[folio] = slot
    machine.swap.swap_cache[slot] = folio
    machine.swap.swap_count[slot] -= 1
    machine.set_pte_at(mm, addr, pte_mkyoung(pfn_pte(folio, vm_get_page_prot(True))))
    mm.rss_swap -= 1
    mm.rss_anon += 1
    return folio


def pin(machine: Machine, shadow: Shadow, mm: MM, addr: int, nr_pages: int, mode: str = "rw") -> int:
    """A FOLL_PIN|FOLL_LONGTERM pin of nr_pages present pages: grab each, record the pin."""
    frames = machine.frames
    pages = tuple(machine.page_at(mm, addr + i * PAGE_SIZE) for i in range(nr_pages))
    for page in pages:
        folio = frames.page_folio_of(page)
        if frames.folio_order[folio] > 0:
            frames.folio_refcount[folio] += 1
            frames.folio_pincount[folio] += 1
        else:
            frames.folio_refcount[folio] += GUP_PIN_COUNTING_BIAS
    mm.has_pinned = True
    machine.pin_add(mm.pid, addr, mode, pages)
    shadow.apply(Op("pin", mm.pid, addr, nr_pages=nr_pages, prot=mode), "ok", machine)
    return machine.nr_pins - 1


def zap_small(machine: Machine, mm: MM, addr: int) -> int:
    """Unmap an order-0 folio's PTE as zap_pte_range does (the folio is kept if pinned)."""
    frames = machine.frames
    page = int(machine.ptep_get_and_clear(mm, addr) >> 12) & ((1 << 36) - 1)
    frames.page_mapcount[page] -= 1
    frames.folio_refcount[page] -= 1
    mm.rss_anon -= 1
    return page


def fired(machine: Machine, shadow: Shadow) -> set[str]:
    return {failure.oracle for failure in check_oracles(machine, shadow)}


def details(machine: Machine, shadow: Shadow) -> list[str]:
    return [failure.detail for failure in check_oracles(machine, shadow)]


def assert_healthy(machine: Machine, shadow: Shadow) -> None:
    assert check_oracles(machine, shadow) == []
    for check in ORACLES.values():
        assert check(machine, shadow) == []


def assert_only(machine: Machine, shadow: Shadow, oracle: str, *fragments: str) -> list[str]:
    """Exactly `oracle` fires; every fragment appears in one of its details."""
    failures = check_oracles(machine, shadow)
    assert {failure.oracle for failure in failures} == {oracle}, failures
    found = [failure.detail for failure in failures]
    assert found == ORACLES[oracle](machine, shadow)
    for fragment in fragments:
        assert any(fragment in detail for detail in found), (fragment, found)
    return found


# --- the builders make healthy states with the kernel's values ---------------

def test_oracles_are_named_in_spec_order():
    assert list(ORACLES) == ["mapcount", "refcount", "swap", "exclusive", "pin", "data", "layout", "lazyfree",
                             "zero_page", "pagecache", "uffd-wp"]
    assert all(ORACLES[name].name == name and ORACLES[name].check.__name__ == f"check_{name.replace('-', '_')}"
               for name in ORACLES)


def test_empty_machine_is_healthy():
    machine, shadow, _ = new_world()
    assert_healthy(machine, shadow)


def test_small_folio_fault_state_is_healthy():
    machine, shadow, mm = new_world()
    folio = map_small_folio(machine, shadow, mm, SMALL_ADDR, 7)
    frames = machine.frames
    assert (frames.folio_refcount[folio], frames.page_mapcount[folio]) == (1, 1)
    assert frames.folio_anon[folio] and frames.page_anon_exclusive[folio]
    assert mm.rss_anon == 1
    assert_healthy(machine, shadow)


def test_mthp_fault_state_is_folded_and_healthy():
    machine, shadow, mm = new_world()
    folio = map_mthp(machine, shadow, mm, MTHP_ADDR, order=4)
    frames = machine.frames
    entries = machine.ptes_get(mm, MTHP_ADDR, CONT_PTES)
    assert pte_cont(entries).all()
    assert frames.folio_large_mapcount[folio] == 16 and frames.folio_refcount[folio] == 16
    assert (frames.folio_mm_id[folio, 0], frames.folio_mm_id_mapcount[folio, 0]) == (mm.pid + 1, 16)
    assert_healthy(machine, shadow)


def test_pmd_thp_fault_state_is_healthy():
    machine, shadow, mm = new_world()
    folio = map_pmd_thp(machine, shadow, mm, THP_ADDR)
    frames = machine.frames
    assert (frames.folio_entire_mapcount[folio], frames.folio_large_mapcount[folio],
            frames.folio_refcount[folio]) == (1, 1, 1)
    assert frames.page_anon_exclusive[folio:folio + HPAGE_PMD_NR].sum() == 1
    assert_healthy(machine, shadow)


def build_mixed_world() -> tuple[Machine, Shadow, MM, MM]:
    """Every kind of mapping at once, including a pin whose process exited."""
    machine, shadow, parent = new_world()
    child = new_child(machine, parent)
    map_small_folio(machine, shadow, parent, SMALL_ADDR, 7)
    map_mthp(machine, shadow, parent, MTHP_ADDR, order=4)
    map_mthp(machine, shadow, parent, 0x240000, order=2)
    map_pmd_thp(machine, shadow, parent, THP_ADDR)
    map_shared_small(machine, shadow, [parent, child], 0x120000, 3)
    map_shared_mthp(machine, shadow, [parent, child], 0x280000)
    map_swap(machine, shadow, [parent], SWAP_ADDR, 11)
    map_swap(machine, shadow, [parent, child], SWAP_ADDR + PAGE_SIZE, 12)
    pin(machine, shadow, parent, MTHP_ADDR + 2 * PAGE_SIZE, 3)
    pin(machine, shadow, parent, THP_ADDR + 5 * PAGE_SIZE, 2, "ro")
    pin(machine, shadow, parent, SMALL_ADDR, 1)
    # A third process maps a small folio, pins it and exits: the pin holds the unmapped page.
    doomed = new_child(machine, parent)
    map_small_folio(machine, shadow, doomed, 0x130000, 21)
    pin(machine, shadow, doomed, 0x130000, 1)
    zap_small(machine, doomed, 0x130000)
    machine.mm_destroy(doomed)
    shadow.apply(Op("exit", doomed.pid), "ok", machine)
    return machine, shadow, parent, child


def test_mixed_world_is_healthy():
    machine, shadow, _, _ = build_mixed_world()
    assert_healthy(machine, shadow)


def test_scan_sees_the_leaves_mm_leaves_yields():
    machine, _, _, _ = build_mixed_world()
    scan = PageTableScan(machine)
    for pid, mm in machine.processes.items():
        leaves = list(mm.leaves())
        ptes = [(int(a), int(d)) for p, a, d in zip(scan.pte_pid, scan.pte_addr, scan.pte_desc, strict=True)
                if p == pid]
        swaps = [(int(a), int(d)) for p, a, d in zip(scan.swp_pid, scan.swp_addr, scan.swp_desc, strict=True)
                 if p == pid]
        pmds = [(int(a), int(d)) for p, a, d in zip(scan.pmd_pid, scan.pmd_addr, scan.pmd_desc, strict=True)
                if p == pid]
        assert sorted(ptes + swaps) == [(a, d) for a, level, d in leaves if level == "pte"]
        assert pmds == [(a, d) for a, level, d in leaves if level == "pmd"]


# --- 1. mapcount --------------------------------------------------------------

def test_mapcount_fires_on_page_mapcount_off_by_one():
    machine, shadow, mm = new_world()
    folio = map_small_folio(machine, shadow, mm, SMALL_ADDR, 7)
    assert_healthy(machine, shadow)
    machine.frames.page_mapcount[folio] += 1
    assert_only(machine, shadow, "mapcount", f"pfn {folio}: _mapcount 2, mappings found 1")


def test_mapcount_fires_on_large_mapcount_of_mthp():
    machine, shadow, mm = new_world()
    folio = map_mthp(machine, shadow, mm, MTHP_ADDR)
    assert_healthy(machine, shadow)
    machine.frames.folio_large_mapcount[folio] -= 1
    assert_only(machine, shadow, "mapcount", f"folio {folio} (order 4): _large_mapcount 15, mappings found 16")


def test_mapcount_fires_on_entire_mapcount_of_pmd_thp():
    machine, shadow, mm = new_world()
    folio = map_pmd_thp(machine, shadow, mm, THP_ADDR)
    assert_healthy(machine, shadow)
    machine.frames.folio_entire_mapcount[folio] = 0
    assert_only(machine, shadow, "mapcount", f"folio {folio} (order 9): _entire_mapcount 0, PMD mappings found 1")


def test_mapcount_fires_on_mm_id_slot_overcounting():
    machine, shadow, mm = new_world()
    folio = map_mthp(machine, shadow, mm, MTHP_ADDR)
    assert_healthy(machine, shadow)
    machine.frames.folio_mm_id_mapcount[folio, 0] = 17
    assert_only(machine, shadow, "mapcount", f"folio {folio}: MM_ID slot 0 (P0) counts 17")


def test_mapcount_accepts_mm_id_slot_undercounting():
    """A slot claimed after the process already had uncounted mappings counts fewer (by design)."""
    machine, shadow, mm = new_world()
    folio = map_mthp(machine, shadow, mm, MTHP_ADDR)
    machine.frames.folio_mm_id_mapcount[folio, 0] = 3
    assert_healthy(machine, shadow)


def test_mapcount_fires_on_mm_id_slot_of_an_absent_process():
    machine, shadow, mm = new_world()
    folio = map_mthp(machine, shadow, mm, MTHP_ADDR)
    machine.frames.folio_mm_id[folio, 1] = 6
    machine.frames.folio_mm_id_mapcount[folio, 1] = 1
    machine.frames.folio_mm_ids_shared[folio] = True   # keep the shared-bit rule quiet
    assert_only(machine, shadow, "mapcount", f"folio {folio}: MM_ID slot 1 (P5) counts 1, "
                                             "mappings by that process found 0")


def test_mapcount_fires_on_clear_shared_bit_with_two_processes():
    machine, shadow, parent = new_world()
    child = new_child(machine, parent)
    folio = map_shared_mthp(machine, shadow, [parent, child], MTHP_ADDR)
    assert_healthy(machine, shadow)
    machine.frames.folio_mm_ids_shared[folio] = False
    assert_only(machine, shadow, "mapcount", f"folio {folio}: shared bit clear but mapped by 2 processes")


def test_mapcount_fires_on_free_mm_id_slot_with_a_mapcount():
    machine, shadow, mm = new_world()
    folio = map_mthp(machine, shadow, mm, MTHP_ADDR)
    assert_healthy(machine, shadow)
    machine.frames.folio_mm_id_mapcount[folio, 1] = 2
    assert_only(machine, shadow, "mapcount", f"folio {folio}: free MM_ID slot 1 has mapcount 2")


def test_mapcount_fires_on_both_mm_id_slots_naming_one_process():
    machine, shadow, mm = new_world()
    folio = map_mthp(machine, shadow, mm, MTHP_ADDR)
    assert_healthy(machine, shadow)
    machine.frames.folio_mm_id[folio, 1] = mm.mm_id
    machine.frames.folio_mm_id_mapcount[folio, 1] = 1
    assert_only(machine, shadow, "mapcount", f"folio {folio}: both MM_ID slots hold mm_id {mm.mm_id}")


def test_mapcount_fires_on_shared_bit_clear_for_a_pmd_block_in_two_processes():
    machine, shadow, parent = new_world()
    child = new_child(machine, parent)
    folio = map_shared_pmd_thp(machine, shadow, [parent, child], THP_ADDR)
    assert_healthy(machine, shadow)
    machine.frames.folio_mm_ids_shared[folio] = False
    assert_only(machine, shadow, "mapcount", f"folio {folio}: shared bit clear but mapped by 2 processes")


@pytest.mark.parametrize("with_large_folio", [False, True])
def test_mapcount_fires_on_a_large_folio_field_of_an_order_0_folio(with_large_folio):
    machine, shadow, mm = new_world()
    folio = map_small_folio(machine, shadow, mm, SMALL_ADDR, 7)
    if with_large_folio:
        map_mthp(machine, shadow, mm, MTHP_ADDR)
    assert_healthy(machine, shadow)
    machine.frames.folio_mm_id[folio, 0] = mm.mm_id
    assert_only(machine, shadow, "mapcount", f"folio {folio} (order 0): large-folio fields set",
                f"mm_id [{mm.mm_id}, 0]")


def test_mapcount_fires_on_rss_counters():
    machine, shadow, mm = new_world()
    map_pmd_thp(machine, shadow, mm, THP_ADDR)
    map_swap(machine, shadow, [mm], SWAP_ADDR, 5)
    assert_healthy(machine, shadow)
    mm.rss_anon -= 1
    mm.rss_swap += 1
    assert_only(machine, shadow, "mapcount", "P0: MM_ANONPAGES 511, present pages found 512",
                "P0: MM_SWAPENTS 2, swap entries found 1")


# --- 2. refcount --------------------------------------------------------------

def test_refcount_fires_on_one_reference_short():
    machine, shadow, mm = new_world()
    folio = map_mthp(machine, shadow, mm, MTHP_ADDR)
    assert_healthy(machine, shadow)
    machine.frames.folio_refcount[folio] -= 1
    assert_only(machine, shadow, "refcount", f"folio {folio} (order 4): refcount 15, mappings 16 + pin references 0")


def test_refcount_counts_pin_bias_on_small_folios():
    machine, shadow, mm = new_world()
    folio = map_small_folio(machine, shadow, mm, SMALL_ADDR, 7)
    pin_id = pin(machine, shadow, mm, SMALL_ADDR, 1)
    assert machine.frames.folio_refcount[folio] == 1 + GUP_PIN_COUNTING_BIAS
    assert_healthy(machine, shadow)
    machine.pin_remove(pin_id)              # an unpin that forgets to drop the references
    assert_only(machine, shadow, "refcount", f"folio {folio} (order 0): refcount 1025, mappings 1 + pin references 0")


def test_refcount_fires_on_pincount_of_large_folio():
    machine, shadow, mm = new_world()
    folio = map_mthp(machine, shadow, mm, MTHP_ADDR)
    pin(machine, shadow, mm, MTHP_ADDR, 4)
    assert machine.frames.folio_pincount[folio] == 4
    assert_healthy(machine, shadow)
    machine.frames.folio_pincount[folio] = 3
    assert_only(machine, shadow, "refcount", f"folio {folio} (order 4): _pincount 3, pinned pages found 4")


def test_refcount_fires_on_leaked_folio():
    machine, shadow, mm = new_world()
    map_small_folio(machine, shadow, mm, SMALL_ADDR, 7)
    assert_healthy(machine, shadow)
    leaked = machine.frames.folio_alloc(2)  # allocated (refcount 1), never mapped or freed
    assert_only(machine, shadow, "refcount", f"folio {leaked} (order 2): allocated but neither mapped nor pinned")


def test_refcount_fires_on_stale_data_of_a_free_frame():
    machine, shadow, mm = new_world()
    folio = map_small_folio(machine, shadow, mm, SMALL_ADDR, 7)
    assert_healthy(machine, shadow)
    machine.frames.page_data[folio + 1] = 99
    assert_only(machine, shadow, "refcount", f"pfn {folio + 1}: page_data 99 on a free frame")


def test_refcount_fires_on_a_folio_field_of_a_tail_page():
    machine, shadow, mm = new_world()
    folio = map_mthp(machine, shadow, mm, MTHP_ADDR)
    assert_healthy(machine, shadow)
    machine.frames.folio_refcount[folio + 3] = 1
    assert_only(machine, shadow, "refcount", f"pfn {folio + 3}: folio_refcount 1 on a tail page")


def test_refcount_fires_on_page_folio_pointing_at_the_wrong_head():
    machine, shadow, mm = new_world()
    folio = map_mthp(machine, shadow, mm, MTHP_ADDR, order=2)
    map_small_folio(machine, shadow, mm, SMALL_ADDR, 7)
    assert_healthy(machine, shadow)
    free = machine.frames.find_free_run(0)
    machine.frames.page_folio[free] = folio           # a free frame claimed by the order-2 folio
    assert_only(machine, shadow, "refcount", f"pfn {free}: page_folio {folio}, expected -1")


def test_refcount_fires_on_a_free_frame_claimed_by_an_order_0_folio():
    machine, shadow, mm = new_world()
    folio = map_small_folio(machine, shadow, mm, SMALL_ADDR, 7)
    assert_healthy(machine, shadow)
    free = machine.frames.find_free_run(0)
    machine.frames.page_folio[free] = folio
    assert_only(machine, shadow, "refcount", f"pfn {free}: page_folio {folio}, expected -1")


def test_refcount_fires_on_a_folio_run_over_another_folio():
    machine, shadow, mm = new_world()
    first = map_small_folio(machine, shadow, mm, SMALL_ADDR, 7)
    second = map_small_folio(machine, shadow, mm, SMALL_ADDR + PAGE_SIZE, 8)
    assert (first % 4, second) == (0, first + 1)
    assert_healthy(machine, shadow)
    machine.frames.folio_order[first] = 2
    found = [detail for failure, detail in zip(check_oracles(machine, shadow), details(machine, shadow), strict=True)
             if failure.oracle == "refcount"]
    assert f"pfn {second}: inside two folios" in found
    assert f"pfn {first + 2}: page_folio -1, expected {first}" in found


@pytest.mark.parametrize("order", [1, 10, -1])
def test_refcount_fires_on_a_bad_folio_order(order):
    machine, shadow, mm = new_world()
    folio = map_small_folio(machine, shadow, mm, SMALL_ADDR, 7)
    assert_healthy(machine, shadow)
    machine.frames.folio_order[folio] = order
    assert f"folio {folio}: bad order {order}" in details(machine, shadow)


# --- 3. swap ------------------------------------------------------------------

def test_swap_fires_on_stale_slot_count():
    machine, shadow, mm = new_world()
    slot = map_swap(machine, shadow, [mm], SWAP_ADDR, 5)
    assert_healthy(machine, shadow)
    machine.swap.swap_count[slot] = 2
    assert_only(machine, shadow, "swap", f"slot {slot}: count 2, swap entries found 1")


def test_swap_fires_on_exclusive_entry_to_a_shared_slot():
    machine, shadow, parent = new_world()
    child = new_child(machine, parent)
    slot = map_swap(machine, shadow, [parent, child], SWAP_ADDR, 5)
    assert_healthy(machine, shadow)
    machine.set_pte_at(child, SWAP_ADDR, pte_swp_mkexclusive(swp_entry_to_pte(slot)))
    assert_only(machine, shadow, "swap", f"P1 {SWAP_ADDR:#x}: PTE_SWP_EXCLUSIVE on slot {slot} "
                                         "referenced by 2 swap entries")


def test_swap_fires_on_data_left_in_a_free_slot():
    machine, shadow, mm = new_world()
    slot = map_swap(machine, shadow, [mm], SWAP_ADDR, 5)
    assert_healthy(machine, shadow)
    machine.swap.swap_data[slot + 1] = 8
    assert_only(machine, shadow, "swap", f"slot {slot + 1}: free but holds data 8")


def swap_cache_world() -> tuple[Machine, Shadow, int, int]:
    """P0 and P1 share a swapped-out slot; P0 has read it into the swap cache."""
    machine, shadow, parent = new_world()
    child = new_child(machine, parent)
    slot = map_swap(machine, shadow, [parent, child], SWAP_ADDR, 5)
    folio = swap_in_shared(machine, shadow, parent, SWAP_ADDR, slot)
    return machine, shadow, slot, folio


def test_a_swap_cache_folio_is_healthy():
    machine, shadow, _slot, _folio = swap_cache_world()
    assert_healthy(machine, shadow)


def test_refcount_fires_on_a_swap_cache_reference_missing():
    machine, shadow, _slot, folio = swap_cache_world()
    machine.frames.folio_refcount[folio] -= 1
    assert_only(machine, shadow, "refcount", f"folio {folio} (order 0): refcount 1, mappings 1 + pin references 0 "
                "+ page-cache references 0 + swap-cache references 1 = 2")


def test_swap_fires_on_a_swap_cache_slot_the_folio_does_not_name():
    machine, shadow, slot, folio = swap_cache_world()
    machine.frames.folio_swap[folio] = 0
    assert_only(machine, shadow, "swap", f"slot {slot}: the swap cache holds folio {folio}, whose folio->swap is 0")


def test_swap_fires_on_a_folio_the_swap_cache_does_not_hold():
    machine, shadow, slot, folio = swap_cache_world()
    machine.swap.swap_cache[slot] = -1
    machine.frames.folio_refcount[folio] -= 1
    assert_only(machine, shadow, "swap", f"folio {folio}: folio->swap {slot} (order 0), but the swap cache holds [-1]")


def test_swap_fires_on_an_exclusive_swap_cache_page():
    machine, shadow, _slot, folio = swap_cache_world()
    machine.frames.page_anon_exclusive[folio] = True
    assert_only(machine, shadow, "swap", f"folio {folio}: in the swap cache with PageAnonExclusive pages [{folio}]")


def test_swap_fires_on_a_swap_cache_folio_unlike_its_slot():
    machine, shadow, slot, folio = swap_cache_world()
    write_shadow(shadow, machine, machine.processes[0], SWAP_ADDR, 6)   # written in place while cached
    assert_only(machine, shadow, "swap", f"folio {folio}: swap-cache data [6], its slots {slot}.. hold [5]")


def test_swap_counts_a_slot_only_the_swap_cache_holds_as_used():
    machine, shadow, parent = new_world()
    child = new_child(machine, parent)
    slot = map_swap(machine, shadow, [parent, child], SWAP_ADDR, 5)
    swap_in_shared(machine, shadow, parent, SWAP_ADDR, slot)
    machine.set_pte_at(child, SWAP_ADDR, 0)   # the child's entry zapped, the folio still mapped
    child.rss_swap -= 1
    machine.swap.swap_count[slot] -= 1
    shadow.data[child.pid].pop(SWAP_ADDR)
    assert_healthy(machine, shadow)
    assert machine.swap.find_free_slots(0) != slot


def test_swap_fires_on_a_slot_count_without_any_swap_entry():
    machine, shadow, mm = new_world()
    map_small_folio(machine, shadow, mm, SMALL_ADDR, 7)
    assert_healthy(machine, shadow)
    machine.swap.swap_count[5] = 1
    assert_only(machine, shadow, "swap", "slot 5: count 1, swap entries found 0")


def test_swap_fires_on_data_in_a_free_slot_without_any_swap_entry():
    machine, shadow, _ = new_world()
    assert_healthy(machine, shadow)
    machine.swap.swap_data[3] = 8
    assert_only(machine, shadow, "swap", "slot 3: free but holds data 8")


# --- 4. exclusive -------------------------------------------------------------

def test_exclusive_fires_on_writable_pte_to_non_exclusive_page():
    machine, shadow, mm = new_world()
    folio = map_small_folio(machine, shadow, mm, SMALL_ADDR, 7)
    assert_healthy(machine, shadow)
    machine.frames.page_anon_exclusive[folio] = False
    assert_only(machine, shadow, "exclusive", f"P0 {SMALL_ADDR:#x}: writable PTE to non-exclusive pfn {folio}")


def test_exclusive_fires_on_writable_pmd_to_non_exclusive_head():
    machine, shadow, mm = new_world()
    folio = map_pmd_thp(machine, shadow, mm, THP_ADDR)
    assert_healthy(machine, shadow)
    machine.frames.page_anon_exclusive[folio] = False
    assert_only(machine, shadow, "exclusive", f"P0 {THP_ADDR:#x}: writable PMD to non-exclusive pfn {folio}")


def test_exclusive_fires_on_exclusive_page_mapped_by_two_processes():
    machine, shadow, parent = new_world()
    child = new_child(machine, parent)
    folio = map_shared_small(machine, shadow, [parent, child], SMALL_ADDR, 7)
    assert_healthy(machine, shadow)
    machine.frames.page_anon_exclusive[folio] = True
    assert_only(machine, shadow, "exclusive", f"pfn {folio}: PageAnonExclusive but mapped 2 times")


def test_exclusive_fires_on_exclusive_head_of_a_pmd_block_in_two_processes():
    machine, shadow, parent = new_world()
    child = new_child(machine, parent)
    folio = map_shared_pmd_thp(machine, shadow, [parent, child], THP_ADDR)
    assert_healthy(machine, shadow)
    machine.frames.page_anon_exclusive[folio] = True
    assert_only(machine, shadow, "exclusive", f"pfn {folio}: PageAnonExclusive but mapped 2 times")


def test_a_page_folio_beyond_the_frames_is_a_finding_not_a_crash():
    machine, shadow, mm = new_world()
    map_pmd_thp(machine, shadow, mm, THP_ADDR)       # PMD blocks: the exclusive oracle reads folios
    page = map_small_folio(machine, shadow, mm, SMALL_ADDR, 7)
    assert_healthy(machine, shadow)
    machine.frames.page_folio[page] = machine.frames.nr_frames + 5
    assert "refcount" in fired(machine, shadow)


def test_exclusive_fires_on_pinned_page_still_mapped_but_shared():
    machine, shadow, mm = new_world()
    folio = map_small_folio(machine, shadow, mm, SMALL_ADDR, 7)
    machine.ptep_set_wrprotect(mm, SMALL_ADDR)        # read-only, so only the pin rule applies
    pin_id = pin(machine, shadow, mm, SMALL_ADDR, 1, "ro")
    assert_healthy(machine, shadow)
    machine.frames.page_anon_exclusive[folio] = False
    assert_only(machine, shadow, "exclusive", f"pin {pin_id} page 0 (P0 {SMALL_ADDR:#x}): "
                                              f"pinned pfn {folio} still mapped but not exclusive")


def test_exclusive_reads_only_the_head_bit_of_a_pmd_mapped_thp():
    machine, shadow, mm = new_world()
    folio = map_pmd_thp(machine, shadow, mm, THP_ADDR)
    pin(machine, shadow, mm, THP_ADDR + 7 * PAGE_SIZE, 1, "ro")
    machine.frames.page_anon_exclusive[folio + 7] = True   # tail bits carry no meaning here
    assert_healthy(machine, shadow)
    machine.frames.page_anon_exclusive[folio] = False
    found = assert_only(machine, shadow, "exclusive", f"(head pfn {folio})",
                        f"P0 {THP_ADDR:#x}: writable PMD to non-exclusive pfn {folio}")
    assert len(found) == 2


# --- 5. pin -------------------------------------------------------------------

def test_pin_fires_when_the_pinned_page_was_replaced():
    machine, shadow, mm = new_world()
    old = map_small_folio(machine, shadow, mm, SMALL_ADDR, 7)
    pin_id = pin(machine, shadow, mm, SMALL_ADDR, 1)
    assert_healthy(machine, shadow)
    # A COW that should never have happened: the pinned page is unmapped and a copy mapped.
    zap_small(machine, mm, SMALL_ADDR)
    new = map_small_folio(machine, shadow, mm, SMALL_ADDR, 7)
    assert_only(machine, shadow, "pin", f"pin {pin_id} page 0 (P0 {SMALL_ADDR:#x}): pinned pfn {old}, "
                                        f"mapped pfn {new}")


def test_pin_fires_on_unmapped_page_unless_its_process_unmapped_it():
    machine, shadow, mm = new_world()
    map_mthp(machine, shadow, mm, MTHP_ADDR, order=2)
    page = map_small_folio(machine, shadow, mm, SMALL_ADDR, 0)
    pin_id = pin(machine, shadow, mm, MTHP_ADDR, 4)
    small_pin = pin(machine, shadow, mm, SMALL_ADDR, 1)
    assert_healthy(machine, shadow)
    zap_small(machine, mm, SMALL_ADDR)
    assert_only(machine, shadow, "pin", f"pin {small_pin} page 0 (P0 {SMALL_ADDR:#x}): pinned pfn {page}, "
                                        "nothing present there")
    shadow.apply(Op("munmap", mm.pid, SMALL_ADDR, length=PAGE_SIZE), "ok", machine)
    assert shadow.released == {pin_id: set(), small_pin: {0}}
    assert_healthy(machine, shadow)


def test_pin_ignores_pins_of_exited_processes():
    machine, shadow, _, _ = build_mixed_world()
    exited = [p for p in machine.pins.values() if p.pid not in machine.processes]
    assert len(exited) == 1 and shadow.released[exited[0].pin_id] == {0}
    shadow.released[exited[0].pin_id] = set()      # even unreleased, nothing to compare
    assert_healthy(machine, shadow)


# --- 6. data ------------------------------------------------------------------

def test_data_fires_on_a_wrong_word_in_a_page():
    machine, shadow, mm = new_world()
    folio = map_small_folio(machine, shadow, mm, SMALL_ADDR, 7)
    assert_healthy(machine, shadow)
    machine.frames.page_data[folio] = 8
    assert_only(machine, shadow, "data", f"P0 {SMALL_ADDR:#x}: reads 8 (pfn {folio}), wrote 7")


def test_data_fires_on_one_page_of_a_pmd_block():
    machine, shadow, mm = new_world()
    folio = map_pmd_thp(machine, shadow, mm, THP_ADDR)
    assert_healthy(machine, shadow)
    machine.frames.page_data[folio + 300] = 0        # written 300, now reads 0
    machine.frames.page_data[folio + 511] = 4        # never written, now reads 4
    found = assert_only(machine, shadow, "data",
                        f"P0 {THP_ADDR + 300 * PAGE_SIZE:#x}: reads 0 (pfn {folio + 300}), wrote 300",
                        f"P0 {THP_ADDR + 511 * PAGE_SIZE:#x}: reads 4 (pfn {folio + 511}), wrote 0")
    assert len(found) == 2


def test_data_fires_on_a_wrong_swap_slot_word():
    machine, shadow, mm = new_world()
    slot = map_swap(machine, shadow, [mm], SWAP_ADDR, 5)
    assert_healthy(machine, shadow)
    machine.swap.swap_data[slot] = 6
    assert_only(machine, shadow, "data", f"P0 {SWAP_ADDR:#x}: reads 6 (swap slot {slot}), wrote 5")


def test_data_fires_on_written_address_that_lost_its_mapping():
    machine, shadow, mm = new_world()
    map_small_folio(machine, shadow, mm, SMALL_ADDR, 7)
    assert_healthy(machine, shadow)
    shadow.data[0][SMALL_ADDR + PAGE_SIZE] = 9
    assert_only(machine, shadow, "data", f"P0 {SMALL_ADDR + PAGE_SIZE:#x}: wrote 9, but nothing is mapped there")


def test_data_fires_on_a_mapped_page_nobody_wrote():
    machine, shadow, mm = new_world()
    folio = map_small_folio(machine, shadow, mm, SMALL_ADDR, 7)
    del shadow.data[mm.pid][SMALL_ADDR]          # the write never happened: the page must read 0
    assert_only(machine, shadow, "data", f"P0 {SMALL_ADDR:#x}: reads 7 (pfn {folio}), wrote 0")


def test_data_accepts_zero_written_to_an_unmapped_address():
    machine, shadow, mm = new_world()
    map_small_folio(machine, shadow, mm, SMALL_ADDR, 7)
    shadow.data[mm.pid][SMALL_ADDR + PAGE_SIZE] = 0
    assert_healthy(machine, shadow)


def madvise_free_small_folio(machine: Machine, shadow: Shadow, mm: MM, addr: int, folio: int) -> None:
    """What MADV_FREE leaves: the entry old and clean, the folio lazyfree, the word maybe lost."""
    machine.set_pte_at(mm, addr, pte_mkold(pte_mkclean(machine.ptep_get(mm, addr))))
    machine.frames.folio_swapbacked[folio] = False
    shadow.lazy.setdefault(mm.pid, {})[addr] = shadow.data[mm.pid].pop(addr)


def test_data_accepts_a_freed_page_reading_its_word_or_zero():
    machine, shadow, mm = new_world()
    folio = map_small_folio(machine, shadow, mm, SMALL_ADDR, 7)
    madvise_free_small_folio(machine, shadow, mm, SMALL_ADDR, folio)
    assert_healthy(machine, shadow)
    machine.frames.page_data[folio] = 0             # as if discarded and faulted again
    assert_healthy(machine, shadow)
    machine.frames.page_data[folio] = 8
    assert_only(machine, shadow, "data", f"P0 {SMALL_ADDR:#x}: reads 8, wrote 7 before MADV_FREE")


def test_lazyfree_fires_on_a_written_page_mapped_clean_in_a_lazyfree_folio():
    machine, shadow, mm = new_world()
    folio = map_small_folio(machine, shadow, mm, SMALL_ADDR, 7)
    madvise_free_small_folio(machine, shadow, mm, SMALL_ADDR, folio)
    write_shadow(shadow, machine, mm, SMALL_ADDR, 9)   # the store, its dirty bit lost (the planted bug)
    del shadow.lazy[mm.pid][SMALL_ADDR]
    assert_only(machine, shadow, "lazyfree", f"P0 {SMALL_ADDR:#x}: wrote 9 since MADV_FREE",
                f"clean pte entry of lazyfree folio {folio}")
    machine.set_pte_at(mm, SMALL_ADDR, pte_mkdirty(machine.ptep_get(mm, SMALL_ADDR)))
    assert_healthy(machine, shadow)                    # dirty again: reclaim keeps it


def test_lazyfree_fires_on_a_lazyfree_pmd_block_mapped_clean_over_written_pages():
    machine, shadow, mm = new_world()
    folio = map_pmd_thp(machine, shadow, mm, THP_ADDR)
    machine.frames.folio_swapbacked[folio] = False
    machine.set_pmd_at(mm, THP_ADDR, pte_mkclean(machine.pmdp_get(mm, THP_ADDR)))
    assert_only(machine, shadow, "lazyfree", "clean pmd entry of lazyfree folio")


# --- 9. uffd-wp ----------------------------------------------------------------

def write_protect(machine: Machine, shadow: Shadow, mm: MM, addrs: list[int]) -> None:
    """What `wp on` leaves on each address: the uffd-wp bit on a present or swap entry (a PMD
    block as one), a uffd-wp marker on an empty one; the shadow marks each page protected."""
    for addr in addrs:
        level, entry = machine.lookup(mm, addr)
        if level == "pmd":
            machine.set_pmd_at(mm, addr & ~(PMD_SIZE - 1), pte_mkuffd_wp(entry))
        elif pte_present(entry):
            machine.set_pte_at(mm, addr, pte_mkuffd_wp(entry))
        elif entry:
            machine.set_pte_at(mm, addr, pte_swp_mkuffd_wp(entry))
        else:
            machine.set_pte_at(mm, addr, make_pte_marker(PTE_MARKER_UFFD_WP))
        shadow.protected.setdefault(mm.pid, set()).add(addr)


def test_uffd_wp_holds_on_protected_present_swap_pmd_and_empty_pages():
    machine, shadow, mm = new_world()
    map_small_folio(machine, shadow, mm, SMALL_ADDR, 7)
    map_swap(machine, shadow, [mm], SWAP_ADDR, 5)
    map_pmd_thp(machine, shadow, mm, THP_ADDR)
    write_protect(machine, shadow, mm, [SMALL_ADDR, SWAP_ADDR, THP_ADDR + 5 * PAGE_SIZE, MTHP_ADDR])
    assert_healthy(machine, shadow)


def test_uffd_wp_fires_on_a_protected_page_that_lost_its_bit():
    machine, shadow, mm = new_world()
    map_small_folio(machine, shadow, mm, SMALL_ADDR, 7)
    write_protect(machine, shadow, mm, [SMALL_ADDR])
    machine.set_pte_at(mm, SMALL_ADDR, pte_clear_uffd_wp(machine.ptep_get(mm, SMALL_ADDR)))  # the planted bug
    assert_only(machine, shadow, "uffd-wp", f"P0 {SMALL_ADDR:#x}: uffd-wp protected page without the bit")


def test_uffd_wp_fires_on_a_protected_swap_entry_without_its_bit():
    machine, shadow, mm = new_world()
    map_swap(machine, shadow, [mm], SWAP_ADDR, 5)
    write_protect(machine, shadow, mm, [SWAP_ADDR])
    machine.set_pte_at(mm, SWAP_ADDR, pte_swp_clear_uffd_wp(machine.ptep_get(mm, SWAP_ADDR)))
    assert_only(machine, shadow, "uffd-wp", f"P0 {SWAP_ADDR:#x}: uffd-wp protected page")


def test_uffd_wp_fires_on_a_protected_empty_page_whose_marker_went():
    machine, shadow, mm = new_world()
    write_protect(machine, shadow, mm, [MTHP_ADDR])
    machine.ptep_get_and_clear(mm, MTHP_ADDR)
    assert_only(machine, shadow, "uffd-wp", f"P0 {MTHP_ADDR:#x}: uffd-wp protected page without the bit or a marker")


def test_uffd_wp_fires_on_a_write_that_landed_on_a_protected_page():
    machine, shadow, mm = new_world()
    map_small_folio(machine, shadow, mm, SMALL_ADDR, 7)
    write_protect(machine, shadow, mm, [SMALL_ADDR])
    shadow.apply(Op("write", 0, SMALL_ADDR, value=9), "ok", machine)   # the planted bug: the write succeeded
    machine.frames.page_data[machine.page_at(mm, SMALL_ADDR)] = 9
    assert_only(machine, shadow, "uffd-wp", f"P0 {SMALL_ADDR:#x}: a write succeeded on a uffd-wp protected page")


def test_shadow_drops_protection_with_the_content_and_on_wp_off():
    machine, shadow, mm = new_world()
    mm.vmas[0].uffd_ctx = 1
    shadow.apply(Op("wp", 0, SMALL_ADDR, length=4 * PAGE_SIZE, mode="on"), "ok", machine)
    assert shadow.protected[0] == {SMALL_ADDR + i * PAGE_SIZE for i in range(4)}
    shadow.apply(Op("wp", 0, SMALL_ADDR, length=PAGE_SIZE, mode="off"), "ok", machine)
    shadow.apply(Op("dontneed", 0, SMALL_ADDR + PAGE_SIZE, length=PAGE_SIZE), "ok", machine)
    shadow.apply(Op("free", 0, SMALL_ADDR + 2 * PAGE_SIZE, length=PAGE_SIZE), "ok", machine)
    assert shadow.protected[0] == {SMALL_ADDR + 3 * PAGE_SIZE}
    shadow.apply(Op("write", 0, SMALL_ADDR, value=1), "ok", machine)
    assert shadow.landed == []


def test_data_follows_fork_in_each_process():
    machine, shadow, parent = new_world()
    child = new_child(machine, parent)
    map_shared_small(machine, shadow, [parent, child], SMALL_ADDR, 7)
    assert_healthy(machine, shadow)
    shadow.data[child.pid][SMALL_ADDR] = 8      # the child's shadow diverges, its page did not
    assert_only(machine, shadow, "data", f"P1 {SMALL_ADDR:#x}: reads 7")


# --- 7. layout ----------------------------------------------------------------

def test_layout_fires_on_half_folded_contpte_block():
    machine, shadow, mm = new_world()
    map_mthp(machine, shadow, mm, MTHP_ADDR)
    assert_healthy(machine, shadow)
    table = mm.pte_table(MTHP_ADDR)
    first = (MTHP_ADDR % PMD_SIZE) // PAGE_SIZE
    table.entries[first + 8:first + 16] &= ~np.uint64(PTE_CONT)
    assert_only(machine, shadow, "layout", f"P0 {MTHP_ADDR:#x}: contpte block not validly folded (CONT on 8/16")


def test_layout_passes_a_folded_block_whose_entries_differ_in_young_and_dirty():
    machine, shadow, mm = new_world()
    map_mthp(machine, shadow, mm, MTHP_ADDR)
    table = mm.pte_table(MTHP_ADDR)
    first = (MTHP_ADDR % PMD_SIZE) // PAGE_SIZE
    table.entries[first + 3] = pte_mkold(pte_mkclean(int(table.entries[first + 3])))   # as the MMU leaves them
    assert_healthy(machine, shadow)


def test_layout_fires_on_folded_block_with_mixed_write():
    machine, shadow, mm = new_world()
    map_mthp(machine, shadow, mm, MTHP_ADDR)
    table = mm.pte_table(MTHP_ADDR)
    first = (MTHP_ADDR % PMD_SIZE) // PAGE_SIZE
    table.entries[first + 3] = pte_wrprotect(int(table.entries[first + 3]))
    assert_only(machine, shadow, "layout", "not validly folded (CONT on 16/16")


def test_layout_passes_an_eligible_block_left_unfolded():
    machine, shadow, mm = new_world()
    map_mthp(machine, shadow, mm, MTHP_ADDR)
    table = mm.pte_table(MTHP_ADDR)
    table.entries[:] &= ~np.uint64(PTE_CONT)   # as after a reuse unfolded it: the kernel does not refold
    assert_healthy(machine, shadow)


def test_layout_passes_a_folded_block_across_two_vmas():
    machine, shadow, mm = new_world()
    map_mthp(machine, shadow, mm, MTHP_ADDR)
    vma = mm.find_vma(MTHP_ADDR)
    assert vma is not None
    split_at = MTHP_ADDR + 8 * PAGE_SIZE
    upper = VMA(split_at, vma.end, vma.writable, vma.lineage, anon_vma=vma.anon_vma)
    vma.end = split_at
    mm.vma_insert(upper)   # as a userfaultfd registration of half the block splits it, writing no PTE
    assert_healthy(machine, shadow)


def test_layout_fires_on_cont_bit_in_a_block_of_one_pte():
    machine, shadow, mm = new_world()
    map_small_folio(machine, shadow, mm, SMALL_ADDR, 7)
    assert_healthy(machine, shadow)
    table = mm.pte_table(SMALL_ADDR)
    table.entries[(SMALL_ADDR % PMD_SIZE) // PAGE_SIZE] |= np.uint64(PTE_CONT)
    assert_only(machine, shadow, "layout", f"P0 {SMALL_ADDR:#x}: contpte block not validly folded (CONT on 1/16")


def test_layout_fires_on_leaf_outside_a_vma():
    machine, shadow, mm = new_world()
    map_small_folio(machine, shadow, mm, SMALL_ADDR, 7)
    map_swap(machine, shadow, [mm], SWAP_ADDR, 5)
    assert_healthy(machine, shadow)
    mm.vmas[0].start = SMALL_ADDR + PAGE_SIZE
    mm.vmas[0].end = SWAP_ADDR
    found = assert_only(machine, shadow, "layout", f"P0 {SMALL_ADDR:#x}: PTE outside any VMA",
                        f"P0 {SWAP_ADDR:#x}: swap PTE outside any VMA")
    assert len(found) == 2


def test_layout_fires_on_pmd_block_crossing_a_vma_edge():
    machine, shadow, mm = new_world()
    map_pmd_thp(machine, shadow, mm, THP_ADDR)
    assert_healthy(machine, shadow)
    mm.vma_split(mm.vmas[0], THP_ADDR + PMD_SIZE // 2)
    assert_only(machine, shadow, "layout", f"P0 {THP_ADDR:#x}: PMD block outside a single VMA")


def test_layout_fires_on_pmd_block_mapping_a_small_folio():
    machine, shadow, mm = new_world()
    folio = new_anon_folio(machine, 0, THP_ADDR)
    machine.frames.folio_refcount[folio] = 1
    machine.frames.page_anon_exclusive[folio] = True
    machine.set_pmd_at(mm, THP_ADDR, pte_pmd(faulted_pte(folio)))
    mm.rss_anon += HPAGE_PMD_NR
    assert_only(machine, shadow, "layout", f"P0 {THP_ADDR:#x}: PMD block maps pfn {folio}, "
                                           "not the head of an order-9 folio")


def test_layout_fires_on_overlapping_vmas():
    machine, shadow, mm = new_world()
    map_small_folio(machine, shadow, mm, SMALL_ADDR, 7)
    assert_healthy(machine, shadow)
    mm.vmas.append(VMA(VMA_END - PAGE_SIZE, VMA_END + PAGE_SIZE, True, 1))
    assert_only(machine, shadow, "layout", "overlaps VMA")


def test_layout_reports_unsorted_vmas_but_finds_the_leaves_inside_them():
    machine, shadow, mm = new_world()
    mm.vma_insert(VMA(VMA_END, VMA_END + PMD_SIZE, True, machine.lineage_alloc()))
    map_small_folio(machine, shadow, mm, SMALL_ADDR, 7)
    map_small_folio(machine, shadow, mm, VMA_END, 8)
    assert_healthy(machine, shadow)
    mm.vmas.reverse()
    assert assert_only(machine, shadow, "layout", "not sorted before or overlaps") == [
        f"P0 VMA {VMA_END:#x}-{VMA_END + PMD_SIZE:#x}: not sorted before or overlaps VMA {VMA_START:#x}-{VMA_END:#x}"]


# --- reporting ----------------------------------------------------------------

def test_many_alike_failures_are_summarised():
    machine, shadow, mm = new_world()
    machine.frames.page_data[1000:1100] = 1
    found = details(machine, shadow)
    assert len(found) == 17 and found[-1] == "... and 84 more like the above"


def test_oracle_failure_is_a_frozen_value():
    failure = OracleFailure("data", "P0 0x0: reads 1")
    with pytest.raises(AttributeError):
        failure.oracle = "pin"
    assert failure == OracleFailure("data", "P0 0x0: reads 1")


# --- the shadow ---------------------------------------------------------------

def test_shadow_write_stores_only_on_success():
    machine, shadow, _ = new_world()
    shadow.apply(Op("write", 0, 0x1000, value=5), "ok", machine)
    shadow.apply(Op("write", 0, 0x2000, value=6), "EFAULT", machine)
    assert shadow.data == {0: {0x1000: 5}}
    assert shadow.read(0, 0x1000) == 5 and shadow.read(0, 0x2000) == 0 and shadow.read(3, 0) == 0


@pytest.mark.parametrize("length", [PAGE_SIZE, 2 * PAGE_SIZE, 1 << 40])
def test_shadow_munmap_and_dontneed_drop_the_range(length):
    machine, shadow, _ = new_world()
    shadow.data[0] = {0x1000: 1, 0x2000: 2, 0x3000: 3, 0x5000: 4}
    shadow.apply(Op("munmap", 0, 0x2000, length=length), "ok", machine)
    expected = {0x1000: 1} if length > 2 * PAGE_SIZE else {0x1000: 1, 0x3000: 3, 0x5000: 4}
    if length == PAGE_SIZE:
        expected[0x3000] = 3
    if length == 2 * PAGE_SIZE:
        del expected[0x3000]
    assert shadow.data[0] == expected
    shadow.apply(Op("dontneed", 0, 0x1000, length=PAGE_SIZE), "ENOMEM", machine)
    assert 0x1000 not in shadow.data[0]


def test_shadow_marks_released_pages_of_pins_in_the_range():
    machine, shadow, mm = new_world()
    map_mthp(machine, shadow, mm, MTHP_ADDR)
    first = pin(machine, shadow, mm, MTHP_ADDR, 8)
    second = pin(machine, shadow, mm, MTHP_ADDR + 8 * PAGE_SIZE, 4)
    shadow.apply(Op("dontneed", 0, MTHP_ADDR + 6 * PAGE_SIZE, length=3 * PAGE_SIZE), "ok", machine)
    assert shadow.released == {first: {6, 7}, second: {0}}
    shadow.apply(Op("unpin", pin_id=first), "ok", machine)
    shadow.apply(Op("unpin", pin_id=second), "EINVAL", machine)
    assert shadow.released == {second: {0}}


def test_shadow_fork_copies_and_exit_drops():
    machine, shadow, parent = new_world()
    shadow.data[0] = {0x1000: 1}
    child = new_child(machine, parent)
    shadow.apply(Op("fork", 0), "ok", machine)
    shadow.data[child.pid][0x1000] = 2
    assert shadow.data == {0: {0x1000: 1}, 1: {0x1000: 2}}
    shadow.apply(Op("fork", 0), "ENOMEM", machine)
    assert set(shadow.data) == {0, 1}
    machine.pin_add(child.pid, 0x1000, "rw", (1, 2, 3))
    shadow.apply(Op("pin", child.pid, 0x1000, nr_pages=3, prot="rw"), "ok", machine)
    shadow.apply(Op("exit", child.pid), "ok", machine)
    assert shadow.data == {0: {0x1000: 1}} and shadow.released == {0: {0, 1, 2}}


def test_shadow_clone_is_independent():
    shadow = Shadow()
    shadow.data[0] = {0x1000: 1}
    shadow.released[0] = {1}
    other = shadow.clone()
    other.data[0][0x1000] = 2
    other.released[0].add(2)
    assert shadow.data == {0: {0x1000: 1}} and shadow.released == {0: {1}}


def test_layout_accepts_leaves_at_the_top_of_the_address_space():
    machine, shadow, parent = new_world()
    child = new_child(machine, parent)                # P1: an odd pid, whose key bit 48 is set
    top = (1 << 48) - PAGE_SIZE
    child.vma_insert(VMA(top - PAGE_SIZE, 1 << 48, True, 1))
    map_small_folio(machine, shadow, child, top, 3)
    assert_healthy(machine, shadow)
    child.vmas[-1].end = top
    assert_only(machine, shadow, "layout", f"P1 {top:#x}: PTE outside any VMA")


# --- the registry and the scan's remembered contpte verdicts -------------------

def test_each_oracle_states_its_rule_first_in_spec_order():
    for number, (name, oracle) in enumerate(ORACLES.items(), 1):
        assert oracle.rule.startswith(f"Rule {number}, {name}: "), oracle.rule


def test_contpte_verdicts_kept_across_scans_ask_the_machine_only_about_unseen_blocks():
    from fuzz.judge.scan import ContpteVerdicts

    machine, shadow, mm = new_world()
    map_mthp(machine, shadow, mm, MTHP_ADDR)
    asked = []
    judge = machine.contpte_blocks_valid

    def counting_judge(entries):
        asked.append(len(entries))
        return judge(entries)

    machine.contpte_blocks_valid = counting_judge
    verdicts = ContpteVerdicts()
    assert check_oracles(machine, shadow, verdicts) == []
    assert asked and len(verdicts.verdicts) == 1
    asked.clear()
    assert check_oracles(machine, shadow, verdicts) == []
    assert asked == []                                      # the same block: remembered
    table = mm.pte_table(MTHP_ADDR)
    first = (MTHP_ADDR % PMD_SIZE) // PAGE_SIZE
    table.entries[first + 8:first + 16] &= ~np.uint64(PTE_CONT)
    assert [failure.oracle for failure in check_oracles(machine, shadow, verdicts)] == ["layout"]
    assert asked and len(verdicts.verdicts) == 2            # a new block: judged and remembered


def test_contpte_verdicts_are_forgotten_past_their_limit():
    from fuzz.judge.scan import ContpteVerdicts

    machine, shadow, mm = new_world()
    map_mthp(machine, shadow, mm, MTHP_ADDR)
    verdicts = ContpteVerdicts(limit=1)
    verdicts.verdicts[b"another block"] = True
    assert check_oracles(machine, shadow, verdicts) == []
    assert list(verdicts.verdicts.values()) == [True] and b"another block" not in verdicts.verdicts


# --- 9. zero page -------------------------------------------------------------

ZERO_ADDR = 0x500000


def map_zero_page(machine: Machine, mm: MM, addr: int) -> int:
    """What a read fault maps: the special zero-page PTE from vm_page_prot, nothing counted."""
    pte = pte_mkspecial(pfn_pte(machine.frames.zero_pfn, vm_get_page_prot(True)))
    machine.set_pte_at(mm, addr, pte)
    return pte


def test_zero_page_entries_are_healthy_and_count_nowhere():
    machine, shadow, mm = new_world()
    map_zero_page(machine, mm, ZERO_ADDR)
    child = new_child(machine, mm)
    machine.set_pte_at(child, ZERO_ADDR, pte_mkold(map_zero_page(machine, mm, ZERO_ADDR)))
    assert_healthy(machine, shadow)


def test_zero_page_fires_on_a_writable_or_dirty_zero_page_entry():
    machine, shadow, mm = new_world()
    pte = map_zero_page(machine, mm, ZERO_ADDR)
    machine.set_pte_at(mm, ZERO_ADDR, pte_mkwrite(pte_mkdirty(pte)))
    assert_only(machine, shadow, "zero_page", f"P0 {ZERO_ADDR:#x}: zero-page PTE", "is writable or dirty")


def test_zero_page_fires_on_a_special_entry_of_a_folio():
    machine, shadow, mm = new_world()
    map_small_folio(machine, shadow, mm, SMALL_ADDR, 7)
    machine.set_pte_at(mm, SMALL_ADDR, pte_mkspecial(machine.ptep_get(mm, SMALL_ADDR)))
    assert "special PTE maps pfn" in " ".join(ORACLES["zero_page"](machine, shadow))


def test_zero_page_taken_for_a_folio_fires_in_the_accounting_oracles():
    machine, shadow, mm = new_world()
    machine.set_pte_at(mm, ZERO_ADDR, pfn_pte(machine.frames.zero_pfn, vm_get_page_prot(True)))  # not special
    mm.rss_anon += 1
    assert "the zero page taken for a folio" in " ".join(ORACLES["refcount"](machine, shadow))
    assert "without PTE_SPECIAL maps reserved pfn" in " ".join(ORACLES["zero_page"](machine, shadow))


def test_zero_page_fires_on_a_count_or_word_on_a_reserved_frame():
    machine, shadow, mm = new_world()
    map_zero_page(machine, mm, ZERO_ADDR)
    frames = machine.frames
    frames.page_mapcount[frames.zero_pfn] = 1          # rmap on the zero page (a batched zap or fork bug)
    frames.folio_refcount[frames.zero_pfn] = 1
    found = assert_only(machine, shadow, "zero_page", f"pfn {frames.zero_pfn} (zero page): page_mapcount 1",
                        "folio_refcount 1")
    assert len(found) == 2
    machine, shadow, mm = new_world()
    map_zero_page(machine, mm, ZERO_ADDR)
    machine.frames.page_data[machine.frames.zero_pfn] = 9   # a store through the zero page
    failures = {failure.oracle for failure in check_oracles(machine, shadow)}
    assert failures == {"zero_page", "data"}
    machine, shadow, mm = new_world()
    machine.frames.folio_pincount[machine.frames.huge_zero_pfn] = 1
    assert_only(machine, shadow, "zero_page", "(huge zero folio): folio_pincount 1")


def test_zero_page_fires_on_a_pin_of_the_zero_page():
    machine, shadow, mm = new_world()
    map_zero_page(machine, mm, ZERO_ADDR)
    machine.pin_add(mm.pid, ZERO_ADDR, "ro", (machine.frames.zero_pfn,))
    assert "pins the zero page" in " ".join(ORACLES["zero_page"](machine, shadow))


def test_mapcount_fires_when_the_zero_page_counts_in_rss():
    machine, shadow, mm = new_world()
    map_zero_page(machine, mm, ZERO_ADDR)
    mm.rss_anon += 1
    assert_only(machine, shadow, "mapcount", "P0: MM_ANONPAGES 1, present pages found 0")


# --- 3 and 4 with a large folio in the swap cache (docs/model.md #100-#108) ---------

LARGE_SWAP_CACHE = """\
mmap P0 0x200000 64K
fault P0 0x200000 order=4
write P0 0x202000 4
write P0 0x205000 6
reclaim P0 0x200000
fork P0
fault P0 0x200000 order=4
dontneed P1 0x200000 4K
read P1 0x205000
"""


def large_swap_cache_world() -> tuple[Machine, Shadow, int, int]:
    """P0 maps a shared run swapped in whole (page 0 copied); P1 maps its page 5 alone, its
    other entries still referencing the folio's slots: the folio stays in the swap cache."""
    machine = Machine()
    kernel = Kernel(machine)
    shadow = Shadow()
    for step in parse_script(LARGE_SWAP_CACHE).steps:
        assert isinstance(step, Op)
        assert OP_DISPATCH[step.name](kernel, step) == "ok", step
        shadow.apply(step, "ok", machine)
    folio = int(machine.frames.page_folio[int(pte_pfn(machine.ptep_get(machine.processes[1], 0x205000)))])
    return machine, shadow, folio, int(machine.frames.folio_swap[folio])


def test_a_large_swap_cache_folio_is_healthy():
    machine, shadow, folio, slot = large_swap_cache_world()
    assert machine.frames.folio_order[folio] == 4 and slot != 0
    assert_healthy(machine, shadow)


def test_exclusive_fires_on_a_large_swap_cache_page_mapped_twice_as_exclusive():
    machine, shadow, folio, _slot = large_swap_cache_world()
    machine.frames.page_anon_exclusive[folio + 5] = True   # shared_swapin_maps_exclusive's state
    found = {failure.oracle: failure.detail for failure in check_oracles(machine, shadow)}
    assert f"pfn {folio + 5}: PageAnonExclusive but mapped 2 times" in details(machine, shadow)
    assert {"exclusive", "swap"} <= set(found)


def test_swap_fires_on_a_large_swap_cache_folio_whose_slots_disagree():
    machine, shadow, folio, slot = large_swap_cache_world()
    machine.swap.swap_cache[slot + 3] = -1   # one slot of the run no longer names the folio
    machine.frames.folio_refcount[folio] -= 1
    assert any(f"folio {folio}: folio->swap {slot} (order 4), but the swap cache holds" in detail
               for detail in details(machine, shadow))


def test_swap_fires_on_a_large_swap_cache_page_mapped_for_another_slot():
    machine, shadow, folio, _slot = large_swap_cache_world()
    p1 = machine.processes[1]
    entry = machine.ptep_get(p1, 0x205000)
    machine.set_pte_at(p1, 0x205000, entry + (1 << 12))   # P1's slot-5 address maps page 6
    machine.frames.page_mapcount[folio + 5] -= 1
    machine.frames.page_mapcount[folio + 6] += 1
    assert check_oracles(machine, shadow)


# --- 9. zero page: the huge zero folio (issue 15) --------------------------------

HUGE_ZERO_ADDR = 0x600000    # 2 MiB aligned, inside the VMA


def map_huge_zero_pmd(machine: Machine, mm: MM, addr: int) -> int:
    """What a read fault of order 9 maps: the special huge zero PMD from vm_page_prot."""
    pmd = pte_pmd(pte_mkspecial(pfn_pte(machine.frames.huge_zero_pfn, vm_get_page_prot(True))))
    machine.set_pmd_at(mm, addr, pmd)
    return pmd


def test_huge_zero_pmd_is_healthy_and_counts_nowhere():
    machine, shadow, mm = new_world()
    map_huge_zero_pmd(machine, mm, HUGE_ZERO_ADDR)
    child = new_child(machine, mm)
    machine.set_pmd_at(child, HUGE_ZERO_ADDR, pte_mkold(map_huge_zero_pmd(machine, mm, HUGE_ZERO_ADDR)))
    assert_healthy(machine, shadow)


def test_zero_page_fires_on_a_writable_or_dirty_huge_zero_pmd():
    machine, shadow, mm = new_world()
    pmd = map_huge_zero_pmd(machine, mm, HUGE_ZERO_ADDR)
    machine.set_pmd_at(mm, HUGE_ZERO_ADDR, pte_mkwrite(pte_mkdirty(pmd)))
    assert_only(machine, shadow, "zero_page", f"P0 {HUGE_ZERO_ADDR:#x}: zero-page PMD", "is writable or dirty")


def test_zero_page_fires_on_the_huge_zero_folio_taken_for_a_thp():
    machine, shadow, mm = new_world()
    pmd = pte_pmd(pfn_pte(machine.frames.huge_zero_pfn, vm_get_page_prot(True)))   # not special
    machine.set_pmd_at(mm, HUGE_ZERO_ADDR, pmd)
    assert "PMD without PTE_SPECIAL maps reserved pfn" in " ".join(ORACLES["zero_page"](machine, shadow))


def test_zero_page_fires_on_rmap_of_the_huge_zero_folio():
    """The planted bug huge_zero_pmd_as_folio's state: a fork took the huge zero PMD for an anon
    THP's, an entire mapping and a reference on the huge zero folio's head."""
    machine, shadow, mm = new_world()
    map_huge_zero_pmd(machine, mm, HUGE_ZERO_ADDR)
    frames = machine.frames
    frames.folio_entire_mapcount[frames.huge_zero_pfn] = 1
    frames.folio_refcount[frames.huge_zero_pfn] = 1
    found = assert_only(machine, shadow, "zero_page", "(huge zero folio): folio_entire_mapcount 1",
                        "(huge zero folio): folio_refcount 1")
    assert len(found) == 2


def test_uffd_wp_holds_and_fires_on_a_protected_huge_zero_pmd():
    machine, shadow, mm = new_world()
    map_huge_zero_pmd(machine, mm, HUGE_ZERO_ADDR)
    write_protect(machine, shadow, mm, [HUGE_ZERO_ADDR + 3 * PAGE_SIZE])
    assert_healthy(machine, shadow)
    machine.set_pmd_at(mm, HUGE_ZERO_ADDR, pte_clear_uffd_wp(machine.pmdp_get(mm, HUGE_ZERO_ADDR)))
    assert_only(machine, shadow, "uffd-wp",
                f"P0 {HUGE_ZERO_ADDR + 3 * PAGE_SIZE:#x}: uffd-wp protected page without the bit")
