"""contpte canonical folding (SPEC §2.4, model).

A block is 16 entries at a 64 KiB-aligned VA. Eligible: all 16 valid pages of
one folio, pfns consecutive from a multiple of 16, equal
N(e) = pte_mkold(pte_mkclean(e)) without CONT and pfn. Canonicalising folds
each eligible block (CONT on all 16, dirty and young ORed over the block) and
clears CONT on every other block, entries otherwise unchanged.
"""

from __future__ import annotations

import numpy as np
import pytest
from pte_values import BASE_PROT, fault_pte

from machine import VMA, Machine, MachineBug
from machine.pgtable import (
    CONT_PTES,
    PAGE_SIZE,
    PTE_AF,
    PTE_CONT,
    PTE_DIRTY,
    PTE_NG,
    PTE_RDONLY,
    pfn_pte,
    pte_cont,
    pte_dirty,
    pte_mkdirty,
    pte_mkold,
    pte_mkwrite,
    pte_mkyoung,
    pte_pmd,
    pte_wrprotect,
    pte_young,
    swp_entry_to_pte,
)

TABLE_VA = 0x200000          # one PTE table covers 0x200000..0x3fffff
VA = TABLE_VA + 0x10000      # 64 KiB aligned: block 1 of that table
BLOCK = (VA - TABLE_VA) // PAGE_SIZE // CONT_PTES


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


def block_entries(machine: Machine, mm, va: int = VA) -> list[int]:
    return [int(x) for x in machine.ptes_get(mm, va, CONT_PTES)]


def write_block(machine: Machine, mm, entries: list[int], va: int = VA) -> None:
    for index, pte in enumerate(entries):
        machine.set_pte_at(mm, va + index * PAGE_SIZE, pte)


def canonical(machine: Machine, mm, va: int = VA) -> bool:
    table = mm.pte_table(va)
    return bool(machine.contpte_blocks_canonical(table.entries)[(va >> 16) & 31])


def folded(entries: list[int]) -> bool:
    return all(pte_cont(pte) for pte in entries)


def unfolded(entries: list[int]) -> bool:
    return not any(pte_cont(pte) for pte in entries)


# --- folding ----------------------------------------------------------------

def test_set_ptes_of_an_order_4_folio_at_64k_folds_on_canonicalise(machine, mm):
    machine.set_ptes(mm, VA, fault_pte(48), CONT_PTES)
    before = block_entries(machine, mm)
    assert unfolded(before)  # primitives write raw entries
    machine.contpte_canonicalise()
    after = block_entries(machine, mm)
    assert after == [pte | PTE_CONT for pte in before]
    assert canonical(machine, mm)


def test_block_inside_a_larger_folio_folds(machine, mm):
    machine.set_ptes(mm, VA, fault_pte(0), 32)  # order-5 folio: two blocks
    machine.contpte_canonicalise()
    assert folded(block_entries(machine, mm))
    assert folded(block_entries(machine, mm, VA + 0x10000))


def test_pte_mapped_order_9_folio_folds_every_block():
    machine = Machine()
    folio = machine.frames.folio_alloc(9)
    mm = machine.processes[0]
    machine.set_ptes(mm, TABLE_VA, fault_pte(folio), 512)
    machine.contpte_canonicalise()
    entries = mm.pte_table(TABLE_VA).entries
    assert pte_cont(entries).all()
    assert machine.contpte_blocks_canonical(entries).all()


def test_fold_ors_dirty_and_young_over_the_block(machine, mm):
    machine.set_ptes(mm, VA, clean_old_writable(48), CONT_PTES)
    entries = block_entries(machine, mm)
    machine.set_pte_at(mm, VA + 3 * PAGE_SIZE, pte_mkdirty(entries[3]))
    machine.set_pte_at(mm, VA + 7 * PAGE_SIZE, pte_mkyoung(entries[7]))
    machine.contpte_canonicalise()
    after = block_entries(machine, mm)
    assert after == [pte_mkyoung(pte_mkdirty(clean_old_writable(48 + i))) | PTE_CONT
                     for i in range(CONT_PTES)]
    assert all(pte_dirty(pte) and pte_young(pte) for pte in after)
    assert not any(pte & PTE_RDONLY for pte in after)  # writable: pte_mkdirty clears RDONLY
    assert canonical(machine, mm)


def test_fold_ors_hardware_dirtiness_as_pte_mkdirty(machine, mm):
    machine.set_ptes(mm, VA, clean_old_writable(48), CONT_PTES)
    hw_dirty = clean_old_writable(48 + 12) & ~PTE_RDONLY  # DBM wrote it: no DIRTY bit
    machine.set_pte_at(mm, VA + 12 * PAGE_SIZE, hw_dirty)
    machine.contpte_canonicalise()
    after = block_entries(machine, mm)
    assert all(pte & PTE_DIRTY and not pte & PTE_RDONLY for pte in after)
    assert not any(pte_young(pte) for pte in after)


def test_fold_of_a_readonly_block_with_one_dirty_entry_keeps_rdonly(machine, mm):
    machine.set_ptes(mm, VA, clean_old_readonly(48), CONT_PTES)
    machine.set_pte_at(mm, VA, pte_mkdirty(clean_old_readonly(48)))
    machine.contpte_canonicalise()
    after = block_entries(machine, mm)
    assert after == [clean_old_readonly(48 + i) | PTE_DIRTY | PTE_CONT for i in range(CONT_PTES)]


def test_fold_of_a_clean_old_block_adds_nothing_but_cont(machine, mm):
    machine.set_ptes(mm, VA, clean_old_writable(48), CONT_PTES)
    machine.contpte_canonicalise()
    assert block_entries(machine, mm) == [clean_old_writable(48 + i) | PTE_CONT for i in range(16)]


def test_set_ptes_at_an_unaligned_va_does_not_fold(machine, mm):
    # pfns 48..63 written from VA + 8 pages: each block holds half the run.
    machine.set_ptes(mm, VA + 8 * PAGE_SIZE, fault_pte(48), CONT_PTES)
    machine.contpte_canonicalise()
    assert unfolded(block_entries(machine, mm))
    assert unfolded(block_entries(machine, mm, VA + 0x10000))


# --- ineligible blocks ------------------------------------------------------

def eligible_block() -> list[int]:
    return [fault_pte(48 + i) for i in range(CONT_PTES)]


def with_entry(entries: list[int], index: int, pte: int) -> list[int]:
    entries = list(entries)
    entries[index] = pte
    return entries


INELIGIBLE = {
    "two_folios": [fault_pte(32 + i) for i in range(CONT_PTES)],
    "non_consecutive_pfns": with_entry(with_entry(eligible_block(), 2, fault_pte(51)), 3, fault_pte(50)),
    "pfn_repeated": with_entry(eligible_block(), 15, fault_pte(62)),
    "pfns_not_from_a_multiple_of_16": [fault_pte(8 + i) for i in range(CONT_PTES)],
    "one_entry_not_writable": with_entry(eligible_block(), 5, pte_wrprotect(fault_pte(53))),
    "one_entry_other_attribute": with_entry(eligible_block(), 6, fault_pte(54) & ~PTE_NG),
    "one_swap_entry": with_entry(eligible_block(), 9, swp_entry_to_pte(5)),
    "one_missing_entry": with_entry(eligible_block(), 15, 0),
    "first_entry_missing": with_entry(eligible_block(), 0, 0),
    "free_frames": [fault_pte(64 + i) for i in range(CONT_PTES)],
    "one_pmd_format_entry": with_entry(eligible_block(), 4, pte_pmd(fault_pte(52))),
}


@pytest.mark.parametrize("case", list(INELIGIBLE))
def test_ineligible_block_is_not_folded_and_left_unchanged(machine, mm, case):
    entries = INELIGIBLE[case]
    write_block(machine, mm, entries)
    machine.contpte_canonicalise()
    assert block_entries(machine, mm) == entries
    assert canonical(machine, mm)


@pytest.mark.parametrize("case", list(INELIGIBLE))
def test_ineligible_block_gets_cont_cleared_on_all_16(machine, mm, case):
    entries = INELIGIBLE[case]
    # As if it had been folded: CONT on every present entry.
    write_block(machine, mm, [pte | PTE_CONT if pte & 1 else pte for pte in entries])
    assert not canonical(machine, mm)
    machine.contpte_canonicalise()
    assert block_entries(machine, mm) == entries
    assert canonical(machine, mm)


@pytest.mark.parametrize("case", ["non_consecutive_pfns", "one_entry_not_writable", "one_swap_entry",
                                  "one_missing_entry", "one_entry_other_attribute"])
def test_changing_one_entry_of_a_folded_block_unfolds_all_16(machine, mm, case):
    machine.set_ptes(mm, VA, fault_pte(48), CONT_PTES)
    machine.contpte_canonicalise()
    changed = [i for i in range(CONT_PTES) if INELIGIBLE[case][i] != eligible_block()[i]]
    for index in changed:
        machine.set_pte_at(mm, VA + index * PAGE_SIZE, INELIGIBLE[case][index])
    machine.contpte_canonicalise()
    assert block_entries(machine, mm) == INELIGIBLE[case]


def test_ineligible_block_keeps_per_entry_dirty_and_young(machine, mm):
    entries = with_entry([clean_old_writable(48 + i) for i in range(16)], 5, 0)
    entries[2] = pte_mkdirty(entries[2])
    entries[9] = pte_mkyoung(entries[9])
    write_block(machine, mm, entries)
    machine.contpte_canonicalise()
    assert block_entries(machine, mm) == entries


def test_pfns_beyond_the_machine_are_not_eligible():
    machine = Machine(16)
    mm = machine.processes[0]
    machine.set_ptes(mm, VA, fault_pte(16), CONT_PTES)  # pfns 16..31 do not exist
    machine.contpte_canonicalise()
    assert unfolded(block_entries(machine, mm))


def test_order_2_folios_never_fold():
    machine = Machine()
    mm = machine.processes[0]
    heads = [machine.frames.folio_alloc(2) for _ in range(4)]
    assert heads == [0, 4, 8, 12]
    machine.set_ptes(mm, VA, fault_pte(0), CONT_PTES)
    machine.contpte_canonicalise()
    assert unfolded(block_entries(machine, mm))


def test_block_refolds_after_the_entry_is_changed_back(machine, mm):
    machine.set_ptes(mm, VA, fault_pte(48), CONT_PTES)
    machine.contpte_canonicalise()
    machine.ptep_set_wrprotect(mm, VA + 5 * PAGE_SIZE)
    machine.contpte_canonicalise()
    assert unfolded(block_entries(machine, mm))
    machine.set_pte_at(mm, VA + 5 * PAGE_SIZE, fault_pte(53))
    machine.contpte_canonicalise()
    assert block_entries(machine, mm) == [fault_pte(48 + i) | PTE_CONT for i in range(16)]


def test_block_refolds_after_a_missing_entry_is_filled(machine, mm):
    write_block(machine, mm, INELIGIBLE["one_missing_entry"])
    machine.contpte_canonicalise()
    machine.set_pte_at(mm, VA + 15 * PAGE_SIZE, clean_old_writable(63))
    machine.contpte_canonicalise()
    after = block_entries(machine, mm)
    assert folded(after)
    assert all(pte_dirty(pte) and pte_young(pte) for pte in after)  # ORed from the other 15


def test_block_may_span_a_vma_boundary(machine, mm):
    mm.vma_insert(VMA(VA, VA + 0x8000, True, 0))
    mm.vma_insert(VMA(VA + 0x8000, VA + 0x10000, False, 1))
    machine.set_ptes(mm, VA, fault_pte(48), CONT_PTES)
    machine.contpte_canonicalise()
    assert folded(block_entries(machine, mm))


def test_block_outside_any_vma_still_folds(machine, mm):
    assert mm.vmas == []
    machine.set_ptes(mm, VA, fault_pte(48), CONT_PTES)
    machine.contpte_canonicalise()
    assert folded(block_entries(machine, mm))


# --- contpte_blocks_canonical (oracle 7) ------------------------------------

def test_canonical_after_canonicalise_and_for_an_empty_table(machine, mm):
    write_block(machine, mm, INELIGIBLE["two_folios"])
    machine.set_ptes(mm, VA + 0x10000, fault_pte(0), 32)
    machine.contpte_canonicalise()
    assert machine.contpte_blocks_canonical(mm.pte_table(VA).entries).all()
    assert machine.contpte_blocks_canonical(np.zeros(512, np.uint64)).all()


def test_not_canonical_for_a_half_cont_block(machine, mm):
    machine.set_ptes(mm, VA, fault_pte(48), CONT_PTES)
    machine.contpte_canonicalise()
    table = mm.pte_table(VA)
    first = BLOCK * CONT_PTES
    table.entries[first:first + 8] &= ~np.uint64(PTE_CONT)
    assert not canonical(machine, mm)


def test_not_canonical_for_a_folded_ineligible_block(machine, mm):
    write_block(machine, mm, [pte | PTE_CONT for pte in INELIGIBLE["two_folios"]])
    assert not canonical(machine, mm)


def test_not_canonical_for_an_unfolded_eligible_block(machine, mm):
    machine.set_ptes(mm, VA, fault_pte(48), CONT_PTES)
    assert not canonical(machine, mm)


def test_not_canonical_for_a_folded_block_with_non_uniform_af(machine, mm):
    machine.set_ptes(mm, VA, fault_pte(48), CONT_PTES)
    machine.contpte_canonicalise()
    table = mm.pte_table(VA)
    table.entries[BLOCK * CONT_PTES + 3] &= ~np.uint64(PTE_AF)
    assert not canonical(machine, mm)


def test_not_canonical_for_a_folded_block_with_non_uniform_dirty(machine, mm):
    machine.set_ptes(mm, VA, clean_old_writable(48), CONT_PTES)
    machine.contpte_canonicalise()
    table = mm.pte_table(VA)
    table.entries[BLOCK * CONT_PTES + 3] |= np.uint64(PTE_DIRTY)
    assert not canonical(machine, mm)


def test_canonical_is_per_block(machine, mm):
    machine.set_ptes(mm, VA, fault_pte(48), CONT_PTES)  # block 1 unfolded but eligible
    result = machine.contpte_blocks_canonical(mm.pte_table(VA).entries)
    assert result.shape == (32,)
    assert list(np.flatnonzero(~result)) == [BLOCK]


# --- user access ------------------------------------------------------------

def test_user_read_of_a_folded_block_marks_all_16_young(machine, mm):
    machine.set_ptes(mm, VA, clean_old_writable(48), CONT_PTES)
    machine.contpte_canonicalise()
    machine.frames.page_data[53] = 1234
    assert machine.user_read(mm, VA + 5 * PAGE_SIZE) == 1234
    after = block_entries(machine, mm)
    assert after == [clean_old_writable(48 + i) | PTE_CONT | PTE_AF for i in range(16)]
    assert canonical(machine, mm)


def test_user_write_to_a_folded_block_clears_rdonly_and_sets_af_on_all_16(machine, mm):
    machine.set_ptes(mm, VA, clean_old_writable(48), CONT_PTES)
    machine.contpte_canonicalise()
    machine.user_write(mm, VA + 9 * PAGE_SIZE, 77)
    after = block_entries(machine, mm)
    assert after == [(clean_old_writable(48 + i) | PTE_CONT | PTE_AF) & ~PTE_RDONLY for i in range(16)]
    assert all(pte_dirty(pte) for pte in after)
    assert canonical(machine, mm)
    data = machine.frames.page_data
    assert data[57] == 77 and int(data[48:64].sum()) == 77  # only the written page


def test_user_access_to_an_unfolded_entry_marks_only_that_entry(machine, mm):
    entries = INELIGIBLE["two_folios"]
    entries = [pte_mkold(pte) for pte in entries]
    write_block(machine, mm, entries)
    machine.contpte_canonicalise()
    machine.user_write(mm, VA + 2 * PAGE_SIZE, 5)
    after = block_entries(machine, mm)
    assert after == with_entry(entries, 2, entries[2] | PTE_AF)  # fault_pte is already hw-dirty
    machine.user_read(mm, VA + 4 * PAGE_SIZE)
    assert block_entries(machine, mm)[4] == entries[4] | PTE_AF
    assert canonical(machine, mm)


def test_user_write_clears_rdonly_on_an_unfolded_writable_clean_entry(machine, mm):
    write_block(machine, mm, [clean_old_writable(32 + i) for i in range(16)])  # two folios
    machine.contpte_canonicalise()
    machine.user_write(mm, VA, 1)
    after = block_entries(machine, mm)
    assert after[0] == (clean_old_writable(32) | PTE_AF) & ~PTE_RDONLY
    assert after[1:] == [clean_old_writable(33 + i) for i in range(15)]


def test_user_write_to_a_read_only_entry_is_a_machine_bug(machine, mm):
    machine.set_ptes(mm, VA, clean_old_readonly(48), CONT_PTES)
    machine.contpte_canonicalise()
    with pytest.raises(MachineBug):
        machine.user_write(mm, VA, 1)


def test_user_access_to_an_unmapped_address_is_a_machine_bug(machine, mm):
    with pytest.raises(MachineBug):
        machine.user_read(mm, VA)
    machine.set_pte_at(mm, VA, swp_entry_to_pte(3))
    with pytest.raises(MachineBug):
        machine.user_read(mm, VA)


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


# --- only written tables are canonicalised ----------------------------------

OTHER_TABLE_VA = 0x400000


def test_only_blocks_written_since_the_last_canonicalise_are_canonicalised(machine, mm):
    machine.set_ptes(mm, VA, fault_pte(48), CONT_PTES)
    machine.set_ptes(mm, OTHER_TABLE_VA, fault_pte(0), CONT_PTES)
    machine.contpte_canonicalise()
    # Strip the fold of the other table behind the machine's back.
    other = mm.pte_table(OTHER_TABLE_VA)
    other.entries[:CONT_PTES] &= ~np.uint64(PTE_CONT)
    stripped = other.entries.copy()
    # Only read it, through every read path.
    machine.ptep_get(mm, OTHER_TABLE_VA)
    machine.ptes_get(mm, OTHER_TABLE_VA, 16)
    machine.lookup(mm, OTHER_TABLE_VA)
    machine.page_at(mm, OTHER_TABLE_VA)
    list(mm.leaves())
    machine.user_read(mm, OTHER_TABLE_VA)  # the hardware's AF update is not a write
    stripped[0] |= np.uint64(PTE_AF)
    # Write the first table.
    machine.set_pte_at(mm, VA, fault_pte(48))
    machine.contpte_canonicalise()
    assert folded(block_entries(machine, mm))
    assert np.array_equal(other.entries, stripped)  # left as it was
    # A write elsewhere in the other table leaves the block alone; one inside it
    # makes the block canonical again.
    machine.set_pte_at(mm, OTHER_TABLE_VA + 400 * PAGE_SIZE, 0)
    machine.contpte_canonicalise()
    assert np.array_equal(other.entries, stripped)
    machine.set_pte_at(mm, OTHER_TABLE_VA + 7 * PAGE_SIZE, int(other.entries[7]))
    machine.contpte_canonicalise()
    assert pte_cont(other.entries[:CONT_PTES]).all()


def test_canonicalise_without_writes_changes_nothing(machine, mm):
    machine.contpte_canonicalise()
    assert list(mm.leaves()) == []
    machine.set_ptes(mm, VA, fault_pte(48), CONT_PTES)
    machine.contpte_canonicalise()
    table = mm.pte_table(VA)
    table.entries[BLOCK * CONT_PTES] &= ~np.uint64(PTE_CONT)  # raw, untracked
    snapshot = table.entries.copy()
    machine.contpte_canonicalise()
    assert np.array_equal(table.entries, snapshot)


WRITERS = {
    "set_pte_at": lambda m, mm, va: m.set_pte_at(mm, va, 0),
    "ptep_get_and_clear": lambda m, mm, va: m.ptep_get_and_clear(mm, va),
    "ptep_set_wrprotect": lambda m, mm, va: m.ptep_set_wrprotect(mm, va),
    "set_ptes": lambda m, mm, va: m.set_ptes(mm, va, clean_old_readonly(48), 1),
    "get_and_clear_full_ptes": lambda m, mm, va: m.get_and_clear_full_ptes(mm, va, 2),
    "clear_full_ptes": lambda m, mm, va: m.clear_full_ptes(mm, va, 2),
    "wrprotect_ptes": lambda m, mm, va: m.wrprotect_ptes(mm, va, 2),
}


@pytest.mark.parametrize("writer", list(WRITERS))
def test_every_pte_writer_marks_its_table_for_canonicalisation(machine, mm, writer):
    machine.set_ptes(mm, VA, fault_pte(48), CONT_PTES)
    machine.contpte_canonicalise()
    WRITERS[writer](machine, mm, VA)
    machine.contpte_canonicalise()
    assert unfolded(block_entries(machine, mm))
    assert canonical(machine, mm)


def test_every_process_is_canonicalised(machine, mm):
    child = machine.mm_alloc()
    machine.set_ptes(mm, VA, fault_pte(48), CONT_PTES)
    machine.set_ptes(child, VA, fault_pte(48), CONT_PTES)
    machine.contpte_canonicalise()
    assert folded(block_entries(machine, mm))
    assert folded(block_entries(machine, child))


def test_pmd_installed_over_a_written_empty_table_is_left_alone():
    machine = Machine()
    mm = machine.processes[0]
    folio = machine.frames.folio_alloc(9)
    machine.set_pte_at(mm, TABLE_VA, 0)  # allocates and writes a PTE table
    pmd = pte_pmd(fault_pte(folio))
    machine.set_pmd_at(mm, TABLE_VA, pmd)
    machine.contpte_canonicalise()
    assert machine.lookup(mm, TABLE_VA) == ("pmd", pmd)
    assert list(mm.leaves()) == [(TABLE_VA, "pmd", pmd)]


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
