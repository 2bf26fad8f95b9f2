"""batched/internal.py: folio_pte_batch's boundaries and flags, sub-batches, swap batches.

folio_pte_batch's tests run on batched's vectorised version and on the kernel's own C
(kernel-c: folio_pte_batch_flags() with arm64's accessors on the machine's table), which
is skipped, saying why, where it cannot be built.
"""

from __future__ import annotations

import numpy as np
import pytest

from batched.internal import (
    FPB_FORK,
    FPB_UNMAP,
    FPB_ZAP,
    add_at,
    distinct,
    split_batches_by,
    swap_pte_batch,
    totals_by_value,
)
from batched.internal import folio_pte_batch as batched_folio_pte_batch
from fuzz.errors import UsageError
from machine import Machine
from machine.pgtable import (
    PAGE_SHIFT,
    PTE_AF,
    PTE_CONT,
    pfn_pte,
    pte_mkclean,
    pte_mkold,
    pte_swp_mkexclusive,
    pte_write,
    pte_wrprotect,
    swp_entry_to_pte,
)
from tests.pte_values import BASE_PROT, fault_pte

TABLE = 0x200000


def machine_with_folios(*orders: int) -> tuple[Machine, list[int]]:
    machine = Machine(4096)
    return machine, [machine.frames.folio_alloc(order) for order in orders]


def ptes_of(values) -> np.ndarray:
    return np.array(values, np.uint64)


def kernelc_folio_pte_batch():
    try:
        import kernelc
    except UsageError as error:
        pytest.skip(f"kernel-c unavailable: {error}")
    return kernelc.PTE_BATCH.folio_pte_batch


@pytest.fixture(params=["batched", "kernel-c"])
def folio_pte_batch(request):
    """folio_pte_batch(machine, addr, values, flags): values written as they are (__set_pte,
    CONT included) into a process's PTE table from its start, then batched from addr."""
    implementation = batched_folio_pte_batch if request.param == "batched" else kernelc_folio_pte_batch()

    def batch(machine: Machine, addr: int, values, flags: int, nr_ptes: int | None = None):
        mm = machine.mm_alloc()
        for index, value in enumerate(values):
            machine.set_pte_raw(mm, TABLE + (index << PAGE_SHIFT), int(value))
        first = (addr - TABLE) >> PAGE_SHIFT
        nr_ptes = len(values) - first if nr_ptes is None else nr_ptes
        return implementation(machine, mm, addr, machine.ptes_get(mm, addr, nr_ptes), flags)

    return batch


def test_a_batch_stops_at_the_folio_end_even_with_consecutive_pfns(folio_pte_batch):
    machine, (first, second) = machine_with_folios(4, 4)
    assert second == first + 16
    batches = folio_pte_batch(machine, TABLE, ptes_of([fault_pte(first + i) for i in range(32)]), FPB_ZAP)
    assert list(batches.nr_pages) == [16, 16]
    assert list(batches.folio) == [first, second]


def test_a_batch_covers_only_the_range_it_is_given(folio_pte_batch):
    machine, (folio,) = machine_with_folios(4)
    ptes = ptes_of([fault_pte(folio + i) for i in range(16)])
    batches = folio_pte_batch(machine, TABLE + 4 * 4096, ptes, FPB_ZAP, nr_ptes=6)  # a VMA ending mid-folio
    assert list(batches.runs.index) == [4] and list(batches.nr_pages) == [6]
    assert list(batches.page) == [folio + 4]


def test_zap_ignores_dirty_write_and_young_unmap_respects_write(folio_pte_batch):
    machine, (folio,) = machine_with_folios(2)
    values = [fault_pte(folio), pte_wrprotect(fault_pte(folio + 1)), pte_mkold(pte_wrprotect(fault_pte(folio + 2))),
              pte_mkclean(pte_wrprotect(fault_pte(folio + 3)))]
    assert list(folio_pte_batch(machine, TABLE, ptes_of(values), FPB_ZAP).nr_pages) == [4]
    assert list(folio_pte_batch(machine, TABLE, ptes_of(values), FPB_UNMAP).nr_pages) == [1, 3]


def test_fork_respects_dirty_and_merges_write_into_the_template(folio_pte_batch):
    machine, (folio,) = machine_with_folios(2)
    read_only = pte_wrprotect(fault_pte(folio))            # dirty, not writable
    values = [read_only, fault_pte(folio + 1), fault_pte(folio + 2), pte_mkclean(read_only) + (3 << PAGE_SHIFT)]
    batches = folio_pte_batch(machine, TABLE, ptes_of(values), FPB_FORK)
    assert list(batches.nr_pages) == [3, 1]                # the clean one is its own batch
    assert pte_write(int(batches.pte[0]))                  # merged: a later entry was writable
    assert not pte_write(int(values[0]))


def test_the_arm64_hint_carries_a_folded_block_without_comparing(folio_pte_batch):
    machine, (folio,) = machine_with_folios(4)
    values = [fault_pte(folio + i) | PTE_CONT for i in range(16)]
    values[5] = pfn_pte(folio + 5, BASE_PROT) | PTE_CONT  # not writable: would end an unmap batch
    assert list(folio_pte_batch(machine, TABLE, ptes_of(values), FPB_UNMAP).nr_pages) == [16]
    unfolded = [value & ~PTE_CONT for value in values]
    assert list(folio_pte_batch(machine, TABLE, ptes_of(unfolded), FPB_UNMAP).nr_pages) == [5, 1, 10]


def test_non_present_entries_and_small_folios_end_batches(folio_pte_batch):
    machine, (small, large) = machine_with_folios(0, 2)
    values = [fault_pte(small), fault_pte(large), 0, fault_pte(large + 2), fault_pte(large + 3)]
    batches = folio_pte_batch(machine, TABLE, ptes_of(values), FPB_ZAP)
    assert list(batches.runs.index) == [0, 1, 3] and list(batches.nr_pages) == [1, 1, 2]


def test_sub_batches_split_where_exclusivity_changes(folio_pte_batch):
    machine, (folio,) = machine_with_folios(4)
    batches = folio_pte_batch(machine, TABLE, ptes_of([fault_pte(folio + i) for i in range(16)]), FPB_UNMAP)
    exclusive = np.zeros(16, bool)
    exclusive[3] = exclusive[10:12] = True
    sub, flags = split_batches_by(batches, exclusive)
    assert list(sub.nr_pages) == [3, 1, 6, 2, 4]
    assert list(flags) == [False, True, False, True, False]
    assert list(sub.page) == [folio, folio + 3, folio + 4, folio + 10, folio + 12]
    assert [int(pte) >> PAGE_SHIFT & 0xfffff for pte in sub.pte] == \
        [folio, folio + 3, folio + 4, folio + 10, folio + 12]


def test_swap_batches_need_consecutive_slots_and_equal_marker():
    entries = [swp_entry_to_pte(8), swp_entry_to_pte(9), pte_swp_mkexclusive(swp_entry_to_pte(10)),
               pte_swp_mkexclusive(swp_entry_to_pte(11)), swp_entry_to_pte(20), 0, swp_entry_to_pte(21)]
    batches = swap_pte_batch(TABLE, ptes_of(entries))
    assert list(batches.nr_pages) == [2, 2, 1, 1]
    assert list(batches.slot) == [8, 10, 20, 21]
    assert list(batches.slots()) == [8, 9, 10, 11, 20, 21]


def test_young_alone_never_splits_a_batch(folio_pte_batch):
    machine, (folio,) = machine_with_folios(2)
    values = [fault_pte(folio + i) & ~PTE_AF if i % 2 else fault_pte(folio + i) for i in range(4)]
    for flags in (FPB_ZAP, FPB_FORK, FPB_UNMAP):
        assert list(folio_pte_batch(machine, TABLE, ptes_of(values), flags).nr_pages) == [4]


# --- the cheap replacements for np.unique and ufunc.at ------------------------

@pytest.mark.parametrize("values", [[], [5], [1, 2, 9], [9, 2, 2, 1, 9], [3, 3, 3], [4, 1]])
def test_distinct_and_totals_match_numpy_unique(values):
    values = np.array(values, np.int64)
    counts = np.arange(1, len(values) + 1, dtype=np.int64)
    assert np.array_equal(distinct(values), np.unique(values))
    unique, inverse = np.unique(values, return_inverse=True)
    expected = np.bincount(inverse, weights=counts, minlength=len(unique)).astype(np.int64)
    got_values, got_totals = totals_by_value(values, counts)
    assert np.array_equal(got_values, unique) and np.array_equal(got_totals, expected)


def test_add_at_adds_once_per_occurrence_in_the_array_dtype():
    array = np.zeros(8, np.int32)
    add_at(array, np.array([3, 1, 3, 3]), 2)
    add_at(array, np.array([1]), -1)
    assert array.tolist() == [0, 1, 0, 6, 0, 0, 0, 0] and array.dtype == np.int32
