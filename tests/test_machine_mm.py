"""Processes, VMAs, page-table walks and the machine's primitives (SPEC §2.1, §2.5).

machine/mm.py (MM, VMA, the 4-level tree) and machine/machine.py (primitives,
lookups, snapshots, process numbers and pins).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from pte_values import BASE_PROT, fault_pte

from machine import VMA, FrameTable, Machine, MachineBug, Pin
from machine.mm import MM
from machine.pgtable import (
    PAGE_SIZE,
    PMD_SIZE,
    PTE_DIRTY,
    PTE_RDONLY,
    PTE_WRITE,
    pfn_pte,
    pmd_pte,
    pmd_table,
    pmd_trans_huge,
    pte_advance_pfn,
    pte_dirty,
    pte_mkcont,
    pte_mkdirty,
    pte_mkold,
    pte_mkwrite,
    pte_mkyoung,
    pte_pfn,
    pte_pmd,
    pte_swp_mkexclusive,
    pte_write,
    pte_wrprotect,
    swp_entry_to_pte,
)

GIB = 1 << 30
VA = 0x200000  # the start of a PTE table


def clean_writable(pfn: int) -> int:
    return pte_mkwrite(pfn_pte(pfn, BASE_PROT))


@pytest.fixture
def machine() -> Machine:
    return Machine()


@pytest.fixture
def mm(machine) -> MM:
    return machine.processes[0]


def vma_tuples(mm: MM) -> list[tuple]:
    return [(v.start, v.end, v.prot, v.lineage, v.pgoff) for v in mm.vmas]


# --- VMAs -------------------------------------------------------------------

def test_vma_insert_keeps_vmas_sorted_by_start():
    mm = MM(0)
    for start in (0x50000, 0x10000, 0x30000):
        mm.vma_insert(VMA(start, start + 0x10000, True, start >> 16))
    assert [v.start for v in mm.vmas] == [0x10000, 0x30000, 0x50000]


@pytest.mark.parametrize("start, end, covered", [
    (0x10000, 0x30000, True), (0x18000, 0x28000, True), (0x10000, 0x38000, False), (0x8000, 0x20000, False),
    (0x28000, 0x30000, True), (0x30000, 0x50000, False),
])
def test_vmas_cover_a_range_only_without_a_hole(start, end, covered):
    mm = MM(0)
    for vma_start, vma_end in ((0x10000, 0x20000), (0x20000, 0x30000), (0x40000, 0x50000)):
        mm.vma_insert(VMA(vma_start, vma_end, True, 0))
    assert mm.vmas_cover(start, end) is covered


@pytest.mark.parametrize("start, end", [
    (0x10000, 0x20000), (0x8000, 0x11000), (0x1f000, 0x30000), (0x0, 0x100000), (0x12000, 0x13000),
])
def test_vma_insert_refuses_an_overlap(start, end):
    mm = MM(0)
    mm.vma_insert(VMA(0x10000, 0x20000, True, 0))
    with pytest.raises(MachineBug):
        mm.vma_insert(VMA(start, end, True, 1))
    assert len(mm.vmas) == 1


def test_vma_insert_allows_touching_neighbours_and_refuses_empty():
    mm = MM(0)
    mm.vma_insert(VMA(0x10000, 0x20000, True, 0))
    mm.vma_insert(VMA(0x20000, 0x30000, True, 0))
    mm.vma_insert(VMA(0x8000, 0x10000, True, 0))
    assert len(mm.vmas) == 3  # insert never merges
    with pytest.raises(MachineBug):
        mm.vma_insert(VMA(0x40000, 0x40000, True, 1))


def test_vma_pgoff_is_start_page_and_prot_names_rw_ro():
    assert VMA(0x123000, 0x200000, True, 0).pgoff == 0x123
    assert VMA(0x123000, 0x200000, True, 0).prot == "rw"
    assert VMA(0x123000, 0x200000, False, 0).prot == "ro"


def test_vma_split_returns_the_upper_part_with_same_prot_and_lineage():
    mm = MM(0)
    vma = VMA(0x10000, 0x40000, False, 7)
    mm.vma_insert(vma)
    upper = mm.vma_split(vma, 0x25000)
    assert (vma.start, vma.end) == (0x10000, 0x25000)
    assert (upper.start, upper.end, upper.writable, upper.lineage) == (0x25000, 0x40000, False, 7)
    assert vma_tuples(mm) == [(0x10000, 0x25000, "ro", 7, 0x10), (0x25000, 0x40000, "ro", 7, 0x25)]


@pytest.mark.parametrize("addr", [0x10000, 0x40000, 0x5000, 0x50000])
def test_vma_split_outside_the_vma_is_a_machine_bug(addr):
    mm = MM(0)
    vma = VMA(0x10000, 0x40000, True, 0)
    mm.vma_insert(vma)
    with pytest.raises(MachineBug):
        mm.vma_split(vma, addr)


def test_vma_merge_joins_both_neighbours_of_equal_prot_and_lineage():
    mm = MM(0)
    vma = VMA(0x10000, 0x40000, True, 3)
    mm.vma_insert(vma)
    middle = mm.vma_split(vma, 0x20000)
    upper = mm.vma_split(middle, 0x30000)
    assert len(mm.vmas) == 3
    merged = mm.vma_merge(middle)
    assert merged is vma  # the lower neighbour survives
    assert vma_tuples(mm) == [(0x10000, 0x40000, "rw", 3, 0x10)]
    assert mm.vmas == [vma] and all(v is not upper for v in mm.vmas)


def test_vma_merge_with_only_the_next_neighbour_keeps_start_and_pgoff():
    mm = MM(0)
    vma = VMA(0x10000, 0x40000, True, 0)
    mm.vma_insert(vma)
    upper = mm.vma_split(vma, 0x20000)
    vma.writable = False
    merged = mm.vma_merge(upper)
    assert merged is upper
    assert vma_tuples(mm) == [(0x10000, 0x20000, "ro", 0, 0x10), (0x20000, 0x40000, "rw", 0, 0x20)]
    upper.writable = False
    merged = mm.vma_merge(upper)
    assert merged is vma
    assert vma_tuples(mm) == [(0x10000, 0x40000, "ro", 0, 0x10)]


@pytest.mark.parametrize("neighbour", [
    VMA(0x20000, 0x30000, False, 0),   # other prot
    VMA(0x20000, 0x30000, True, 1),    # other lineage
    VMA(0x21000, 0x30000, True, 0),    # not adjacent
])
def test_vma_merge_refuses_other_prot_lineage_or_a_gap(neighbour):
    mm = MM(0)
    vma = VMA(0x10000, 0x20000, True, 0)
    mm.vma_insert(vma)
    mm.vma_insert(dataclasses.replace(neighbour))
    before = vma_tuples(mm)
    assert mm.vma_merge(vma) is vma
    assert mm.vma_merge(mm.vmas[1]) is mm.vmas[1]
    assert vma_tuples(mm) == before


@pytest.mark.parametrize("neighbour", [
    VMA(0x20000, 0x30000, True, 0, anon_vma=2),                            # another anon_vma
    VMA(0x20000, 0x30000, True, 0, anon_vma=1, anon_vma_fork_child=True),  # a fork child's, vma has none
])
def test_vma_merge_refuses_another_anon_vma_or_a_fork_childs(neighbour):
    mm = MM(0)
    vma = VMA(0x10000, 0x20000, True, 0, anon_vma=0 if neighbour.anon_vma_fork_child else 1)
    mm.vma_insert(vma)
    mm.vma_insert(dataclasses.replace(neighbour))
    assert mm.vma_merge(vma) is vma and len(mm.vmas) == 2


def test_vma_merge_takes_the_anon_vma_there_is():
    mm = MM(0)
    vma = VMA(0x10000, 0x20000, True, 0)
    mm.vma_insert(vma)
    mm.vma_insert(VMA(0x20000, 0x30000, True, 0, anon_vma=5))
    assert mm.vma_merge(vma) is vma and len(mm.vmas) == 1 and vma.anon_vma == 5


def test_vma_merge_between_two_anon_vmas_joins_the_previous_one_alone():
    mm = MM(0)
    mm.vma_insert(VMA(0x10000, 0x20000, True, 0, anon_vma=1))
    middle = VMA(0x20000, 0x30000, True, 0)
    mm.vma_insert(middle)
    mm.vma_insert(VMA(0x30000, 0x40000, True, 0, anon_vma=2))
    merged = mm.vma_merge(middle)
    assert [(v.start, v.end, v.anon_vma) for v in mm.vmas] == [(0x10000, 0x30000, 1), (0x30000, 0x40000, 2)]
    assert merged is mm.vmas[0]


def test_vma_merge_of_a_lone_vma_is_a_no_op():
    mm = MM(0)
    vma = VMA(0x10000, 0x20000, True, 0)
    mm.vma_insert(vma)
    assert mm.vma_merge(vma) is vma
    assert vma_tuples(mm) == [(0x10000, 0x20000, "rw", 0, 0x10)]


def test_vma_remove():
    mm = MM(0)
    a, b = VMA(0x10000, 0x20000, True, 0), VMA(0x30000, 0x40000, True, 1)
    mm.vma_insert(a)
    mm.vma_insert(b)
    mm.vma_remove(a)
    assert mm.vmas == [b]


@pytest.fixture
def three_vmas() -> tuple[MM, VMA, VMA, VMA]:
    """a and b adjacent with different prot and lineage, c after a hole; inserted out of order."""
    mm = MM(0)
    a, b = VMA(0x10000, 0x20000, True, 0), VMA(0x20000, 0x30000, False, 1)
    c = VMA(0x50000, 0x60000, True, 2)
    for vma in (c, a, b):
        mm.vma_insert(vma)
    return mm, a, b, c


def test_find_vma_returns_the_vma_containing_addr(three_vmas):
    mm, a, b, c = three_vmas
    assert mm.find_vma(0x10000) is a
    assert mm.find_vma(0x1ffff) is a
    assert mm.find_vma(0x20000) is b
    assert mm.find_vma(0x5ffff) is c
    for addr in (0x0, 0xffff, 0x30000, 0x4ffff, 0x60000, 1 << 47):
        assert mm.find_vma(addr) is None
    assert MM(1).find_vma(0x10000) is None


def test_vmas_intersecting_excludes_touching_edges(three_vmas):
    mm, a, b, c = three_vmas
    assert mm.vmas_intersecting(0x0, 0x10000) == []
    assert mm.vmas_intersecting(0x0, 0x10001) == [a]
    assert mm.vmas_intersecting(0x1f000, 0x21000) == [a, b]
    assert mm.vmas_intersecting(0x30000, 0x50000) == []
    assert mm.vmas_intersecting(0x0, 1 << 48) == [a, b, c]
    assert mm.vmas_intersecting(0x55000, 0x56000) == [c]


# --- page-table walks -------------------------------------------------------

def test_walk_without_alloc_creates_nothing(mm):
    assert mm.pmd_table(VA) is None
    assert mm.pte_table(VA) is None
    assert mm.pgd == {}


def test_pte_table_alloc_builds_the_path_and_a_table_descriptor(mm):
    table = mm.pte_table(VA + 0x5000, alloc=True)
    assert table.base == VA
    assert table.entries.dtype == np.uint64 and table.entries.shape == (512,)
    assert not table.entries.any()
    assert mm.pte_table(VA + 0x1ff000) is table
    assert mm.pte_table(VA + PMD_SIZE) is None
    pmd_tab = mm.pmd_table(VA)
    assert pmd_tab.base == 0
    descriptor = int(pmd_tab.entries[1])
    assert pmd_table(descriptor) and not pmd_trans_huge(descriptor)
    assert pmd_tab.ptes[1] is table


def test_pmd_tables_are_per_gib_and_walked_in_address_order(mm):
    for addr in (5 * GIB + VA, (1 << 39) + VA, VA, GIB):
        mm.pte_table(addr, alloc=True)
    assert [t.base for t in mm.pmd_tables()] == [0, GIB, 5 * GIB, 1 << 39]
    assert mm.pmd_table(5 * GIB + 0x12345000).base == 5 * GIB


def test_pte_table_under_a_pmd_block(machine, mm):
    folio = machine.frames.folio_alloc(9)
    machine.set_pmd_at(mm, VA, pte_pmd(fault_pte(folio)))
    assert mm.pte_table(VA + 0x3000) is None
    with pytest.raises(MachineBug):
        mm.pte_table(VA + 0x3000, alloc=True)


# --- single-entry PTE primitives --------------------------------------------

def test_ptep_get_of_an_unmapped_address_is_0_and_allocates_nothing(machine, mm):
    assert machine.ptep_get(mm, VA) == 0
    assert mm.pgd == {}


def test_set_pte_at_and_ptep_get(machine, mm):
    machine.set_pte_at(mm, VA + 0x3000, fault_pte(7))
    assert machine.ptep_get(mm, VA + 0x3000) == fault_pte(7)
    assert machine.ptep_get(mm, VA + 0x2000) == 0


@pytest.mark.parametrize("call", [
    lambda m, mm: m.ptep_get(mm, VA + 1),
    lambda m, mm: m.set_pte_at(mm, VA + 0x800, 0),
    lambda m, mm: m.ptep_get_and_clear(mm, VA + 4),
    lambda m, mm: m.ptep_set_wrprotect(mm, VA + 4),
    lambda m, mm: m.set_ptes(mm, VA + 4, fault_pte(0), 1),
    lambda m, mm: m.clear_full_ptes(mm, VA + 4, 1),
    lambda m, mm: m.wrprotect_ptes(mm, VA + 4, 1),
    lambda m, mm: m.get_and_clear_full_ptes(mm, VA + 4, 1),
    pytest.param(lambda m, mm: m.ptes_get(mm, VA + 4, 1), id="ptes_get"),
    lambda m, mm: m.pmdp_get(mm, VA + PAGE_SIZE),
])
def test_unaligned_pte_address_is_a_machine_bug(machine, mm, call):
    with pytest.raises(MachineBug):
        call(machine, mm)


def test_ptep_get_and_clear_returns_the_old_entry_and_clears_it(machine, mm):
    machine.set_pte_at(mm, VA, fault_pte(7))
    assert machine.ptep_get_and_clear(mm, VA) == fault_pte(7)
    assert machine.ptep_get(mm, VA) == 0
    assert machine.ptep_get_and_clear(mm, VA) == 0


@pytest.mark.parametrize("pte", [fault_pte(7), clean_writable(7), pfn_pte(7, BASE_PROT),
                                 pfn_pte(7, BASE_PROT) | PTE_DIRTY, pte_mkold(fault_pte(9))])
def test_ptep_set_wrprotect_is_pte_wrprotect(machine, mm, pte):
    machine.set_pte_at(mm, VA, pte)
    machine.ptep_set_wrprotect(mm, VA)
    assert machine.ptep_get(mm, VA) == pte_wrprotect(pte)


def test_ptep_set_wrprotect_of_a_fault_entry_keeps_pfn_and_dirtiness(machine, mm):
    machine.set_pte_at(mm, VA, fault_pte(7))
    machine.ptep_set_wrprotect(mm, VA)
    result = machine.ptep_get(mm, VA)
    assert result == (fault_pte(7) | PTE_RDONLY) & ~PTE_WRITE  # DIRTY already set
    assert pte_pfn(result) == 7 and pte_dirty(result) and not pte_write(result)


# --- batched PTE primitives -------------------------------------------------

def test_set_ptes_advances_the_pfn(machine, mm):
    machine.set_ptes(mm, VA + 0x4000, fault_pte(32), 8)
    entries = mm.pte_table(VA).entries
    assert [int(x) for x in entries[4:12]] == [pte_advance_pfn(fault_pte(32), i) for i in range(8)]
    assert [int(pte_pfn(int(x))) for x in entries[4:12]] == list(range(32, 40))
    assert not entries[:4].any() and not entries[12:].any()


def test_set_ptes_fills_a_whole_table(machine, mm):
    machine.set_ptes(mm, VA, fault_pte(0), 512)
    entries = mm.pte_table(VA).entries
    assert [int(pte_pfn(int(x))) for x in entries] == list(range(512))


@pytest.mark.parametrize("addr, nr_pages", [(VA + 500 * PAGE_SIZE, 13), (VA + PAGE_SIZE, 512),
                                            (VA + 511 * PAGE_SIZE, 2)])
def test_set_ptes_refuses_to_cross_a_pte_table(machine, mm, addr, nr_pages):
    with pytest.raises(MachineBug):
        machine.set_ptes(mm, addr, fault_pte(0), nr_pages)
    assert machine.ptep_get(mm, addr) == 0


def test_set_ptes_up_to_the_end_of_the_table_is_allowed(machine, mm):
    machine.set_ptes(mm, VA + 496 * PAGE_SIZE, fault_pte(16), 16)
    assert machine.ptep_get(mm, VA + 511 * PAGE_SIZE) == pte_mkcont(pte_advance_pfn(fault_pte(16), 15))  # whole block


@pytest.mark.parametrize("primitive", ["set_ptes", "get_and_clear_full_ptes", "clear_full_ptes",
                                       "wrprotect_ptes", "ptes_get"])
@pytest.mark.parametrize("nr_pages", [0, -1])
def test_batched_primitives_refuse_a_non_positive_count(machine, mm, primitive, nr_pages):
    args = (fault_pte(0), nr_pages) if primitive == "set_ptes" else (nr_pages,)
    with pytest.raises(MachineBug):
        getattr(machine, primitive)(mm, VA, *args)


@pytest.mark.parametrize("primitive", ["get_and_clear_full_ptes", "clear_full_ptes", "wrprotect_ptes",
                                       "ptes_get"])
def test_batched_primitives_refuse_to_cross_a_pte_table(machine, mm, primitive):
    with pytest.raises(MachineBug):
        getattr(machine, primitive)(mm, VA + 510 * PAGE_SIZE, 3)


def test_get_and_clear_full_ptes_gathers_dirty_and_young(machine, mm):
    first = pte_mkold(clean_writable(40))
    entries = [first,
               pte_mkold(clean_writable(41)) & ~PTE_RDONLY,   # hardware dirty, no DIRTY bit
               pte_mkold(clean_writable(42)),
               clean_writable(43)]                             # young
    for index, pte in enumerate(entries):
        machine.set_pte_at(mm, VA + index * PAGE_SIZE, pte)
    machine.set_pte_at(mm, VA + 4 * PAGE_SIZE, fault_pte(99))  # outside the batch
    result = machine.get_and_clear_full_ptes(mm, VA, 4)
    assert result == pte_mkyoung(pte_mkdirty(first))
    assert pte_pfn(result) == 40
    assert not result & PTE_RDONLY  # pte_mkdirty of a writable entry
    assert not machine.ptes_get(mm, VA, 4).any()
    assert machine.ptep_get(mm, VA + 4 * PAGE_SIZE) == fault_pte(99)


def test_get_and_clear_full_ptes_gathers_software_dirty_of_a_readonly_entry(machine, mm):
    first = pte_mkold(pfn_pte(40, BASE_PROT))
    machine.set_pte_at(mm, VA, first)
    machine.set_pte_at(mm, VA + PAGE_SIZE, pte_mkold(pfn_pte(41, BASE_PROT)) | PTE_DIRTY)
    assert machine.get_and_clear_full_ptes(mm, VA, 2) == first | PTE_DIRTY


def test_get_and_clear_full_ptes_gathers_from_the_second_entry_on(machine, mm):
    """The kernel's loop gathers the entries after the first: a hardware-dirty first entry
    comes back raw, without the software DIRTY bit pte_mkdirty would add."""
    first = clean_writable(40) & ~PTE_RDONLY
    machine.set_pte_at(mm, VA, first)
    machine.set_pte_at(mm, VA + PAGE_SIZE, pte_mkold(clean_writable(41)))
    assert machine.get_and_clear_full_ptes(mm, VA, 2) == first


def test_get_and_clear_full_ptes_of_clean_old_entries_returns_the_first_raw(machine, mm):
    machine.set_ptes(mm, VA, pte_mkold(clean_writable(40)), 3)
    assert machine.get_and_clear_full_ptes(mm, VA, 3) == pte_mkold(clean_writable(40))


def test_wrprotect_ptes_equals_pte_wrprotect_per_entry(machine, mm):
    entries = [fault_pte(8), clean_writable(9), pte_mkold(clean_writable(10)) & ~PTE_RDONLY,
               pfn_pte(11, BASE_PROT), pfn_pte(12, BASE_PROT) | PTE_DIRTY, pte_mkold(fault_pte(13))]
    for index, pte in enumerate(entries):
        machine.set_pte_at(mm, VA + index * PAGE_SIZE, pte)
    machine.wrprotect_ptes(mm, VA, len(entries))
    got = [int(x) for x in machine.ptes_get(mm, VA, len(entries))]
    assert got == [pte_wrprotect(pte) for pte in entries]
    # SPEC §2.2 semantics, independent of the helper.
    assert got[2] == (entries[2] | PTE_DIRTY | PTE_RDONLY) & ~PTE_WRITE
    assert got[1] == entries[1] & ~PTE_WRITE
    assert [pte_pfn(pte) for pte in got] == list(range(8, 14))


def test_clear_full_ptes_clears_only_the_range(machine, mm):
    machine.set_ptes(mm, VA, fault_pte(0), 8)
    machine.clear_full_ptes(mm, VA + 2 * PAGE_SIZE, 4)
    got = [int(x) for x in machine.ptes_get(mm, VA, 8)]
    assert got == [fault_pte(0), fault_pte(1), 0, 0, 0, 0, fault_pte(6), fault_pte(7)]


def test_ptes_get_returns_a_copy(machine, mm):
    machine.set_ptes(mm, VA, fault_pte(0), 4)
    got = machine.ptes_get(mm, VA, 4)
    got[:] = 0
    assert machine.ptep_get(mm, VA) == fault_pte(0)
    assert got.dtype == np.uint64


def test_ptes_get_without_a_table_returns_zeros_and_allocates_nothing(machine, mm):
    got = machine.ptes_get(mm, VA, 16)
    assert got.dtype == np.uint64 and got.shape == (16,) and not got.any()
    assert mm.pgd == {}


def test_ptes_get_under_a_pmd_block_returns_zeros(machine, mm):
    folio = machine.frames.folio_alloc(9)
    machine.set_pmd_at(mm, VA, pte_pmd(fault_pte(folio)))
    assert not machine.ptes_get(mm, VA, 16).any()


# --- PMD primitives ---------------------------------------------------------

def test_set_pmd_at_on_an_empty_slot(machine, mm):
    folio = machine.frames.folio_alloc(9)
    pmd = pte_pmd(fault_pte(folio))
    assert machine.pmdp_get(mm, VA) == 0
    machine.set_pmd_at(mm, VA, pmd)
    assert machine.pmdp_get(mm, VA) == pmd
    assert list(mm.leaves()) == [(VA, "pmd", pmd)]


def test_set_pmd_at_replaces_an_empty_pte_table(machine, mm):
    machine.set_pte_at(mm, VA + 0x5000, fault_pte(3))
    machine.ptep_get_and_clear(mm, VA + 0x5000)
    assert mm.pte_table(VA) is not None
    pmd = pte_pmd(fault_pte(512))
    machine.set_pmd_at(mm, VA, pmd)
    assert mm.pte_table(VA) is None
    assert machine.pmdp_get(mm, VA) == pmd
    assert list(mm.leaves()) == [(VA, "pmd", pmd)]


def test_set_pmd_at_refuses_a_populated_pte_table(machine, mm):
    machine.set_pte_at(mm, VA + 0x5000, fault_pte(3))
    with pytest.raises(MachineBug):
        machine.set_pmd_at(mm, VA, pte_pmd(fault_pte(512)))


def test_set_pmd_at_refusal_leaves_the_pte_table_in_place(machine, mm):
    machine.set_pte_at(mm, VA + 0x5000, fault_pte(3))
    with pytest.raises(MachineBug):
        machine.set_pmd_at(mm, VA, pte_pmd(fault_pte(512)))
    assert machine.ptep_get(mm, VA + 0x5000) == fault_pte(3)
    assert list(mm.leaves()) == [(VA + 0x5000, "pte", fault_pte(3))]


def test_set_pmd_at_replaces_a_pmd_block(machine, mm):
    machine.set_pmd_at(mm, VA, pte_pmd(fault_pte(0)))
    machine.set_pmd_at(mm, VA, pte_pmd(fault_pte(512)))
    assert machine.pmdp_get(mm, VA) == pte_pmd(fault_pte(512))


@pytest.mark.parametrize("addr, pmd", [
    (VA, fault_pte(512)),                 # a page descriptor, bits 1:0 = 0b11
    (VA, 0),                              # none
    (VA, swp_entry_to_pte(3)),            # a swap entry
    (VA + PAGE_SIZE, pte_pmd(fault_pte(512))),  # not 2 MiB aligned
])
def test_set_pmd_at_refuses_a_non_block_or_unaligned_address(machine, mm, addr, pmd):
    with pytest.raises(MachineBug):
        machine.set_pmd_at(mm, addr, pmd)


def test_pmdp_get_and_clear_returns_the_block_and_clears_it(machine, mm):
    pmd = pte_pmd(fault_pte(512))
    machine.set_pmd_at(mm, VA, pmd)
    assert machine.pmdp_get_and_clear(mm, VA) == pmd
    assert machine.pmdp_get(mm, VA) == 0
    assert list(mm.leaves()) == []
    # The slot can now take a PTE table (the PMD split path).
    machine.set_ptes(mm, VA, fault_pte(512), 512)
    assert machine.lookup(mm, VA + 0x3000) == ("pte", pte_mkcont(fault_pte(515)))   # contpte_set_ptes folds


def test_pmdp_get_and_clear_without_a_block_is_a_machine_bug(machine, mm):
    with pytest.raises(MachineBug):
        machine.pmdp_get_and_clear(mm, VA)
    machine.set_pte_at(mm, VA, fault_pte(1))
    with pytest.raises(MachineBug):
        machine.pmdp_get_and_clear(mm, VA)


@pytest.mark.parametrize("pte", [fault_pte(512), clean_writable(512), pfn_pte(512, BASE_PROT),
                                 pte_mkold(clean_writable(512)) & ~PTE_RDONLY])
def test_pmdp_set_wrprotect_is_pte_wrprotect_through_pmd_pte(machine, mm, pte):
    pmd = pte_pmd(pte)
    machine.set_pmd_at(mm, VA, pmd)
    machine.pmdp_set_wrprotect(mm, VA)
    result = machine.pmdp_get(mm, VA)
    assert result == pte_pmd(pte_wrprotect(pmd_pte(pmd)))
    assert result & 0b11 == 0b01
    assert not pte_write(pmd_pte(result)) and result & PTE_RDONLY
    assert pte_dirty(pmd_pte(result)) == pte_dirty(pte)
    assert pte_pfn(result) == 512


def test_pmdp_set_wrprotect_without_a_block_is_a_machine_bug(machine, mm):
    machine.set_pte_at(mm, VA, fault_pte(1))
    with pytest.raises(MachineBug):
        machine.pmdp_set_wrprotect(mm, VA)


def test_pmdp_set_wrprotect_of_an_unpopulated_gib_is_a_machine_bug(machine, mm):
    with pytest.raises(MachineBug):
        machine.pmdp_set_wrprotect(mm, 3 * GIB)


# --- leaves, lookup and page_at ---------------------------------------------

def test_leaves_yields_every_nonzero_leaf_in_ascending_address_order(machine, mm):
    pmd_a = pte_pmd(fault_pte(512))
    pmd_b = pte_pmd(fault_pte(1024))
    swap = pte_swp_mkexclusive(swp_entry_to_pte(9))
    far = (1 << 39) + VA + 0x7000
    machine.set_pte_at(mm, far, fault_pte(5))
    machine.set_pmd_at(mm, GIB, pmd_b)
    machine.set_pte_at(mm, VA + 0x1000, fault_pte(2))
    machine.set_pte_at(mm, VA, fault_pte(1))
    machine.set_pte_at(mm, VA + 0x1ff000, swap)
    machine.set_pmd_at(mm, 2 * PMD_SIZE, pmd_a)
    machine.set_pte_at(mm, 3 * PMD_SIZE + 0x4000, fault_pte(3))
    machine.set_pte_at(mm, 4 * PMD_SIZE, fault_pte(4))
    machine.ptep_get_and_clear(mm, 4 * PMD_SIZE)      # an empty PTE table: nothing to yield
    leaves = list(mm.leaves())
    assert leaves == [
        (VA, "pte", fault_pte(1)),
        (VA + 0x1000, "pte", fault_pte(2)),
        (VA + 0x1ff000, "pte", swap),
        (2 * PMD_SIZE, "pmd", pmd_a),
        (3 * PMD_SIZE + 0x4000, "pte", fault_pte(3)),
        (GIB, "pmd", pmd_b),
        (far, "pte", fault_pte(5)),
    ]
    assert all(type(addr) is int and type(desc) is int for addr, _, desc in leaves)


def test_leaves_of_an_empty_process_is_empty(mm):
    assert list(mm.leaves()) == []


def test_lookup_and_page_at_for_a_pte_map(machine, mm):
    machine.set_pte_at(mm, VA + 0x3000, fault_pte(77))
    assert machine.lookup(mm, VA + 0x3000) == ("pte", fault_pte(77))
    assert machine.lookup(mm, VA + 0x3abc) == ("pte", fault_pte(77))
    assert machine.page_at(mm, VA + 0x3abc) == 77
    assert machine.lookup(mm, VA + 0x4000) == ("pte", 0)
    assert machine.page_at(mm, VA + 0x4000) is None


def test_lookup_and_page_at_for_a_pmd_map(machine, mm):
    pmd = pte_pmd(fault_pte(1024))
    machine.set_pmd_at(mm, VA, pmd)
    assert machine.lookup(mm, VA) == ("pmd", pmd)
    assert machine.lookup(mm, VA + 0x1fffff) == ("pmd", pmd)
    assert machine.page_at(mm, VA) == 1024
    assert machine.page_at(mm, VA + 5 * PAGE_SIZE + 7) == 1029
    assert machine.page_at(mm, VA + 0x1ff000) == 1535
    assert machine.lookup(mm, VA + PMD_SIZE) == ("pte", 0)


def test_page_at_of_a_swap_entry_is_none(machine, mm):
    machine.set_pte_at(mm, VA, swp_entry_to_pte(4))
    assert machine.lookup(mm, VA) == ("pte", swp_entry_to_pte(4))
    assert machine.page_at(mm, VA) is None
    assert machine.page_at(mm, 7 * GIB) is None


# --- snapshot and restore ---------------------------------------------------

def fingerprint(machine: Machine) -> dict:
    """Everything SPEC §5 compares, plus the raw PTE tables and the counters."""
    tables = {}
    for pid, mm in machine.processes.items():
        for pmd_tab in mm.pmd_tables():
            tables[(pid, pmd_tab.base)] = pmd_tab.entries.tobytes()
            for index, pte_tab in pmd_tab.ptes.items():
                tables[(pid, pmd_tab.base, index)] = (pte_tab.base, pte_tab.entries.tobytes())
    return {
        "frames": {name: getattr(machine.frames, name).tobytes() for name in FrameTable.ARRAYS},
        "nr_frames": machine.frames.nr_frames,
        "swap": (machine.swap.swap_data.tobytes(), machine.swap.swap_count.tobytes()),
        "processes": {pid: (mm.pid, mm.mm_id, vma_tuples(mm), list(mm.leaves()), mm.rss_anon,
                            mm.rss_swap, mm.has_pinned)
                      for pid, mm in machine.processes.items()},
        "tables": tables,
        "pins": dict(machine.pins),
        "counters": (machine.nr_processes, machine.nr_mmaps, machine.nr_pins),
    }


def populate(machine: Machine) -> None:
    mm = machine.processes[0]
    mm.vma_insert(VMA(VA, VA + 4 * PMD_SIZE, True, machine.lineage_alloc()))
    small = machine.frames.folio_alloc(4)
    huge = machine.frames.folio_alloc(9)
    machine.frames.page_data[small + 3] = 42
    machine.frames.page_anon_exclusive[small:small + 16] = True
    machine.frames.folio_mm_id[huge] = (1, 0)
    machine.set_ptes(mm, VA, fault_pte(small), 16)
    machine.set_pmd_at(mm, VA + PMD_SIZE, pte_pmd(fault_pte(huge)))
    machine.set_pte_at(mm, VA + 0x20000, swp_entry_to_pte(3))
    machine.swap.swap_count[3] = 1
    machine.swap.swap_data[3] = 5
    mm.rss_anon, mm.rss_swap, mm.has_pinned = 528, 1, True
    child = machine.mm_alloc()
    child.vma_insert(VMA(VA, VA + 4 * PMD_SIZE, True, 0))
    machine.set_pte_at(child, VA, fault_pte(small))
    machine.pin_add(0, VA, "rw", (small,))


def mutate(machine: Machine) -> None:
    mm = machine.processes[0]
    machine.frames.page_data[:] = 9
    machine.frames.folio_alloc(0)
    vma = mm.vmas[0]
    mm.vma_split(vma, VA + PMD_SIZE).writable = False
    machine.set_pte_at(mm, VA + 3 * PAGE_SIZE, 0)
    machine.wrprotect_ptes(mm, VA, 8)
    machine.pmdp_set_wrprotect(mm, VA + PMD_SIZE)
    machine.set_pte_at(mm, 9 * GIB, fault_pte(1))
    machine.swap.swap_count[3] = 0
    machine.swap.swap_data[3] = 0
    mm.rss_anon, mm.has_pinned = 0, False
    child = machine.processes[1]
    machine.ptep_get_and_clear(child, VA)
    machine.mm_destroy(child)
    machine.mm_alloc()
    machine.lineage_alloc()
    machine.pin_remove(0)
    machine.pin_add(0, VA, "ro", (0, 1))


def test_restore_gives_back_the_exact_state(machine):
    populate(machine)
    before = fingerprint(machine)
    snapshot = machine.snapshot()
    mutate(machine)
    assert fingerprint(machine) != before
    machine.restore(snapshot)
    assert fingerprint(machine) == before


def test_snapshot_is_not_changed_by_later_work(machine):
    populate(machine)
    snapshot = machine.snapshot()
    before = fingerprint(snapshot)
    assert before == fingerprint(machine)
    mutate(machine)
    assert fingerprint(snapshot) == before


def test_restore_forgets_tables_written_after_the_snapshot(machine):
    populate(machine)
    before = fingerprint(machine)
    snapshot = machine.snapshot()
    mm = machine.processes[0]
    machine.set_pte_at(mm, VA + 5 * PAGE_SIZE, 0)  # unfolds the block
    machine.restore(snapshot)
    assert fingerprint(machine) == before


def test_tables_written_after_a_restore_unfold(machine):
    populate(machine)
    snapshot = machine.snapshot()
    machine.restore(snapshot)
    mm = machine.processes[0]
    machine.set_pte_at(mm, VA + 5 * PAGE_SIZE, 0)
    table = mm.pte_table(VA)
    assert machine.contpte_blocks_valid(table.entries).all()
    assert not (table.entries[:16] & np.uint64(1 << 52)).any()


# --- processes, lineages and pins -------------------------------------------

def test_p0_exists_at_start_with_mm_id_1(machine):
    assert list(machine.processes) == [0]
    assert machine.processes[0].mm_id == 1
    assert machine.processes[0].pid == 0


def test_mm_alloc_never_reuses_a_number(machine):
    first = machine.mm_alloc()
    second = machine.mm_alloc()
    assert (first.pid, first.mm_id, second.pid, second.mm_id) == (1, 2, 2, 3)
    machine.mm_destroy(second)
    machine.mm_destroy(first)
    third = machine.mm_alloc()
    assert (third.pid, third.mm_id) == (3, 4)
    machine.mm_destroy(machine.processes[0])
    assert machine.mm_alloc().pid == 4
    assert sorted(machine.processes) == [3, 4]


def test_new_process_is_empty(machine):
    mm = machine.mm_alloc()
    assert mm.vmas == [] and list(mm.leaves()) == []
    assert (mm.rss_anon, mm.rss_swap, mm.has_pinned) == (0, 0, False)


@pytest.mark.parametrize("leaf", ["pte", "swap", "pmd"])
def test_mm_destroy_refuses_a_process_that_still_maps_something(machine, mm, leaf):
    if leaf == "pte":
        machine.set_pte_at(mm, VA, fault_pte(1))
    elif leaf == "swap":
        machine.set_pte_at(mm, VA, swp_entry_to_pte(1))
    else:
        machine.set_pmd_at(mm, VA, pte_pmd(fault_pte(512)))
    with pytest.raises(MachineBug):
        machine.mm_destroy(mm)
    assert 0 in machine.processes


@pytest.mark.parametrize("counter", ["rss_anon", "rss_swap"])
def test_mm_destroy_refuses_a_process_with_rss(machine, mm, counter):
    setattr(mm, counter, 1)
    with pytest.raises(MachineBug):
        machine.mm_destroy(mm)
    assert 0 in machine.processes


def test_mm_destroy_accepts_empty_page_tables_and_vmas(machine, mm):
    mm.vma_insert(VMA(VA, VA + PMD_SIZE, True, 0))
    machine.set_pte_at(mm, VA, fault_pte(1))
    machine.ptep_get_and_clear(mm, VA)
    machine.mm_destroy(mm)
    assert machine.processes == {}


def test_pin_ids_count_up_and_are_never_reused(machine):
    assert machine.pin_add(0, VA, "rw", (5,)) == 0
    assert machine.pin_add(0, VA, "ro", (5, 6)) == 1
    removed = machine.pin_remove(0)
    assert removed == Pin(0, 0, VA, "rw", (5,))
    assert machine.pin_add(3, VA + PAGE_SIZE, "ro", (7,)) == 2
    assert sorted(machine.pins) == [1, 2]
    assert machine.pins[2] == Pin(2, 3, VA + PAGE_SIZE, "ro", (7,))
    with pytest.raises(dataclasses.FrozenInstanceError):
        machine.pins[2].nr_pages = 5


def test_lineage_ids_count_successful_mmaps(machine):
    assert [machine.lineage_alloc() for _ in range(3)] == [0, 1, 2]
    assert machine.nr_mmaps == 3


# --- the batched primitives over many runs -------------------------------------

def test_pte_runs_primitives_match_the_single_run_forms():
    import numpy as np

    from machine import Machine, PteRuns
    from machine.pgtable import (
        PTE_AF,
        PTE_DIRTY,
        PTE_RDONLY,
        PTE_WRITE,
        pfn_pte,
        vm_get_page_prot,
    )

    base = vm_get_page_prot(True)
    runs = PteRuns(0x200000, np.array([0, 5, 40]), np.array([3, 1, 16]))
    first = [pfn_pte(100, base | PTE_WRITE | PTE_DIRTY), pfn_pte(7, base), pfn_pte(200, base | PTE_WRITE)]
    many, one = Machine(), Machine()
    many.set_ptes_runs(many.processes[0], runs, np.array(first, np.uint64))
    for index, nr_pages, pte in zip(runs.index, runs.nr_pages, first, strict=True):
        one.set_ptes(one.processes[0], 0x200000 + int(index) * 4096, pte, int(nr_pages))
    assert np.array_equal(many.ptes_get(many.processes[0], 0x200000, 512),
                          one.ptes_get(one.processes[0], 0x200000, 512))
    many.wrprotect_ptes_runs(many.processes[0], runs)
    for index, nr_pages in zip(runs.index, runs.nr_pages, strict=True):
        one.wrprotect_ptes(one.processes[0], 0x200000 + int(index) * 4096, int(nr_pages))
    assert np.array_equal(many.ptes_get(many.processes[0], 0x200000, 512),
                          one.ptes_get(one.processes[0], 0x200000, 512))
    addr = 0x200000 + 41 * 4096
    one.set_pte_at(one.processes[0], addr, int(one.ptep_get(one.processes[0], addr)) | PTE_AF)
    many.set_pte_at(many.processes[0], addr, int(many.ptep_get(many.processes[0], addr)) | PTE_AF)
    gathered = many.get_and_clear_full_ptes_runs(many.processes[0], runs)
    expected = [one.get_and_clear_full_ptes(one.processes[0], 0x200000 + int(index) * 4096, int(nr_pages))
                for index, nr_pages in zip(runs.index, runs.nr_pages, strict=True)]
    assert list(map(int, gathered)) == expected
    assert not many.ptes_get(many.processes[0], 0x200000, 512).any()
    assert int(gathered[0]) & PTE_RDONLY


def test_pte_runs_refuse_overlap_and_table_crossing():
    import numpy as np
    import pytest

    from machine import MachineBug, PteRuns
    with pytest.raises(MachineBug):
        PteRuns(0x200000, np.array([0, 2]), np.array([3, 1]))
    with pytest.raises(MachineBug):
        PteRuns(0x200000, np.array([510]), np.array([3]))
    with pytest.raises(MachineBug):
        PteRuns(0x200000, np.array([4]), np.array([0]))
