"""The batched kernel: every op of SPEC §3 on whole ranges of PTEs at once.

Transactional failure (SPEC §1) without journaling every op: an op whose only
failures come before it changes anything runs as it is; one that can fail half-way
(write, pin, fork) first bounds the order-0 allocations it may need and opens a
machine transaction only when the free frames might not cover them.
"""

from __future__ import annotations

from collections.abc import Callable

from machine import MM, VMA, Machine, check
from machine.errors import EFAULT, EINVAL, ENOENT, ENOMEM, OK
from machine.pgtable import (
    PMD_SIZE,
    is_pte_marker,
    is_swap_pte,
    is_swap_slot_pte,
    pmd_trans_huge,
    pte_none,
    pte_pfn,
    pte_present,
)

from .filemap import do_read_fault, file_create, file_sync, shrink_file_folio, try_to_unmap_file
from .folio import is_huge_zero_pmd, page_folio, vm_normal_pages
from .gup import pin_user_pages, unpin_user_pages
from .huge_memory import split_huge_page_to_list_to_order, split_huge_pmd_locked
from .madvise import madvise_free, madvise_pageout_folio
from .memory import (
    do_anonymous_page,
    do_anonymous_read_fault,
    do_swap_page,
    fork_copies_bound,
    handle_write_fault,
)
from .mmap import do_mmap, do_munmap, dup_mmap, exit_mmap, madvise_dontneed
from .mprotect import do_mprotect_pkey
from .userfaultfd import mwriteprotect_range, userfaultfd_register
from .vmscan import shrink_folio_list, try_to_unmap

MAX_FAULT_ORDER = 9


class Kernel:
    """batched.Kernel: the optimised implementation judged against the reference."""

    name = "batched"

    def __init__(self, machine: Machine) -> None:
        self.machine = machine

    def _mm(self, pid: int) -> MM:
        check(pid in self.machine.processes, "P%s does not exist", pid)
        return self.machine.processes[pid]

    def _transaction(self, operation: Callable[[], str], max_new_frames: int) -> str:
        """Run an op that may run out of memory after changing state, needing at most
        max_new_frames order-0 frames. With that many free it cannot run out, so no transaction
        is needed. Only ENOMEM rolls back: the op's other failures come before any change or
        keep what it did (pin's EFAULT)."""
        if self.machine.frames.nr_free_frames >= max_new_frames:
            result = operation()
            check(result != ENOMEM, "an op ran out of frames its bound said it had")
            return result
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

    # VMAs.

    def mmap(self, pid: int, addr: int, length: int, prot: str, file: int | None = None,
             offset: int = 0, shared: bool = False) -> str:
        return do_mmap(self.machine, self._mm(pid), addr, length, prot == "rw", file, offset, shared)

    def munmap(self, pid: int, addr: int, length: int) -> str:
        return do_munmap(self.machine, self._mm(pid), addr, length)

    def dontneed(self, pid: int, addr: int, length: int) -> str:
        return madvise_dontneed(self.machine, self._mm(pid), addr, length)

    def free(self, pid: int, addr: int, length: int) -> str:
        return madvise_free(self.machine, self._mm(pid), addr, length)

    def mprotect(self, pid: int, addr: int, length: int, prot: str) -> str:
        return do_mprotect_pkey(self.machine, self._mm(pid), addr, length, prot == "rw")

    # userfaultfd write-protect.

    def uffd(self, pid: int, addr: int, length: int) -> str:
        return userfaultfd_register(self.machine, self._mm(pid), addr, addr + length)

    def wp(self, pid: int, addr: int, length: int, mode: str) -> str:
        return mwriteprotect_range(self.machine, self._mm(pid), addr, addr + length, mode == "on")

    # Faults and user accesses.

    def fault(self, pid: int, addr: int, order: int) -> str:
        mm = self._mm(pid)
        if not 0 <= order <= MAX_FAULT_ORDER:
            return EINVAL
        vma = mm.find_vma(addr)
        if vma is None or not vma.writable:
            return EFAULT
        if pte_none(self.machine.lookup(mm, addr)[1]) and vma.file is not None:
            # do_fault: the page-cache folio and a COW copy at most
            return self._transaction(lambda: handle_write_fault(self.machine, mm, vma, addr, order),
                                     max_new_frames=2)
        if pte_none(self.machine.lookup(mm, addr)[1]):
            # handle_pte_fault of a none entry; do_anonymous_page fails only before it maps anything.
            return do_anonymous_page(self.machine, mm, vma, addr, order)
        # A swap entry: do_swap_page with the fault's orders (alloc_swap_folio); else order 0.
        swapin_order = order if is_swap_slot_pte(self.machine.lookup(mm, addr)[1]) else 0
        return self._user_write(mm, vma, addr, value=None, order=swapin_order)

    def write(self, pid: int, addr: int, value: int) -> str:
        mm = self._mm(pid)
        vma = mm.find_vma(addr)
        if vma is None or not vma.writable:
            return EFAULT
        return self._user_write(mm, vma, addr, value)

    def _user_write(self, mm: MM, vma: VMA, addr: int, value: int | None, order: int = 0) -> str:
        """Write-fault addr in (a swap-in of the given order, then one copy at most), then
        store value (None: the word there)."""
        result = self._transaction(lambda: handle_write_fault(self.machine, mm, vma, addr, order),
                                   max_new_frames=(1 << order) + 1)
        if result != OK:
            return result
        if value is None:
            value = int(self.machine.frames.page_data[self.machine.page_at(mm, addr)])
        self.machine.user_write(mm, addr, value)
        return OK

    def read(self, pid: int, addr: int, order: int = 0) -> str:
        """A user load; order 9 enables the anon PMD size for its fault (the huge zero folio),
        below 9 it reads as order 0, a file ignores it."""
        mm = self._mm(pid)
        if order < 0 or order > MAX_FAULT_ORDER:
            return EINVAL
        vma = mm.find_vma(addr)
        if vma is None:
            return EFAULT
        entry = self.machine.lookup(mm, addr)[1]
        if (pte_none(entry) or is_pte_marker(entry)) and vma.file is not None:
            # a registered VMA's marker: do_read_fault with its uffd-wp bit
            result = do_read_fault(self.machine, mm, vma, addr, uffd_wp=is_pte_marker(entry))
            if result != OK:
                return result
        elif pte_none(entry) or is_pte_marker(entry):
            do_anonymous_read_fault(self.machine, mm, vma, addr, order)
        elif is_swap_pte(entry):
            result = do_swap_page(self.machine, mm, vma, addr, write_fault=False)
            if result != OK:
                return result
        self.machine.user_read(mm, addr)
        return OK

    # Pins.

    def pin(self, pid: int, addr: int, nr_pages: int, mode: str) -> str:
        mm = self._mm(pid)
        # Each page takes at most two order-0 folios (a page-cache fault-in and its COW copy).
        return self._transaction(lambda: pin_user_pages(self.machine, mm, addr, nr_pages, mode == "rw"),
                                 max_new_frames=2 * nr_pages)

    def unpin(self, pin_id: int) -> str:
        return unpin_user_pages(self.machine, pin_id)

    # Processes.

    def fork(self, pid: int) -> str:
        mm = self._mm(pid)
        return self._transaction(lambda: dup_mmap(self.machine, mm),
                                 max_new_frames=fork_copies_bound(self.machine, mm))

    def exit(self, pid: int) -> str:
        return exit_mmap(self.machine, self._mm(pid))

    # Reclaim and splits: they act on the folio mapped at (pid, addr).

    def _folio_at(self, pid: int, addr: int) -> tuple[str, int]:
        """(OK, the folio mapped at addr), else (EFAULT: no VMA, or ENOENT: nothing present, or
        the zero page, which has no folio: MADV_PAGEOUT and split_huge_pages skip it)."""
        mm = self._mm(pid)
        if mm.find_vma(addr) is None:
            return EFAULT, -1
        level, entry = self.machine.lookup(mm, addr)
        if not pte_present(entry) or (level == "pte" and not vm_normal_pages(self.machine, entry)):
            return ENOENT, -1
        if level == "pmd" and is_huge_zero_pmd(self.machine, entry):
            return ENOENT, -1  # the huge zero folio: vm_normal_page_pmd finds none
        return OK, int(page_folio(self.machine, int(pte_pfn(entry))))

    def reclaim(self, pid: int, addr: int) -> str:
        result, folio = self._folio_at(pid, addr)
        if result != OK:
            return result
        if self.machine.frames.folio_mapping[folio]:
            # a shmem folio runs out of swap slots only after it was unmapped
            return self._transaction(lambda: shrink_file_folio(self.machine, folio),
                                     max_new_frames=self.machine.frames.nr_frames + 1)
        level, _entry = self.machine.lookup(self._mm(pid), addr)
        if level == "pte" and self.machine.frames.folio_order.item(folio) > 0:
            # MADV_PAGEOUT's walk may split it first, then find no slot for a piece: roll back
            return self._transaction(lambda: madvise_pageout_folio(self.machine, self._mm(pid), folio),
                                     max_new_frames=self.machine.frames.nr_frames + 1)
        # shrink_folio_list decides every failure before it changes anything.
        return shrink_folio_list(self.machine, folio)

    def try_to_unmap(self, pid: int, addr: int) -> str:
        result, folio = self._folio_at(pid, addr)
        if result != OK:
            return result
        if self.machine.frames.folio_mapping[folio]:
            return try_to_unmap_file(self.machine, folio)
        return try_to_unmap(self.machine, folio)

    def split_pmd(self, pid: int, addr: int) -> str:
        mm = self._mm(pid)
        vma = mm.find_vma(addr)
        if vma is None:
            return EFAULT
        haddr = addr & ~(PMD_SIZE - 1)
        if not pmd_trans_huge(self.machine.pmdp_get(mm, haddr)):
            return ENOENT
        split_huge_pmd_locked(self.machine, mm, vma, haddr)
        return OK

    def split(self, pid: int, addr: int, order: int) -> str:
        result, folio = self._folio_at(pid, addr)
        if result != OK:
            return result
        if self.machine.frames.folio_mapping[folio]:
            return EINVAL  # (model) the split of a page-cache folio is not modelled
        return split_huge_page_to_list_to_order(self.machine, folio, order)

    # Files.

    def file(self, file: int, length: int, shmem: bool) -> str:
        return file_create(self.machine, file, length, shmem)

    def sync(self, file: int) -> str:
        return file_sync(self.machine, file)
