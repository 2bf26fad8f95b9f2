"""contpte blocks as arm64's arch code folds them (arch/arm64/mm/contpte.c, docs/model.md #91-#99).

A block is 16 entries at a 64 KiB-aligned VA. set_ptes of more than one entry sets CONT on
each block it covers wholly with its first pfn a multiple of 16; set_pte_at unfolds the
entry's block and tries to fold at the block's last entry (one folio, consecutive pfns, equal
N(e) = pte_mkold(pte_mkclean(e)) without CONT and pfn); the single-entry writers unfold; the
range writers unfold only the blocks they cover partly; fold and unfold gather young and dirty
into all 16; ptep_get of a folded entry gathers them; the MMU marks the entry it walked.
"""

from __future__ import annotations

import numpy as np
import pytest
from pte_values import BASE_PROT, fault_pte

from machine import Machine, MachineBug
from machine.pgtable import (
    CONT_PTES,
    PAGE_SIZE,
    PTE_AF,
    PTE_CONT,
    PTE_RDONLY,
    PTE_WRITE,
    pfn_pte,
    pte_cont,
    pte_dirty,
    pte_mkold,
    pte_mkwrite,
    pte_mkyoung,
    pte_pmd,
    pte_write,
    pte_young,
    swp_entry_to_pte,
)

TABLE_VA = 0x200000          # one PTE table covers 0x200000..0x3fffff
VA = TABLE_VA + 0x10000      # 64 KiB aligned: block 1 of that table


def clean_old_writable(pfn: int) -> int:
    return pte_mkold(pte_mkwrite(pfn_pte(pfn, BASE_PROT)))


def clean_old_readonly(pfn: int) -> int:
    return pte_mkold(pfn_pte(pfn, BASE_PROT))


@pytest.fixture
def machine() -> Machine:
    """Folios: order 5 at pfn 0, order 3 at 32 and 40, order 4 at 48; 64.. free."""
    machine = Machine()
    frames = machine.frames
    assert frames.folio_alloc(5) == 0
    assert frames.folio_alloc(3) == 32
    assert frames.folio_alloc(3) == 40
    assert frames.folio_alloc(4) == 48
    return machine


@pytest.fixture
def mm(machine):
    return machine.processes[0]


def raw_block(mm, va: int = VA) -> list[int]:
    table = mm.pte_table(va)
    first = (va - TABLE_VA) // PAGE_SIZE
    return [int(x) for x in table.entries[first:first + CONT_PTES]]


def folded(entries: list[int]) -> bool:
    return all(pte_cont(pte) for pte in entries)


def unfolded(entries: list[int]) -> bool:
    return not any(pte_cont(pte) for pte in entries)


def valid(machine: Machine, mm, va: int = VA) -> bool:
    table = mm.pte_table(va)
    return bool(machine.contpte_blocks_valid(table.entries)[(va >> 16) & 31])


# --- set_ptes (contpte_set_ptes) and set_pte_at (contpte_try_fold) -----------

def test_set_ptes_of_a_whole_aligned_block_folds_it(machine, mm):
    machine.set_ptes(mm, VA, fault_pte(48), CONT_PTES)
    assert folded(raw_block(mm)) and valid(machine, mm)


def test_set_ptes_folds_only_the_blocks_it_covers_wholly(machine, mm):
    machine.set_ptes(mm, VA + 8 * PAGE_SIZE, fault_pte(8), 24)   # pfns 8..31: half of block 1, all of block 2
    assert unfolded(raw_block(mm)) and folded(raw_block(mm, VA + 0x10000))


def test_set_ptes_with_an_unaligned_pfn_does_not_fold(machine, mm):
    machine.set_ptes(mm, VA, fault_pte(1), CONT_PTES)    # pfn 1..16 of the order-5 folio
    assert unfolded(raw_block(mm))


def test_set_ptes_of_swap_entries_never_sets_cont(machine, mm):
    machine.set_ptes(mm, VA, swp_entry_to_pte(16), CONT_PTES)
    assert unfolded(raw_block(mm))


def test_set_ptes_over_part_of_a_folded_block_is_a_machine_bug(machine, mm):
    machine.set_ptes(mm, VA, fault_pte(48), CONT_PTES)
    with pytest.raises(MachineBug):
        machine.set_ptes(mm, VA + 4 * PAGE_SIZE, fault_pte(52), 2)


def test_set_pte_at_folds_at_the_last_entry_of_an_eligible_block(machine, mm):
    for i in range(CONT_PTES - 1):
        machine.set_pte_at(mm, VA + i * PAGE_SIZE, fault_pte(48 + i))
        assert unfolded(raw_block(mm))
    machine.set_pte_at(mm, VA + 15 * PAGE_SIZE, clean_old_writable(63))
    block = raw_block(mm)
    assert folded(block) and all(pte_dirty(pte) and pte_young(pte) for pte in block)   # gathered into all 16


def test_set_pte_at_does_not_fold_at_another_entry(machine, mm):
    for i in (15, *range(CONT_PTES - 1)):
        machine.set_pte_at(mm, VA + i * PAGE_SIZE, fault_pte(48 + i))
    assert unfolded(raw_block(mm))


@pytest.mark.parametrize("case", ["two folios", "mixed write", "special", "unaligned pfn"])
def test_set_pte_at_does_not_fold_an_ineligible_block(machine, mm, case):
    ptes = [fault_pte(48 + i) for i in range(CONT_PTES)]
    if case == "two folios":
        ptes = [fault_pte(32 + i) for i in range(CONT_PTES)]
    elif case == "mixed write":
        ptes[3] = clean_old_readonly(51)
    elif case == "special":
        ptes[15] |= 1 << 56
    else:
        ptes = [fault_pte(1 + i) for i in range(CONT_PTES)]
    for i, pte in enumerate(ptes):
        machine.set_pte_at(mm, VA + i * PAGE_SIZE, pte)
    assert unfolded(raw_block(mm))


# --- unfolding: single-entry writers ----------------------------------------

def folded_block_with_one_young_entry(machine, mm) -> None:
    machine.set_ptes(mm, VA, clean_old_readonly(48), CONT_PTES)
    machine.user_read(mm, VA + 5 * PAGE_SIZE)


@pytest.mark.parametrize("writer", ["set_pte_at", "ptep_get_and_clear", "ptep_set_wrprotect"])
def test_single_entry_writers_unfold_gathering_young_into_all_16(machine, mm, writer):
    folded_block_with_one_young_entry(machine, mm)
    if writer == "set_pte_at":
        machine.set_pte_at(mm, VA + 2 * PAGE_SIZE, clean_old_readonly(50))
    elif writer == "ptep_get_and_clear":
        assert pte_young(machine.ptep_get_and_clear(mm, VA + 2 * PAGE_SIZE))
    else:
        machine.ptep_set_wrprotect(mm, VA + 2 * PAGE_SIZE)
    block = raw_block(mm)
    assert unfolded(block)
    assert all(pte_young(pte) for i, pte in enumerate(block) if i != 2)


def test_ptep_set_access_flags_changing_write_unfolds_and_sets_one_entry(machine, mm):
    machine.set_ptes(mm, VA, clean_old_readonly(48), CONT_PTES)
    entry = pte_mkwrite(pte_mkyoung(clean_old_readonly(51))) | (1 << 55)
    assert machine.ptep_set_access_flags(mm, VA + 3 * PAGE_SIZE, entry)
    block = raw_block(mm)
    assert unfolded(block) and [bool(pte_write(pte)) for pte in block] == [i == 3 for i in range(CONT_PTES)]


def test_ptep_set_access_flags_keeping_write_sets_all_16_folded(machine, mm):
    machine.set_ptes(mm, VA, clean_old_readonly(48), CONT_PTES)
    assert machine.ptep_set_access_flags(mm, VA + 3 * PAGE_SIZE, pte_mkyoung(clean_old_readonly(51)))
    block = raw_block(mm)
    assert folded(block) and all(pte_young(pte) for pte in block)
    assert not machine.ptep_set_access_flags(mm, VA + 3 * PAGE_SIZE, pte_mkyoung(clean_old_readonly(51)))


def test_the_mmu_marks_only_the_entry_it_walked_and_ptep_get_gathers(machine, mm):
    machine.set_ptes(mm, VA, clean_old_writable(48), CONT_PTES)
    machine.user_write(mm, VA + 7 * PAGE_SIZE, 9)
    block = raw_block(mm)
    assert folded(block) and [bool(pte_dirty(pte)) for pte in block] == [i == 7 for i in range(CONT_PTES)]
    assert all(pte_dirty(machine.ptep_get(mm, VA + i * PAGE_SIZE)) for i in range(CONT_PTES))
    assert all(pte_dirty(machine.ptes_get(mm, VA, CONT_PTES)))
    assert machine.frames.page_data[55] == 9


def test_ptep_get_of_an_unfolded_entry_is_raw(machine, mm):
    for i in range(CONT_PTES):
        machine.set_pte_at(mm, VA + i * PAGE_SIZE, clean_old_readonly(32 + i))   # two folios: never folds
    machine.user_read(mm, VA)
    assert [bool(pte_young(machine.ptep_get(mm, VA + i * PAGE_SIZE))) for i in range(CONT_PTES)] \
        == [i == 0 for i in range(CONT_PTES)]


# --- range writers ------------------------------------------------------------

def test_wrprotect_ptes_of_a_whole_block_keeps_it_folded(machine, mm):
    machine.set_ptes(mm, VA, fault_pte(48), CONT_PTES)
    machine.wrprotect_ptes(mm, VA, CONT_PTES)
    block = raw_block(mm)
    assert folded(block) and not any(pte & PTE_WRITE for pte in block) and valid(machine, mm)


def test_wrprotect_ptes_of_part_of_a_block_unfolds_it(machine, mm):
    machine.set_ptes(mm, VA, fault_pte(48), CONT_PTES)
    machine.wrprotect_ptes(mm, VA + 4 * PAGE_SIZE, 8)
    block = raw_block(mm)
    assert unfolded(block) and [bool(pte_write(pte)) for pte in block] == [not 4 <= i < 12 for i in range(16)]


def test_get_and_clear_full_ptes_gathers_over_whole_folded_blocks(machine, mm):
    machine.set_ptes(mm, VA, clean_old_writable(48), CONT_PTES)
    machine.user_write(mm, VA + 9 * PAGE_SIZE, 1)
    pte = machine.get_and_clear_full_ptes(mm, VA, CONT_PTES)
    assert pte_dirty(pte) and pte_young(pte) and not any(raw_block(mm))


def test_clear_full_ptes_of_part_of_a_block_unfolds_the_rest(machine, mm):
    machine.set_ptes(mm, VA, fault_pte(48), CONT_PTES)
    machine.clear_full_ptes(mm, VA + 12 * PAGE_SIZE, 4)
    block = raw_block(mm)
    assert unfolded(block) and all(block[:12]) and not any(block[12:])


def test_clear_young_dirty_ptes_widens_to_the_whole_folded_block(machine, mm):
    machine.set_ptes(mm, VA, fault_pte(48), CONT_PTES)
    machine.clear_young_dirty_ptes(mm, VA + 3 * PAGE_SIZE, 1)
    block = raw_block(mm)
    assert folded(block) and not any(pte_dirty(pte) or pte_young(pte) for pte in block)


def test_runs_behave_as_one_call_per_run(machine, mm):
    from machine.machine import PteRuns

    machine.set_ptes(mm, VA, fault_pte(48), CONT_PTES)
    other = Machine()
    for order in (5, 3, 3, 4):
        other.frames.folio_alloc(order)
    other_mm = other.processes[0]
    other.set_ptes(other_mm, VA, fault_pte(48), CONT_PTES)
    runs = PteRuns(TABLE_VA, np.array([16, 20], np.int64), np.array([2, 12], np.int64))
    machine.wrprotect_ptes_runs(mm, runs)
    other.wrprotect_ptes(other_mm, VA, 2)
    other.wrprotect_ptes(other_mm, VA + 4 * PAGE_SIZE, 12)
    assert raw_block(mm) == raw_block(other_mm)


# --- validity (oracle 7) --------------------------------------------------------

def test_valid_for_no_cont_and_for_an_empty_table(machine, mm):
    for i in range(CONT_PTES):
        machine.set_pte_at(mm, VA + i * PAGE_SIZE, clean_old_readonly(32 + i))
    assert machine.contpte_blocks_valid(mm.pte_table(VA).entries).all()
    assert machine.contpte_blocks_valid(np.zeros(512, np.uint64)).all()


def test_not_valid_for_a_half_cont_block(machine, mm):
    machine.set_ptes(mm, VA, fault_pte(48), CONT_PTES)
    mm.pte_table(VA).entries[16:24] &= ~np.uint64(PTE_CONT)
    assert not valid(machine, mm)


def test_not_valid_for_a_folded_block_of_two_folios(machine, mm):
    for i in range(CONT_PTES):
        machine.set_pte_at(mm, VA + i * PAGE_SIZE, clean_old_readonly(32 + i))
    mm.pte_table(VA).entries[16:32] |= np.uint64(PTE_CONT)
    assert not valid(machine, mm)


def test_valid_for_a_folded_block_with_per_entry_young_and_dirty(machine, mm):
    machine.set_ptes(mm, VA, clean_old_writable(48), CONT_PTES)
    machine.user_write(mm, VA + 2 * PAGE_SIZE, 1)
    machine.user_read(mm, VA + 9 * PAGE_SIZE)
    assert valid(machine, mm)
    mm.pte_table(VA).entries[20] &= ~np.uint64(PTE_RDONLY | PTE_AF)   # hardware-dirty, old
    assert valid(machine, mm)


def test_user_write_to_a_read_only_entry_is_a_machine_bug(machine, mm):
    machine.set_ptes(mm, VA, clean_old_readonly(48), CONT_PTES)
    with pytest.raises(MachineBug):
        machine.user_write(mm, VA, 1)


def test_user_access_to_a_pmd_block_sets_af_and_clears_rdonly():
    machine = Machine()
    mm = machine.processes[0]
    folio = machine.frames.folio_alloc(9)
    pmd = pte_pmd(clean_old_writable(folio))
    machine.set_pmd_at(mm, TABLE_VA, pmd)
    machine.user_read(mm, TABLE_VA + 3 * PAGE_SIZE)
    assert machine.pmdp_get(mm, TABLE_VA) == pmd | PTE_AF
    machine.user_write(mm, TABLE_VA + 7 * PAGE_SIZE, 9)
    assert machine.pmdp_get(mm, TABLE_VA) == (pmd | PTE_AF) & ~PTE_RDONLY
    assert machine.frames.page_data[folio + 7] == 9


def test_normalise_ignored_mask_matches_contpte_normalise():
    """machine's one-block fast path compares entries under CONTPTE_NORMALISE_IGNORED;
    it must mean exactly 'equal N(e) once the pfn is set aside'."""
    import random

    from machine.pgtable import (
        CONTPTE_NORMALISE_IGNORED,
        PTE_ADDR_MASK,
        contpte_normalise,
    )

    rng = random.Random(5)
    bits = [0, 1, 2, 6, 7, 8, 9, 10, 11, 51, 52, 53, 54, 55, 56]
    for _ in range(5000):
        a = sum(1 << b for b in bits if rng.random() < 0.5) | (rng.randrange(64) << 12)
        b = a ^ sum(1 << bit for bit in rng.sample(bits, rng.randrange(3)))
        b = (b & ~PTE_ADDR_MASK) | (rng.randrange(64) << 12)
        same_n = contpte_normalise(a) == contpte_normalise(b)
        same_masked = ((a ^ b) & ~(CONTPTE_NORMALISE_IGNORED | PTE_ADDR_MASK)) == 0
        assert same_n == same_masked, (hex(a), hex(b))
