"""The reference kernel: every op of SPEC §3, one PTE and one page at a time.

Each op checks its precedence list, does its kernel work, and then, unless it
keeps partial work (SPEC §3), rolls back on failure (the transactional model).
contpte blocks fold and unfold inside the PTE primitives (docs/model.md #91-#99).
"""

from __future__ import annotations

from collections.abc import Callable

from machine import MM, Machine, check
from machine.errors import EFAULT, EINVAL, ENOENT, ENOMEM, OK
from machine.pgtable import (
    PMD_SIZE, is_pte_marker, is_swap_pte, is_swap_slot_pte, pmd_trans_huge, pte_none, pte_present, pte_write,
)

from .filemap import do_read_fault, file_create, file_sync, shrink_file_folio, try_to_unmap_file
from .folio import folio_test_large, page_folio
from .gup import pin_user_pages, unpin_user_pages
from .huge_memory import split_huge_pmd_locked, split_huge_page_to_list_to_order
from .madvise import madvise_free, madvise_pageout_folio
from .memory import do_anonymous_read_fault, do_swap_page, handle_write_fault
from .folio import vm_normal_page, vm_normal_page_pmd
from .mmap import do_mmap, do_munmap, dup_mmap, exit_mmap, madvise_dontneed
from .mprotect import do_mprotect_pkey
from .userfaultfd import mwriteprotect_range, userfaultfd_register
from .vmscan import shrink_folio_list, try_to_unmap

MAX_FAULT_ORDER = 9


class Kernel:
    """reference.Kernel: the naive oracle the batched implementation is judged against."""

    name = "reference"

    def __init__(self, machine: Machine) -> None:
        self.machine = machine

    def _mm(self, pid: int) -> MM:
        check(pid in self.machine.processes, "P%s does not exist", pid)
        return self.machine.processes[pid]

    def _transaction(self, operation: Callable[[], str]) -> str:
        """Run operation as a machine transaction; if it runs out of memory put the machine
        back exactly as it was (SPEC §1). Its other failures come before it changes anything,
        or keep what it did (pin's EFAULT, as __get_user_pages keeps the faults before the
        bad page)."""
        self.machine.transaction_begin()
        try:
            result = operation()
        except BaseException:
            self.machine.transaction_commit()  # a MachineBug: leave the state as the bug left it
            raise
        if result == ENOMEM:
            self.machine.transaction_rollback()
            return result
        self.machine.transaction_commit()
        return result

    def _without_rollback(self, operation: Callable[[], str]) -> str:
        """Run an op that needs no rollback: every failure of it comes before it changes
        anything (mmap, unpin, read, split_pmd, split, fault on a none entry), or its failure keeps what was done
        (munmap, dontneed, free, mprotect, exit, try_to_unmap). Saves a transaction."""
        return operation()

    # VMAs.

    def mmap(self, pid: int, addr: int, length: int, prot: str, file: int | None = None,
             offset: int = 0, shared: bool = False) -> str:
        mm = self._mm(pid)
        return self._without_rollback(
            lambda: do_mmap(self.machine, mm, addr, length, prot == "rw", file, offset, shared))

    def munmap(self, pid: int, addr: int, length: int) -> str:
        mm = self._mm(pid)
        return self._without_rollback(lambda: do_munmap(self.machine, mm, addr, length))

    def dontneed(self, pid: int, addr: int, length: int) -> str:
        mm = self._mm(pid)
        return self._without_rollback(lambda: madvise_dontneed(self.machine, mm, addr, length))

    def free(self, pid: int, addr: int, length: int) -> str:
        mm = self._mm(pid)
        return self._without_rollback(lambda: madvise_free(self.machine, mm, addr, length))

    def mprotect(self, pid: int, addr: int, length: int, prot: str) -> str:
        mm = self._mm(pid)
        return self._without_rollback(
            lambda: do_mprotect_pkey(self.machine, mm, addr, length, prot == "rw"))

    # userfaultfd write-protect.

    def uffd(self, pid: int, addr: int, length: int) -> str:
        mm = self._mm(pid)
        return self._without_rollback(lambda: userfaultfd_register(self.machine, mm, addr, addr + length))

    def wp(self, pid: int, addr: int, length: int, mode: str) -> str:
        mm = self._mm(pid)
        return self._without_rollback(
            lambda: mwriteprotect_range(self.machine, mm, addr, addr + length, mode == "on"))

    # Faults and user accesses.

    def fault(self, pid: int, addr: int, order: int) -> str:
        mm = self._mm(pid)
        if not 0 <= order <= MAX_FAULT_ORDER:
            return EINVAL
        vma = mm.find_vma(addr)
        if vma is None or not vma.writable:
            return EFAULT
        if pte_none(self.machine.lookup(mm, addr)[1]):
            # do_anonymous_page fails (ENOMEM) only before it maps anything.
            return self._without_rollback(lambda: handle_write_fault(self.machine, mm, vma, addr, order))
        # A swap entry: do_swap_page with the fault's orders (alloc_swap_folio); else order 0.
        swapin_order = order if is_swap_slot_pte(self.machine.lookup(mm, addr)[1]) else 0
        return self._user_write(mm, vma, addr, value=None, order=swapin_order)

    def write(self, pid: int, addr: int, value: int) -> str:
        mm = self._mm(pid)
        vma = mm.find_vma(addr)
        if vma is None or not vma.writable:
            return EFAULT
        return self._user_write(mm, vma, addr, value)

    def _user_write(self, mm: MM, vma, addr: int, value: int | None, order: int = 0) -> str:
        """Write-fault addr in, then store value (None: the word already there, as `fault` does).
        A present writable entry needs no fault, so nothing can fail and no journal is kept."""
        entry = self.machine.lookup(mm, addr)[1]
        if not (pte_present(entry) and pte_write(entry)):
            result = self._transaction(lambda: handle_write_fault(self.machine, mm, vma, addr, order))
            if result != OK:
                return result
        if value is None:
            value = int(self.machine.frames.page_data[self.machine.page_at(mm, addr)])
        self.machine.user_write(mm, addr, value)
        return OK

    def read(self, pid: int, addr: int, order: int = 0) -> str:
        """A user load; order 9 enables the anon PMD size for it (a read fault maps the huge
        zero folio where the PMD size applies); a smaller order reads as 0 (a read fault takes
        no mTHP size, a swap-in by read is order 0), and files ignore it."""
        mm = self._mm(pid)
        if not 0 <= order <= MAX_FAULT_ORDER:
            return EINVAL
        vma = mm.find_vma(addr)
        if vma is None:
            return EFAULT
        entry = self.machine.lookup(mm, addr)[1]
        if (pte_none(entry) or is_pte_marker(entry)) and vma.file is not None:
            # a registered VMA's marker: do_read_fault with its uffd-wp bit (none are left in
            # a VMA no longer registered: there is no unregister op)
            result = self._without_rollback(
                lambda: do_read_fault(self.machine, mm, vma, addr, uffd_wp=is_pte_marker(entry)))
            if result != OK:
                return result
        elif pte_none(entry) or is_pte_marker(entry):
            self._without_rollback(lambda: do_anonymous_read_fault(self.machine, mm, vma, addr, order))
        elif is_swap_pte(entry):
            result = self._without_rollback(lambda: do_swap_page(self.machine, mm, vma, addr, write_fault=False))
            if result != OK:
                return result
        self.machine.user_read(mm, addr)
        return OK

    # Pins.

    def pin(self, pid: int, addr: int, nr_pages: int, mode: str) -> str:
        mm = self._mm(pid)
        return self._transaction(lambda: pin_user_pages(self.machine, mm, addr, nr_pages, mode == "rw"))

    def unpin(self, pin_id: int) -> str:
        return self._without_rollback(lambda: unpin_user_pages(self.machine, pin_id))

    # Processes.

    def fork(self, pid: int) -> str:
        mm = self._mm(pid)
        return self._transaction(lambda: dup_mmap(self.machine, mm))

    def exit(self, pid: int) -> str:
        mm = self._mm(pid)
        return self._without_rollback(lambda: exit_mmap(self.machine, mm))

    # Reclaim and splits: they act on the folio mapped at (pid, addr).

    def _folio_at(self, pid: int, addr: int) -> tuple[str, int]:
        """(OK, the folio mapped at addr), else (EFAULT: no VMA, or ENOENT: nothing present, or
        the zero page, which has no folio: MADV_PAGEOUT and split_huge_pages skip it)."""
        mm = self._mm(pid)
        if mm.find_vma(addr) is None:
            return EFAULT, -1
        level, entry = self.machine.lookup(mm, addr)
        if not pte_present(entry):
            return ENOENT, -1
        page = vm_normal_page_pmd(self.machine, entry) if level == "pmd" else vm_normal_page(self.machine, entry)
        if page is None:
            return ENOENT, -1
        return OK, page_folio(self.machine, page)

    def reclaim(self, pid: int, addr: int) -> str:
        result, folio = self._folio_at(pid, addr)
        if result != OK:
            return result
        if self.machine.frames.folio_mapping[folio]:
            return self._transaction(lambda: shrink_file_folio(self.machine, folio))
        level, _entry = self.machine.lookup(self._mm(pid), addr)
        if level == "pte" and folio_test_large(self.machine, folio):
            # MADV_PAGEOUT's walk may split it first; a PMD block the bridge's ranges cover whole
            return self._transaction(lambda: madvise_pageout_folio(self.machine, self._mm(pid), folio))
        return self._transaction(lambda: shrink_folio_list(self.machine, folio))

    def try_to_unmap(self, pid: int, addr: int) -> str:
        result, folio = self._folio_at(pid, addr)
        if result != OK:
            return result
        if self.machine.frames.folio_mapping[folio]:
            return self._without_rollback(lambda: try_to_unmap_file(self.machine, folio))
        return self._without_rollback(lambda: try_to_unmap(self.machine, folio))

    def split_pmd(self, pid: int, addr: int) -> str:
        mm = self._mm(pid)
        vma = mm.find_vma(addr)
        if vma is None:
            return EFAULT
        haddr = addr & ~(PMD_SIZE - 1)
        if not pmd_trans_huge(self.machine.pmdp_get(mm, haddr)):
            return ENOENT
        return self._without_rollback(lambda: split_huge_pmd_locked(self.machine, mm, vma, haddr) or OK)

    def split(self, pid: int, addr: int, order: int) -> str:
        result, folio = self._folio_at(pid, addr)
        if result != OK:
            return result
        if self.machine.frames.folio_mapping[folio]:
            return EINVAL  # (model) the split of a page-cache folio is not modelled
        return self._without_rollback(lambda: split_huge_page_to_list_to_order(self.machine, folio, order))

    # Files.

    def file(self, file: int, length: int, shmem: bool) -> str:
        return self._without_rollback(lambda: file_create(self.machine, file, length, shmem))

    def sync(self, file: int) -> str:
        return self._without_rollback(lambda: file_sync(self.machine, file))
