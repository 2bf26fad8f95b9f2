"""The oracles over file-backed memory: each holds on states the reference leaves after file
ops, and each fires on a planted page-cache bug (docs/model.md, file-backed memory)."""

from __future__ import annotations

from fuzz.implementation import OP_DISPATCH
from fuzz.judge.oracles import check_oracles
from fuzz.judge.shadow import Shadow
from fuzz.script.ops import Op, parse_script
from machine import Machine
from reference import Kernel

SHARED = 0x100000     # F0, a regular file of 64 KiB, mapped shared
PRIVATE = 0x300000    # F0 again, private
SHMEM = 0x200000      # F1, a 16 KiB shmem file, mapped shared

WORLD = f"""\
file F0 64K
file F1 16K shmem
mmap P0 {SHARED:#x} 64K file=F0 shared
mmap P0 {PRIVATE:#x} 64K file=F0
mmap P0 {SHMEM:#x} 16K file=F1 shared
fault P0 {SHARED:#x} order=4
write P0 {SHARED + 0x1000:#x} 7
write P0 {SHMEM:#x} 9
read P0 {PRIVATE + 0x1000:#x}
write P0 {PRIVATE + 0x2000:#x} 5
"""


def world(extra: str = "") -> tuple[Machine, Shadow]:
    """The reference's machine and the harness's shadow after WORLD and extra."""
    machine = Machine()
    kernel = Kernel(machine)
    shadow = Shadow()
    for step in parse_script(WORLD + extra).steps:
        assert isinstance(step, Op)
        result = OP_DISPATCH[step.name](kernel, step)
        assert result == "ok" or (step.name == "reclaim" and result == "EBUSY"), (step, result)
        shadow.apply(step, result, machine)
    return machine, shadow


def failures(machine: Machine, shadow: Shadow) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for failure in check_oracles(machine, shadow):
        found.setdefault(failure.oracle, []).append(failure.detail)
    return found


def assert_fires(machine: Machine, shadow: Shadow, oracle: str, detail: str) -> None:
    found = failures(machine, shadow)
    assert any(detail in text for text in found.get(oracle, [])), found


def test_file_states_keep_every_oracle() -> None:
    for extra in ("", "sync F0\n", f"reclaim P0 {SHARED:#x}\n", f"reclaim P0 {SHMEM:#x}\n",
                  f"fork P0\nexit P0\nread P1 {SHARED + 0x1000:#x}\n", f"try_to_unmap P0 {SHARED:#x}\n",
                  f"pin P0 {SHARED:#x} 2 ro\nreclaim P0 {SHARED:#x}\n"):
        machine, shadow = world(extra)
        assert failures(machine, shadow) == {}, extra


def test_pagecache_fires_on_a_folio_missing_from_one_of_its_slots() -> None:
    machine, shadow = world()
    folio = machine.files[0].cache[3]
    del machine.files[0].cache[3]
    assert_fires(machine, shadow, "pagecache", f"F0: folio {folio} at index 0 missing from slots [3]")


def test_pagecache_fires_on_a_folio_whose_mapping_names_no_cache() -> None:
    machine, shadow = world()
    folio = machine.files[1].cache[0]
    machine.frames.folio_mapping[folio] = 3
    assert_fires(machine, shadow, "pagecache", f"F1 index 0: folio {folio} says mapping 2, index 0")
    assert_fires(machine, shadow, "pagecache", f"folio {folio}: mapping F2 but not in that page cache")


def test_refcount_fires_on_a_page_cache_reference_too_many() -> None:
    machine, shadow = world()
    folio = machine.files[0].cache[0]
    machine.frames.folio_refcount[folio] += 1
    assert_fires(machine, shadow, "refcount", f"folio {folio} (order 4): refcount 48, mappings 31 "
                 "+ pin references 0 + page-cache references 16 + swap-cache references 0 = 47")


def test_mapcount_fires_on_a_wrong_mm_filepages() -> None:
    machine, shadow = world()
    machine.processes[0].rss_file -= 1
    assert_fires(machine, shadow, "mapcount", "P0: MM_FILEPAGES")


def test_swap_fires_on_a_shmem_swap_entry_the_slot_does_not_count() -> None:
    machine, shadow = world(f"reclaim P0 {SHMEM:#x}\n")
    slot = machine.files[1].swap[0]
    machine.swap.swap_count[slot] += 1
    assert_fires(machine, shadow, "swap", f"slot {slot}: count 2, swap entries found 1")


def test_data_fires_on_a_word_lost_by_writeback() -> None:
    """A written shared-file page reads back its word after reclaim: here the disk lost it."""
    machine, shadow = world(f"reclaim P0 {SHARED:#x}\n")
    assert machine.files[0].disk[1] == 7
    machine.files[0].disk[1] = 0
    assert_fires(machine, shadow, "data", "F0 index 1: holds 0 (disk), wrote 7")


def test_data_fires_on_a_shmem_word_lost_in_swap() -> None:
    machine, shadow = world(f"reclaim P0 {SHMEM:#x}\n")
    machine.swap.swap_data[machine.files[1].swap[0]] = 0
    assert_fires(machine, shadow, "data", "F1 index 0: holds 0 (swap slot")


def test_data_fires_on_a_private_mapping_that_reads_a_stale_file_word() -> None:
    machine, shadow = world()
    page = machine.page_at(machine.processes[0], PRIVATE + 0x1000)
    machine.frames.page_data[page] = 3
    assert_fires(machine, shadow, "data", f"P0 {PRIVATE + 0x1000:#x}: reads 3")
