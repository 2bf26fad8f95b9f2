"""arm64 descriptor encoding, as arch/arm64/include/asm/pgtable{,-hwdef,-prot}.h.

Every helper is branch-free bit arithmetic, so it works on a Python int (one
descriptor) and on a numpy uint64 array (a run of descriptors) alike. This is
encoding, not policy: which bits a kernel path writes is decided in
reference/ and batched/.
"""

from __future__ import annotations

PAGE_SHIFT = 12
PAGE_SIZE = 1 << PAGE_SHIFT
PTRS_PER_TABLE = 512
PMD_SHIFT = PAGE_SHIFT + 9
PMD_SIZE = 1 << PMD_SHIFT
HPAGE_PMD_ORDER = 9
HPAGE_PMD_NR = 1 << HPAGE_PMD_ORDER
CONT_PTES = 16
CONT_PTE_SIZE = CONT_PTES * PAGE_SIZE
VA_BITS = 48
TASK_SIZE = 1 << VA_BITS

MASK64 = (1 << 64) - 1

PTE_VALID = 1 << 0
PTE_TYPE = 1 << 1  # page (level 3) or table (levels 0-2); clear in a PMD block
PTE_ATTRINDX_MASK = 0b111 << 2
PTE_USER = 1 << 6
PTE_RDONLY = 1 << 7
PTE_SHARED = 0b11 << 8
PTE_AF = 1 << 10
PTE_NG = 1 << 11
PTE_ADDR_MASK = ((1 << 48) - 1) & ~(PAGE_SIZE - 1)
PTE_WRITE = 1 << 51  # DBM
PTE_CONT = 1 << 52
PTE_PXN = 1 << 53
PTE_UXN = 1 << 54
PTE_DIRTY = 1 << 55  # software dirty
PTE_SPECIAL = 1 << 56
PTE_UFFD_WP = 1 << 58  # software bit: uffd-wp tracking (CONFIG_HAVE_ARCH_USERFAULTFD_WP)

PTE_TYPE_MASK = PTE_VALID | PTE_TYPE
PTE_TYPE_PAGE = PTE_VALID | PTE_TYPE
PMD_TYPE_TABLE = PTE_VALID | PTE_TYPE
PMD_TYPE_SECT = PTE_VALID

PTE_SWP_EXCLUSIVE = 1 << 2
PTE_SWP_UFFD_WP = 1 << 3  # only in swap PTEs
# A PTE marker is a swap entry of type SWP_PTE_MARKER (include/linux/swap.h: the last of the
# 32 types), its offset the marker bits (include/linux/swapops.h).
SWP_PTE_MARKER = 31
PTE_MARKER_UFFD_WP = 1 << 0
SWP_TYPE_SHIFT = 6
SWP_TYPE_MASK = 0b11111 << SWP_TYPE_SHIFT
SWP_OFFSET_SHIFT = 12
SWP_OFFSET_MASK = ((1 << 50) - 1) << SWP_OFFSET_SHIFT

_DIRTY_TO_RDONLY_SHIFT = 55 - 7  # PTE_DIRTY -> PTE_RDONLY
_WRITE_TO_RDONLY_SHIFT = 51 - 7  # PTE_WRITE -> PTE_RDONLY
_WRITE_TO_DIRTY_SHIFT = 55 - 51  # PTE_WRITE -> PTE_DIRTY
_RDONLY_TO_DIRTY_SHIFT = 55 - 7  # PTE_RDONLY -> PTE_DIRTY

# Attributes pte_modify() takes from the new protection; everything else stays.
PTE_MODIFY_FROM_PROT = PTE_USER | PTE_PXN | PTE_UXN | PTE_RDONLY | PTE_VALID | PTE_WRITE | PTE_ATTRINDX_MASK


def _clear(pte, bits):
    """pte with bits cleared; bits may be a constant or a per-entry array."""
    return pte & (MASK64 ^ bits) if isinstance(bits, int) else pte & ~bits


def vm_get_page_prot(writable: bool) -> int:
    """vm_page_prot of a private anonymous VMA (rw or ro): SPEC §2.2 `base`.

    A private writable mapping is still mapped read-only until written
    (PAGE_READONLY for both: VM_WRITE only makes faults add WRITE).
    """
    return (PTE_VALID | PTE_TYPE | PTE_USER | PTE_RDONLY | PTE_SHARED | PTE_AF
            | PTE_NG | PTE_PXN | PTE_UXN)


def vm_get_page_prot_shared(writable: bool) -> int:
    """vm_page_prot of a VM_SHARED VMA without write-notify: PAGE_SHARED (base + WRITE, clean
    writable: the hardware dirties it on the first store) when rw, PAGE_READONLY when ro."""
    return vm_get_page_prot(writable) | (PTE_WRITE if writable else 0)


def pfn_pte(pfn: int, prot: int) -> int:
    """A page descriptor for pfn with the attributes of prot."""
    return (pfn << PAGE_SHIFT) | _clear(prot, PTE_ADDR_MASK)


def pte_pfn(pte):
    return (pte & PTE_ADDR_MASK) >> PAGE_SHIFT


def pte_advance_pfn(pte, nr_pages):
    """The same descriptor for the page nr_pages further on."""
    return pte + (nr_pages << PAGE_SHIFT)


def pte_none(pte):
    return pte == 0


def pte_present(pte):
    return (pte & PTE_VALID) != 0


def is_swap_pte(pte):
    return (pte != 0) & ((pte & PTE_VALID) == 0)


def pte_write(pte):
    return (pte & PTE_WRITE) != 0


def pte_rdonly(pte):
    return (pte & PTE_RDONLY) != 0


def pte_sw_dirty(pte):
    return (pte & PTE_DIRTY) != 0


def pte_hw_dirty(pte):
    return ((pte & PTE_WRITE) != 0) & ((pte & PTE_RDONLY) == 0)


def pte_dirty(pte):
    return pte_sw_dirty(pte) | pte_hw_dirty(pte)


def pte_young(pte):
    return (pte & PTE_AF) != 0


def pte_cont(pte):
    return (pte & PTE_CONT) != 0


def pte_mkdirty(pte):
    """Set DIRTY; a writable entry also becomes hardware-dirty (RDONLY clear)."""
    pte = pte | PTE_DIRTY
    return _clear(pte, (pte & PTE_WRITE) >> _WRITE_TO_RDONLY_SHIFT)


def pte_mkclean(pte):
    return _clear(pte, PTE_DIRTY) | PTE_RDONLY


def pte_mkwrite(pte):
    """Set WRITE; clear RDONLY only if software-dirty (commit 143937ca51cc)."""
    pte = pte | PTE_WRITE
    return _clear(pte, (pte & PTE_DIRTY) >> _DIRTY_TO_RDONLY_SHIFT)


def pte_wrprotect(pte):
    """Keep hardware dirtiness as DIRTY, then clear WRITE and set RDONLY."""
    hw_dirty = (pte & PTE_WRITE) << _WRITE_TO_DIRTY_SHIFT
    hw_dirty = _clear(hw_dirty, (pte & PTE_RDONLY) << _RDONLY_TO_DIRTY_SHIFT)
    pte = pte | hw_dirty
    return _clear(pte, PTE_WRITE) | PTE_RDONLY


def pte_mkold(pte):
    return _clear(pte, PTE_AF)


def pte_mkyoung(pte):
    return pte | PTE_AF


def pte_special(pte):
    """A special mapping (the zero page here): vm_normal_page() returns no page for it."""
    return (pte & PTE_SPECIAL) != 0


def pte_mkspecial(pte):
    return pte | PTE_SPECIAL


def pte_mkcont(pte):
    return pte | PTE_CONT


def pte_mknoncont(pte):
    return _clear(pte, PTE_CONT)


def pte_modify(pte, prot: int):
    """Change protection keeping AF, DIRTY (hardware dirtiness folded in) and the pfn."""
    hw_dirty = (pte & PTE_WRITE) << _WRITE_TO_DIRTY_SHIFT
    hw_dirty = _clear(hw_dirty, (pte & PTE_RDONLY) << _RDONLY_TO_DIRTY_SHIFT)
    pte = pte | hw_dirty
    pte = _clear(pte, PTE_MODIFY_FROM_PROT) | (prot & PTE_MODIFY_FROM_PROT)
    # A sw-dirty entry that got WRITE back is made hardware-dirty again (pte_mkdirty).
    return _clear(pte, ((pte & PTE_DIRTY) >> _DIRTY_TO_RDONLY_SHIFT) & ((pte & PTE_WRITE) >> _WRITE_TO_RDONLY_SHIFT))


def pte_pmd(pte):
    """A PTE-format value as a PMD block descriptor (bits 1:0 = 0b01)."""
    return _clear(pte, PTE_TYPE)


def pmd_pte(pmd):
    """A PMD block descriptor in PTE format, so the pte_* helpers apply."""
    return pmd | PTE_TYPE


def pmd_trans_huge(pmd):
    """A PMD block (leaf) rather than none or a table."""
    return (pmd & PTE_TYPE_MASK) == PMD_TYPE_SECT


def pmd_table(pmd):
    return (pmd & PTE_TYPE_MASK) == PMD_TYPE_TABLE


def swp_entry_to_pte(slot):
    """A swap PTE for slot (type 0), not exclusive."""
    return slot << SWP_OFFSET_SHIFT


def pte_swp_offset(pte):
    return (pte & SWP_OFFSET_MASK) >> SWP_OFFSET_SHIFT


def pte_swp_exclusive(pte):
    return (pte & PTE_SWP_EXCLUSIVE) != 0


def pte_swp_mkexclusive(pte):
    return pte | PTE_SWP_EXCLUSIVE


def pte_swp_clear_exclusive(pte):
    return _clear(pte, PTE_SWP_EXCLUSIVE)


# uffd-wp (arch/arm64/include/asm/pgtable.h, include/linux/swapops.h).

def pte_uffd_wp(pte):
    return (pte & PTE_UFFD_WP) != 0


def pte_mkuffd_wp(pte):
    """Set the uffd-wp bit and write-protect, as arm64's pte_mkuffd_wp does."""
    return pte_wrprotect(pte | PTE_UFFD_WP)


def pte_clear_uffd_wp(pte):
    return _clear(pte, PTE_UFFD_WP)


def pte_swp_uffd_wp(pte):
    return (pte & PTE_SWP_UFFD_WP) != 0


def pte_swp_mkuffd_wp(pte):
    return pte | PTE_SWP_UFFD_WP


def pte_swp_clear_uffd_wp(pte):
    return _clear(pte, PTE_SWP_UFFD_WP)


def make_pte_marker(marker: int) -> int:
    """make_pte_marker_entry(marker) as a PTE: swap type SWP_PTE_MARKER, the marker bits as offset."""
    return (SWP_PTE_MARKER << SWP_TYPE_SHIFT) | (marker << SWP_OFFSET_SHIFT)


def is_pte_marker(pte):
    """A non-present entry of swap type SWP_PTE_MARKER."""
    return is_swap_pte(pte) & (((pte & SWP_TYPE_MASK) >> SWP_TYPE_SHIFT) == SWP_PTE_MARKER)


def is_swap_slot_pte(pte):
    """A swap PTE of a swap slot (softleaf_is_swap): non-present and not none, of swap type 0,
    so not a PTE marker."""
    return is_swap_pte(pte) & ((pte & SWP_TYPE_MASK) == 0)


def pte_marker_uffd_wp(pte):
    """A PTE marker carrying PTE_MARKER_UFFD_WP."""
    return is_pte_marker(pte) & ((((pte & SWP_OFFSET_MASK) >> SWP_OFFSET_SHIFT) & PTE_MARKER_UFFD_WP) != 0)


def pte_move_swp_offset(pte, delta):
    """The swap PTE delta slots further on, keeping its swp bits (exclusive)."""
    return pte + (delta << SWP_OFFSET_SHIFT)


def contpte_normalise(pte):
    """N(e) of SPEC §2.4: pte_mkold(pte_mkclean(e)) without CONT and pfn."""
    return _clear(pte_mkold(pte_mkclean(pte)), PTE_CONT | PTE_ADDR_MASK)


# The bits N(e) does not depend on besides the pfn: equal N(e) means equal in all others.
CONTPTE_NORMALISE_IGNORED = PTE_DIRTY | PTE_RDONLY | PTE_AF | PTE_CONT


def describe_pte(pte: int) -> str:
    """A short human-readable decoding, for diffs and reports."""
    if pte == 0:
        return "none"
    if not pte & PTE_VALID:
        if is_pte_marker(pte):
            return f"marker {'uffd-wp' if pte_marker_uffd_wp(pte) else ''} ({pte:#x})"
        exclusive = " excl" if pte & PTE_SWP_EXCLUSIVE else ""
        exclusive += " uffd-wp" if pte & PTE_SWP_UFFD_WP else ""
        return f"swap slot={pte_swp_offset(pte)}{exclusive} ({pte:#x})"
    flags = []
    for name, bit in (("W", PTE_WRITE), ("RDONLY", PTE_RDONLY), ("D", PTE_DIRTY),
                      ("AF", PTE_AF), ("CONT", PTE_CONT), ("SPECIAL", PTE_SPECIAL),
                      ("UFFD_WP", PTE_UFFD_WP)):
        if pte & bit:
            flags.append(name)
    kind = "pmd" if (pte & PTE_TYPE_MASK) == PMD_TYPE_SECT else "pte"
    return f"{kind} pfn={pte_pfn(pte)} {'|'.join(flags)} ({pte:#x})"
