"""Descriptor encoding and the arm64 pte helpers (SPEC §2.2, §2.3).

Every helper is branch-free bit arithmetic, so each must give the same answer
on one Python int and on a numpy uint64 array of descriptors.
"""

from __future__ import annotations

import numpy as np
import pytest

from machine import pgtable as pg
from machine.pgtable import (
    PTE_AF,
    PTE_ATTRINDX_MASK,
    PTE_CONT,
    PTE_DIRTY,
    PTE_NG,
    PTE_PXN,
    PTE_RDONLY,
    PTE_SPECIAL,
    PTE_SWP_EXCLUSIVE,
    PTE_TYPE,
    PTE_USER,
    PTE_UXN,
    PTE_VALID,
    PTE_WRITE,
)

PFN = 0x1234
BASE_PROT = pg.vm_get_page_prot(True)
BASE = pg.pfn_pte(PFN, BASE_PROT)                       # clean read-only, young
FAULT = (BASE | PTE_DIRTY | PTE_WRITE) & ~PTE_RDONLY   # SPEC §2.3 fault value
CLEAN_WRITABLE = BASE | PTE_WRITE                       # WRITE + RDONLY: DBM, not yet written
HW_DIRTY_WRITABLE = (BASE | PTE_WRITE) & ~PTE_RDONLY    # DBM cleared RDONLY, DIRTY clear
SW_DIRTY_RO = BASE | PTE_DIRTY                          # read-only, software dirty
SW_DIRTY_WRITABLE_CLEAN_HW = BASE | PTE_DIRTY | PTE_WRITE  # WRITE|RDONLY|DIRTY
OLD_RO = BASE & ~PTE_AF
OLD_HW_DIRTY = HW_DIRTY_WRITABLE & ~PTE_AF
CONT_FAULT = FAULT | PTE_CONT
CONT_CLEAN_OLD = (CLEAN_WRITABLE | PTE_CONT) & ~PTE_AF
HIGH_PFN = pg.pfn_pte((1 << 36) - 1, BASE_PROT) | PTE_WRITE
PMD_BLOCK = pg.pte_pmd(FAULT)
SWAP = pg.swp_entry_to_pte(77)
SWAP_EXCL = pg.pte_swp_mkexclusive(pg.swp_entry_to_pte((1 << 50) - 1))

DESCRIPTORS = {
    "none": 0,
    "clean_ro": BASE,
    "clean_writable": CLEAN_WRITABLE,
    "hw_dirty_writable": HW_DIRTY_WRITABLE,
    "fault": FAULT,
    "sw_dirty_ro": SW_DIRTY_RO,
    "sw_dirty_writable_rdonly": SW_DIRTY_WRITABLE_CLEAN_HW,
    "old_ro": OLD_RO,
    "old_hw_dirty": OLD_HW_DIRTY,
    "cont_fault": CONT_FAULT,
    "cont_clean_old": CONT_CLEAN_OLD,
    "high_pfn": HIGH_PFN,
    "special": BASE | PTE_SPECIAL,
    "pmd_block": PMD_BLOCK,
    "swap": SWAP,
    "swap_exclusive_max_slot": SWAP_EXCL,
}
PRESENT = {name: d for name, d in DESCRIPTORS.items() if d & PTE_VALID}

# Regression guard: an earlier pgtable.py moved PTE_WRITE (bit 51) *down* by 4
# to bit 47 (pfn bit 35) instead of up to PTE_DIRTY (bit 55), so
# pte_wrprotect/pte_modify of a writable entry corrupted its pfn and lost its
# hardware dirtiness. The pfn tests below use pfns with bit 35 clear and set.


def present_params() -> list:
    return [pytest.param(name, pte, id=name) for name, pte in PRESENT.items()]


def bit(pos: int) -> int:
    return 1 << pos


def bits(hi: int, lo: int) -> int:
    return ((1 << (hi - lo + 1)) - 1) << lo


# --- bit layout (SPEC §2.2) -------------------------------------------------

@pytest.mark.parametrize("name, value", [
    ("PTE_VALID", bit(0)),
    ("PTE_TYPE", bit(1)),
    ("PTE_ATTRINDX_MASK", bits(4, 2)),
    ("PTE_USER", bit(6)),
    ("PTE_RDONLY", bit(7)),
    ("PTE_SHARED", bits(9, 8)),
    ("PTE_AF", bit(10)),
    ("PTE_NG", bit(11)),
    ("PTE_ADDR_MASK", bits(47, 12)),
    ("PTE_WRITE", bit(51)),
    ("PTE_CONT", bit(52)),
    ("PTE_PXN", bit(53)),
    ("PTE_UXN", bit(54)),
    ("PTE_DIRTY", bit(55)),
    ("PTE_SPECIAL", bit(56)),
    ("PTE_SWP_EXCLUSIVE", bit(2)),
    ("PTE_UFFD_WP", bit(58)),
    ("PTE_SWP_UFFD_WP", bit(3)),
    ("SWP_TYPE_MASK", bits(10, 6)),
    ("SWP_OFFSET_MASK", bits(61, 12)),
])
def test_named_bits_sit_at_their_arm64_positions(name, value):
    assert getattr(pg, name) == value


def test_page_geometry_constants():
    assert pg.PAGE_SIZE == 4096
    assert pg.PMD_SIZE == 2 << 20
    assert pg.HPAGE_PMD_NR == 512
    assert pg.CONT_PTES == 16
    assert pg.CONT_PTE_SIZE == 64 << 10
    assert pg.TASK_SIZE == 1 << 48


@pytest.mark.parametrize("writable", [True, False])
def test_vm_get_page_prot_is_readonly_user_nonexec_normal_memory(writable):
    prot = pg.vm_get_page_prot(writable)
    expected = (PTE_VALID | PTE_TYPE | PTE_USER | PTE_RDONLY | bits(9, 8) | PTE_AF
                | PTE_NG | PTE_PXN | PTE_UXN)
    assert prot == expected
    assert prot & PTE_ATTRINDX_MASK == 0
    assert (prot >> 8) & 0b11 == 0b11
    assert not prot & (PTE_WRITE | PTE_DIRTY | PTE_CONT | PTE_SPECIAL | pg.PTE_ADDR_MASK)


def test_pfn_pte_puts_the_pfn_in_47_12_and_keeps_the_attributes():
    assert pg.pfn_pte(PFN, BASE_PROT) == (PFN << 12) | BASE_PROT
    assert pg.pte_pfn(BASE) == PFN
    # pfn bits already in prot are replaced, not ORed.
    assert pg.pfn_pte(1, BASE_PROT | (0xFF << 12)) == (1 << 12) | BASE_PROT
    assert pg.pte_pfn(HIGH_PFN) == (1 << 36) - 1


def test_pte_advance_pfn_moves_only_the_output_address():
    assert pg.pte_advance_pfn(FAULT, 5) == pg.pfn_pte(PFN + 5, FAULT & ~pg.PTE_ADDR_MASK)
    assert pg.pte_advance_pfn(FAULT, 0) == FAULT


# --- predicates -------------------------------------------------------------

@pytest.mark.parametrize("pte, dirty", [
    (BASE, False),
    (CLEAN_WRITABLE, False),
    (HW_DIRTY_WRITABLE, True),
    (SW_DIRTY_RO, True),
    (SW_DIRTY_WRITABLE_CLEAN_HW, True),
    (FAULT, True),
    (OLD_RO, False),
    (BASE & ~PTE_RDONLY, False),  # RDONLY clear without WRITE is not hardware dirty
])
def test_pte_dirty_is_sw_dirty_or_writable_without_rdonly(pte, dirty):
    assert pg.pte_dirty(pte) == dirty
    assert pg.pte_hw_dirty(pte) == bool(pte & PTE_WRITE and not pte & PTE_RDONLY)
    assert pg.pte_sw_dirty(pte) == bool(pte & PTE_DIRTY)


def test_pte_write_young_cont_read_their_bits():
    assert pg.pte_write(CLEAN_WRITABLE) and not pg.pte_write(SW_DIRTY_RO)
    assert pg.pte_young(BASE) and not pg.pte_young(OLD_RO)
    assert pg.pte_cont(CONT_FAULT) and not pg.pte_cont(FAULT)
    assert pg.pte_rdonly(BASE) and not pg.pte_rdonly(FAULT)


def test_present_none_and_swap_classify_descriptors():
    assert pg.pte_none(0) and not pg.pte_present(0) and not pg.is_swap_pte(0)
    assert pg.pte_present(BASE) and not pg.is_swap_pte(BASE) and not pg.pte_none(BASE)
    assert pg.is_swap_pte(SWAP) and not pg.pte_present(SWAP)
    assert pg.is_swap_pte(SWAP_EXCL)
    # Slot 0, not exclusive, is the one swap entry that looks like none.
    assert pg.swp_entry_to_pte(0) == 0


# --- modifiers --------------------------------------------------------------

def test_pte_mkdirty_sets_dirty_and_clears_rdonly_only_when_writable():
    assert pg.pte_mkdirty(BASE) == BASE | PTE_DIRTY  # read-only keeps RDONLY
    assert pg.pte_mkdirty(CLEAN_WRITABLE) == (CLEAN_WRITABLE | PTE_DIRTY) & ~PTE_RDONLY
    assert pg.pte_hw_dirty(pg.pte_mkdirty(CLEAN_WRITABLE))
    assert not pg.pte_hw_dirty(pg.pte_mkdirty(BASE))


def test_pte_mkwrite_clears_rdonly_only_when_sw_dirty():
    # Commit 143937ca51cc: a clean entry becomes writable-clean, not dirty.
    assert pg.pte_mkwrite(BASE) == BASE | PTE_WRITE
    assert pg.pte_mkwrite(BASE) & PTE_RDONLY
    assert not pg.pte_dirty(pg.pte_mkwrite(BASE))
    assert pg.pte_mkwrite(SW_DIRTY_RO) == (SW_DIRTY_RO | PTE_WRITE) & ~PTE_RDONLY
    assert pg.pte_mkwrite(pg.pte_mkwrite(BASE)) == pg.pte_mkwrite(BASE)


def test_pte_wrprotect_turns_hw_dirtiness_into_sw_dirty():
    assert pg.pte_wrprotect(HW_DIRTY_WRITABLE) == (HW_DIRTY_WRITABLE | PTE_DIRTY | PTE_RDONLY) & ~PTE_WRITE
    assert pg.pte_dirty(pg.pte_wrprotect(HW_DIRTY_WRITABLE))


def test_pte_wrprotect_of_clean_writable_stays_clean():
    result = pg.pte_wrprotect(CLEAN_WRITABLE)
    assert result == CLEAN_WRITABLE & ~PTE_WRITE
    assert not pg.pte_dirty(result) and not pg.pte_write(result) and result & PTE_RDONLY


@pytest.mark.parametrize("name, pte", present_params())
def test_pte_wrprotect_keeps_dirtiness_and_leaves_readonly(name, pte):
    result = pg.pte_wrprotect(pte)
    assert not pg.pte_write(result)
    assert result & PTE_RDONLY
    assert pg.pte_dirty(result) == pg.pte_dirty(pte)
    assert result & ~(PTE_WRITE | PTE_RDONLY | PTE_DIRTY) == pte & ~(PTE_WRITE | PTE_RDONLY | PTE_DIRTY)


@pytest.mark.parametrize("name, pte", present_params())
def test_pte_wrprotect_and_pte_modify_never_change_the_pfn(name, pte):
    assert pg.pte_pfn(pg.pte_wrprotect(pte)) == pg.pte_pfn(pte)
    assert pg.pte_pfn(pg.pte_modify(pte, BASE_PROT)) == pg.pte_pfn(pte)


@pytest.mark.parametrize("name, pte", present_params())
def test_pte_wrprotect_and_pte_modify_set_dirty_exactly_when_pte_dirty(name, pte):
    assert bool(pg.pte_wrprotect(pte) & PTE_DIRTY) == bool(pg.pte_dirty(pte))
    assert bool(pg.pte_modify(pte, BASE_PROT) & PTE_DIRTY) == bool(pg.pte_dirty(pte))


def test_pte_wrprotect_of_readonly_entry_is_identity():
    assert pg.pte_wrprotect(BASE) == BASE
    assert pg.pte_wrprotect(SW_DIRTY_RO) == SW_DIRTY_RO


@pytest.mark.parametrize("name, pte", present_params())
def test_pte_mkclean_clears_dirty_and_sets_rdonly(name, pte):
    result = pg.pte_mkclean(pte)
    assert result == (pte & ~PTE_DIRTY) | PTE_RDONLY
    assert not pg.pte_dirty(result)
    assert pg.pte_write(result) == pg.pte_write(pte)


def test_pte_mkold_and_mkyoung_toggle_only_af():
    assert pg.pte_mkold(FAULT) == FAULT & ~PTE_AF
    assert pg.pte_mkyoung(OLD_RO) == BASE
    assert pg.pte_mkold(OLD_RO) == OLD_RO
    assert pg.pte_mkyoung(BASE) == BASE


def test_pte_mkcont_and_mknoncont_toggle_only_cont():
    assert pg.pte_mkcont(FAULT) == CONT_FAULT
    assert pg.pte_mknoncont(CONT_FAULT) == FAULT
    assert pg.pte_mknoncont(FAULT) == FAULT


def test_fault_value_is_mkwrite_of_mkdirty_of_base():
    expected = (BASE | PTE_DIRTY | PTE_WRITE) & ~PTE_RDONLY
    assert pg.pte_mkwrite(pg.pte_mkdirty(BASE)) == expected
    # The other order gives the same value.
    assert pg.pte_mkdirty(pg.pte_mkwrite(BASE)) == expected
    assert pg.pte_dirty(expected) and pg.pte_write(expected) and pg.pte_young(expected)


def test_swap_in_by_read_fault_is_writable_and_clean():
    value = pg.pte_mkwrite(BASE)  # SPEC §2.3: base + WRITE
    assert value == BASE | PTE_WRITE
    assert pg.pte_write(value) and not pg.pte_dirty(value)


def test_pte_modify_with_base_keeps_hw_dirtiness_as_dirty():
    result = pg.pte_modify(HW_DIRTY_WRITABLE, BASE_PROT)
    assert result == pg.pfn_pte(PFN, BASE_PROT) | PTE_DIRTY
    assert pg.pte_dirty(result) and not pg.pte_write(result)


@pytest.mark.parametrize("name, pte", present_params())
def test_pte_modify_takes_protection_from_prot_and_keeps_af_dirty_pfn(name, pte):
    from_prot = PTE_USER | PTE_PXN | PTE_UXN | PTE_RDONLY | PTE_VALID | PTE_WRITE | PTE_ATTRINDX_MASK
    odd_prot = (PTE_VALID | (0b101 << 2) | PTE_UXN) | pg.pfn_pte(0x999, 0)  # pfn bits ignored
    for prot in (BASE_PROT, BASE_PROT & ~PTE_AF, odd_prot):
        result = pg.pte_modify(pte, prot)
        assert result & from_prot == prot & from_prot
        assert result & PTE_AF == pte & PTE_AF
        assert pg.pte_pfn(result) == pg.pte_pfn(pte)
        assert bool(result & PTE_DIRTY) == bool(pg.pte_dirty(pte))
        kept = ~from_prot & ~PTE_DIRTY & pg.MASK64
        assert result & kept == pte & kept  # CONT, nG, SH, TYPE... untouched


def test_pte_modify_then_mkwrite_restores_a_writable_dirty_entry():
    # mprotect ro->rw of an exclusive dirty page: pte_modify then pte_mkwrite.
    assert pg.pte_mkwrite(pg.pte_modify(FAULT, BASE_PROT)) == FAULT
    # and of a clean one: writable-clean.
    assert pg.pte_mkwrite(pg.pte_modify(BASE, BASE_PROT)) == CLEAN_WRITABLE


def test_pte_modify_to_a_writable_prot_makes_a_sw_dirty_entry_hw_dirty():
    result = pg.pte_modify(SW_DIRTY_RO, BASE_PROT | PTE_WRITE)
    assert result == (SW_DIRTY_RO | PTE_WRITE) & ~PTE_RDONLY


def test_contpte_normalise_ignores_af_dirty_rdonly_cont_and_pfn():
    normal = pg.contpte_normalise(CLEAN_WRITABLE & ~PTE_AF)
    for pte in (CLEAN_WRITABLE, HW_DIRTY_WRITABLE, FAULT, CONT_FAULT, CONT_CLEAN_OLD,
                SW_DIRTY_WRITABLE_CLEAN_HW, pg.pte_advance_pfn(FAULT, 3)):
        assert pg.contpte_normalise(pte) == normal
    # WRITE is not normalised away.
    assert pg.contpte_normalise(BASE) != normal
    assert pg.contpte_normalise(pg.pte_wrprotect(FAULT)) == pg.contpte_normalise(BASE)


# --- PMD blocks -------------------------------------------------------------

@pytest.mark.parametrize("name, pte", [(n, d) for n, d in PRESENT.items() if d & 0b11 == 0b11])
def test_pte_pmd_gives_block_bits_01_and_pmd_pte_round_trips(name, pte):
    pmd = pg.pte_pmd(pte)
    assert pmd & 0b11 == 0b01
    assert pmd == pte & ~PTE_TYPE
    assert pg.pmd_trans_huge(pmd) and not pg.pmd_table(pmd)
    assert pg.pmd_pte(pmd) == pte


def test_pmd_trans_huge_is_false_for_none_table_and_swap():
    assert not pg.pmd_trans_huge(0)
    assert not pg.pmd_trans_huge(pg.PMD_TYPE_TABLE | (5 << 12))
    assert pg.pmd_table(pg.PMD_TYPE_TABLE | (5 << 12))
    assert not pg.pmd_trans_huge(SWAP)


def test_pte_helpers_apply_to_a_pmd_through_pmd_pte():
    pmd = pg.pte_pmd(CLEAN_WRITABLE)
    assert not pg.pte_dirty(pg.pmd_pte(pmd))
    wp = pg.pte_pmd(pg.pte_wrprotect(pg.pmd_pte(pg.pte_pmd(HW_DIRTY_WRITABLE))))
    assert wp & 0b11 == 0b01
    assert pg.pte_dirty(pg.pmd_pte(wp)) and not pg.pte_write(pg.pmd_pte(wp))


# --- swap entries -----------------------------------------------------------

@pytest.mark.parametrize("slot", [1, 2, 4095, 1 << 20, (1 << 50) - 1])
def test_swap_pte_layout(slot):
    pte = pg.swp_entry_to_pte(slot)
    assert pte & 0b11 == 0
    assert not pte & PTE_SWP_EXCLUSIVE
    assert pte & bits(10, 6) == 0  # type 0
    assert pte & ~bits(61, 12) == 0
    assert pte == slot << 12
    assert pg.pte_swp_offset(pte) == slot
    assert pg.is_swap_pte(pte)


def test_swap_exclusive_bit_is_bit_2_and_independent_of_the_slot():
    pte = pg.pte_swp_mkexclusive(pg.swp_entry_to_pte(9))
    assert pte == (9 << 12) | (1 << 2)
    assert pg.pte_swp_exclusive(pte)
    assert pg.pte_swp_offset(pte) == 9
    assert pg.pte_swp_clear_exclusive(pte) == 9 << 12
    assert not pg.pte_swp_exclusive(pg.swp_entry_to_pte(9))
    assert pg.pte_swp_mkexclusive(pte) == pte


@pytest.mark.parametrize("exclusive", [False, True])
@pytest.mark.parametrize("delta", [0, 1, 15, -3])
def test_pte_move_swp_offset_keeps_exclusive(exclusive, delta):
    pte = pg.swp_entry_to_pte(100)
    if exclusive:
        pte = pg.pte_swp_mkexclusive(pte)
    moved = pg.pte_move_swp_offset(pte, delta)
    assert pg.pte_swp_offset(moved) == 100 + delta
    assert pg.pte_swp_exclusive(moved) == exclusive
    assert moved & ~pg.SWP_OFFSET_MASK == pte & ~pg.SWP_OFFSET_MASK


# --- int and numpy give the same answers ------------------------------------

VALUE_HELPERS = {
    "pte_mkdirty": pg.pte_mkdirty,
    "pte_mkclean": pg.pte_mkclean,
    "pte_mkwrite": pg.pte_mkwrite,
    "pte_wrprotect": pg.pte_wrprotect,
    "pte_mkold": pg.pte_mkold,
    "pte_mkyoung": pg.pte_mkyoung,
    "pte_mkcont": pg.pte_mkcont,
    "pte_mknoncont": pg.pte_mknoncont,
    "pte_modify_base": lambda pte: pg.pte_modify(pte, BASE_PROT),
    "pte_modify_odd": lambda pte: pg.pte_modify(pte, PTE_VALID | PTE_WRITE | (0b011 << 2)),
    "pte_pfn": pg.pte_pfn,
    "pte_advance_pfn": lambda pte: pg.pte_advance_pfn(pte, 7),
    "pte_pmd": pg.pte_pmd,
    "pmd_pte": pg.pmd_pte,
    "contpte_normalise": pg.contpte_normalise,
    "pte_swp_offset": pg.pte_swp_offset,
    "pte_swp_mkexclusive": pg.pte_swp_mkexclusive,
    "pte_swp_clear_exclusive": pg.pte_swp_clear_exclusive,
    "pte_move_swp_offset": lambda pte: pg.pte_move_swp_offset(pte, 5),
    "fault_value": lambda pte: pg.pte_mkwrite(pg.pte_mkdirty(pte)),
    "mprotect_rw": lambda pte: pg.pte_mkwrite(pg.pte_modify(pte, BASE_PROT)),
}
PREDICATES = {
    "pte_none": pg.pte_none,
    "pte_present": pg.pte_present,
    "is_swap_pte": pg.is_swap_pte,
    "pte_write": pg.pte_write,
    "pte_rdonly": pg.pte_rdonly,
    "pte_sw_dirty": pg.pte_sw_dirty,
    "pte_hw_dirty": pg.pte_hw_dirty,
    "pte_dirty": pg.pte_dirty,
    "pte_young": pg.pte_young,
    "pte_cont": pg.pte_cont,
    "pmd_trans_huge": pg.pmd_trans_huge,
    "pmd_table": pg.pmd_table,
    "pte_swp_exclusive": pg.pte_swp_exclusive,
}
ALL_VALUES = list(DESCRIPTORS.values())


@pytest.mark.parametrize("name", list(VALUE_HELPERS))
def test_value_helper_gives_the_same_answer_on_int_and_uint64_array(name):
    helper = VALUE_HELPERS[name]
    array = np.array(ALL_VALUES, dtype=np.uint64)
    result = helper(array)
    assert isinstance(result, np.ndarray)
    assert result.dtype == np.uint64
    assert result.shape == array.shape
    for index, pte in enumerate(ALL_VALUES):
        expected = helper(pte)
        assert isinstance(expected, int)
        assert 0 <= expected <= pg.MASK64
        assert int(result[index]) == expected, (name, list(DESCRIPTORS)[index])


@pytest.mark.parametrize("name", list(PREDICATES))
def test_predicate_gives_the_same_answer_on_int_and_uint64_array(name):
    helper = PREDICATES[name]
    array = np.array(ALL_VALUES, dtype=np.uint64)
    result = helper(array)
    assert result.dtype == np.bool_
    assert result.shape == array.shape
    for index, pte in enumerate(ALL_VALUES):
        assert bool(result[index]) == bool(helper(pte)), (name, list(DESCRIPTORS)[index])


@pytest.mark.parametrize("name", list(VALUE_HELPERS) + list(PREDICATES))
def test_helper_gives_the_same_answer_on_a_2d_block_array(name):
    helper = {**VALUE_HELPERS, **PREDICATES}[name]
    array = np.array(ALL_VALUES, dtype=np.uint64).reshape(4, 4)
    result = np.asarray(helper(array))
    assert result.shape == (4, 4)
    flat = [helper(pte) for pte in ALL_VALUES]
    assert [int(x) for x in result.reshape(-1)] == [int(x) for x in flat]


@pytest.mark.parametrize("name", list(VALUE_HELPERS) + list(PREDICATES))
def test_helper_gives_the_same_answer_on_a_uint64_scalar(name):
    helper = {**VALUE_HELPERS, **PREDICATES}[name]
    for pte in ALL_VALUES:
        assert int(helper(np.uint64(pte))) == int(helper(pte))


def test_describe_pte_names_the_kind():
    assert pg.describe_pte(0) == "none"
    assert pg.describe_pte(SWAP_EXCL).startswith(f"swap slot={(1 << 50) - 1} excl")
    assert pg.describe_pte(FAULT).startswith(f"pte pfn={PFN} W|D|AF")
    assert pg.describe_pte(PMD_BLOCK).startswith("pmd ")


def test_uffd_wp_bits_follow_arm64():
    """pte_mkuffd_wp sets bit 58 and write-protects (hardware dirtiness kept as DIRTY);
    the swap PTE's bit is bit 3, beside PTE_SWP_EXCLUSIVE."""
    writable_dirty = pg.pte_mkdirty(pg.pte_mkwrite(pg.pfn_pte(7, pg.vm_get_page_prot(True))))
    protected = pg.pte_mkuffd_wp(writable_dirty)
    assert pg.pte_uffd_wp(protected) and not pg.pte_write(protected) and pg.pte_dirty(protected)
    assert pg.pte_clear_uffd_wp(protected) == protected & ~PTE_UFFD_WP_BIT
    swp = pg.pte_swp_mkuffd_wp(pg.swp_entry_to_pte(9))
    assert pg.pte_swp_uffd_wp(swp) and pg.pte_swp_offset(swp) == 9 and not pg.pte_swp_exclusive(swp)
    assert pg.pte_swp_clear_uffd_wp(swp) == pg.swp_entry_to_pte(9)


def test_uffd_wp_marker_is_a_swap_entry_of_type_31():
    """make_pte_marker(PTE_MARKER_UFFD_WP): type SWP_PTE_MARKER (31) in bits 10:6, marker bit 0 at 12."""
    marker = pg.make_pte_marker(pg.PTE_MARKER_UFFD_WP)
    assert marker == (31 << 6) | (1 << 12)
    assert pg.is_swap_pte(marker) and pg.is_pte_marker(marker) and pg.pte_marker_uffd_wp(marker)
    assert not pg.is_pte_marker(pg.swp_entry_to_pte(1)) and not pg.pte_marker_uffd_wp(pg.swp_entry_to_pte(1))
    entries = np.array([marker, pg.swp_entry_to_pte(1), 0], np.uint64)
    assert pg.is_pte_marker(entries).tolist() == [True, False, False]


PTE_UFFD_WP_BIT = 1 << 58
