"""The harness's shadow memory (SPEC §6, oracles 5 and 6).

What every process should read at every page, as the ops wrote it, and for
every live pin which of its pages its process has since unmapped. The shadow
is updated from the op and its result alone (plus the two counters that name
what an op created: the forked child's process number and the new pin's id),
never from the page tables it is checked against.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

from machine.errors import ENOENT, OK, UFFD
from machine.pgtable import PAGE_SHIFT, PAGE_SIZE, pte_none, pte_present

if TYPE_CHECKING:
    from fuzz.script.ops import Op
    from machine import MM, Machine, Pin


class Shadow:
    """What every process should read at every page, and which pinned pages their process unmapped."""

    def __init__(self) -> None:
        # pid -> {page-aligned addr: value}; a missing address reads 0.
        self.data: dict[int, dict[int, int]] = {}
        # pid -> {page-aligned addr: value} of the pages MADV_FREE made discardable since
        # their last write: each reads its value, or 0 once discarded (never in data too).
        self.lazy: dict[int, dict[int, int]] = {}
        # pin_id -> indices of the pin's pages whose address its process unmapped
        # (munmap, dontneed, exit) since the pin.
        self.released: dict[int, set[int]] = {}
        # file id -> {page index: value}: what each file holds, written through its shared
        # mappings (a missing index reads 0). A page of a file VMA that is not in `data` reads
        # its file's word; a private one written (or COWed by a fault or a pin) is in `data`.
        self.files: dict[int, dict[int, int]] = {}
        # pid -> the pages `wp on` write-protected and nothing since unprotected (`wp off`) or
        # dropped with their content (munmap, dontneed, exit; MADV_FREE, which may discard).
        self.protected: dict[int, set[int]] = {}
        # (pid, addr) of each op that wrote to a protected page and succeeded: write, fault, rw pin.
        self.landed: list[tuple[int, int]] = []

    def clone(self) -> Shadow:
        other = Shadow()
        other.data = {pid: dict(pages) for pid, pages in self.data.items()}
        other.lazy = {pid: dict(pages) for pid, pages in self.lazy.items()}
        other.released = {pin_id: set(pages) for pin_id, pages in self.released.items()}
        other.files = {file_id: dict(words) for file_id, words in self.files.items()}
        other.protected = {pid: set(pages) for pid, pages in self.protected.items()}
        other.landed = list(self.landed)
        return other

    def file_word(self, machine: Machine, pid: int, addr: int) -> int | None:
        """What a file VMA of pid reads at addr when its page is not a private copy; None if
        no file VMA holds addr."""
        mm = machine.processes.get(pid)
        vma = None if mm is None else mm.find_vma(addr)
        if vma is None or vma.file is None:
            return None
        return self.files.get(vma.file, {}).get(vma.linear_page_index(addr), 0)

    def _private_copy(self, machine: Machine, pid: int, addr: int) -> None:
        """A private file page COWed without a new word (fault, pin): it keeps the file's word."""
        mm = machine.processes.get(pid)
        vma = None if mm is None else mm.find_vma(addr)
        if vma is not None and vma.file is not None and not vma.shared and addr not in self.data.get(pid, {}):
            self.data.setdefault(pid, {})[addr] = self.file_word(machine, pid, addr) or 0

    def _trapped_copy(self, machine: Machine, pid: int, addr: int) -> None:
        """A write trapped by userfaultfd on a marker of a private file VMA made its private
        copy first (do_cow_fault through handle_pte_marker); one on a protected page-cache
        entry made none. Which it was is read from what the fault left mapped."""
        mm = machine.processes.get(pid)
        if mm is None:
            return
        entry = machine.lookup(mm, addr)[1]
        if pte_present(entry) and machine.frames.folio_anon[machine.frames.page_folio[machine.page_at(mm, addr)]]:
            self._private_copy(machine, pid, addr)

    def read(self, pid: int, addr: int) -> int:
        """What process pid should read at addr."""
        return self.data.get(pid, {}).get(addr, 0)

    def apply(self, op: Op, result: str, machine: Machine) -> None:
        """Update after `op` ran with `result` ('ok', 'EFAULT', ...) leaving `machine`.

        munmap and dontneed apply whatever the result: dontneed's ENOMEM still
        zaps the mapped parts of the range, and a zapped page reads 0.
        """
        name = op.name
        if name == "file":
            if result == OK:
                self.files[cast(int, op.file)] = {}
            return
        if name == "sync":
            return
        # The op's fields are those OP_ARGUMENTS lists for it (the parser and decoder see to it).
        pid = cast(int, op.process)
        if name in ("write", "fault", "pin", "wp", "munmap", "dontneed", "free", "exit", "reclaim",
                    "try_to_unmap"):
            self._apply_protection(op, result, machine)
        mm = machine.processes.get(pid)
        vma = None if mm is None or op.addr is None else mm.find_vma(op.addr)
        if name == "fault" and result == OK:
            self._private_copy(machine, pid, cast(int, op.addr))
        if name in ("write", "fault") and result == UFFD:
            self._trapped_copy(machine, pid, cast(int, op.addr))
        if name == "pin" and result != "ENOMEM":
            self._pin_copies(machine, op)
        if name == "write" and result == OK and vma is not None and vma.file is not None and vma.shared:
            self.files.setdefault(vma.file, {})[vma.linear_page_index(cast(int, op.addr))] = cast(int, op.value)
        elif name == "write":
            if result == OK:
                self.data.setdefault(pid, {})[cast(int, op.addr)] = cast(int, op.value)
                if pid in self.lazy:
                    self.lazy[pid].pop(cast(int, op.addr), None)
        elif name in ("munmap", "dontneed"):
            start = cast(int, op.addr)
            end = start + cast(int, op.length)
            self._drop_range(self.data, pid, start, end)
            self._drop_range(self.lazy, pid, start, end)
            self._release_range(machine, pid, start, end)
        elif name == "free":
            # Whatever the result: a hole's ENOMEM still frees the VMAs' parts.
            start = cast(int, op.addr)
            freed = self._drop_range(self.data, pid, start, start + cast(int, op.length))
            if freed:
                self.lazy.setdefault(pid, {}).update(freed)
        elif name == "exit":
            self.data.pop(pid, None)
            self.lazy.pop(pid, None)
            for pin in self._pins_of(machine, pid):
                self.released[pin.pin_id] = set(range(pin.nr_pages))
        elif name == "fork":
            if result == OK:
                child = machine.nr_processes - 1
                self.data[child] = dict(self.data.get(pid, {}))
                if pid in self.lazy:
                    self.lazy[child] = dict(self.lazy[pid])
        elif name == "pin":
            if result == OK:
                self.released[machine.nr_pins - 1] = set()
        elif name == "unpin":
            if result == OK:
                self.released.pop(cast(int, op.pin_id), None)

    def _pin_copies(self, machine: Machine, op: Op) -> None:
        """A pin walks its pages in order until its first failure: each page of a private file
        mapping it reaches is COWed (a write fault, or a R/O long-term pin's unshare). A
        writable pin fails at a uffd-wp protected page: its write fault traps there
        (do_wp_page, handle_pte_marker: GUP's EFAULT) and COWs nothing."""
        pid, addr = cast(int, op.process), cast(int, op.addr)
        mm = machine.processes.get(pid)
        protected = self.protected.get(pid, set())
        for i in range(cast(int, op.nr_pages)):
            page_addr = addr + i * PAGE_SIZE
            vma = None if mm is None else mm.find_vma(page_addr)
            if vma is None or (op.prot == "rw" and (not vma.writable or page_addr in protected)):
                return
            if vma.file is not None and vma.shared:
                if op.prot == "rw" and not machine.files[vma.file].shmem:
                    return  # a long-term writable pin of a regular file's shared mapping: EFAULT
                continue
            if vma.file is not None and machine.files[vma.file].nr_pages <= vma.linear_page_index(page_addr):
                return  # SIGBUS past the end
            self._private_copy(machine, pid, page_addr)

    def _apply_protection(self, op: Op, result: str, machine: Machine) -> None:
        """Which pages are uffd-wp protected after op, and whether a write landed on one."""
        pid = cast(int, op.process)
        protected = self.protected.get(pid, set())
        if op.name in ("write", "fault") or (op.name == "pin" and op.prot == "rw"):
            nr_pages = op.nr_pages if op.name == "pin" else 1
            if result == OK and protected:
                start = cast(int, op.addr)
                self.landed += [(pid, start + (i << PAGE_SHIFT)) for i in range(cast(int, nr_pages))
                                if start + (i << PAGE_SHIFT) in protected]
        elif op.name == "wp" and result in (OK, ENOENT):
            start = cast(int, op.addr)
            end = start + cast(int, op.length)
            pages = self.protected.setdefault(pid, set())
            for vma in machine.processes[pid].vmas_intersecting(start, end):
                if not vma.uffd_wp:
                    break  # mwriteprotect_range's ENOENT: the VMAs before it were done
                done = range(max(vma.start, start), min(vma.end, end), PAGE_SIZE)
                if op.mode == "on":
                    pages.update(done)
                else:
                    pages.difference_update(done)
        elif op.name == "munmap" and protected:
            start = cast(int, op.addr)
            end = start + cast(int, op.length)
            protected.difference_update([addr for addr in protected if start <= addr < end])
        elif op.name in ("dontneed", "free") and protected:
            # A file VMA keeps its protection through MADV_DONTNEED (zap installs markers:
            # zap_install_uffd_wp_if_needed) and is never freed (MADV_FREE is EINVAL there).
            start = cast(int, op.addr)
            end = start + cast(int, op.length)
            mm = machine.processes[pid]
            protected.difference_update([addr for addr in protected
                                         if start <= addr < end and not self._in_file_vma(mm, addr)])
        elif op.name in ("reclaim", "try_to_unmap"):
            self._drop_discarded_protection(machine)
        elif op.name == "exit":
            self.protected.pop(pid, None)

    def _drop_discarded_protection(self, machine: Machine) -> None:
        """A page of an anonymous VMA whose entry reclaim (or try_to_unmap) left none was a
        lazyfree page discarded (try_to_unmap_one's MADV_FREE branch; a swap-out leaves a swap
        entry), and its protection goes with its content: pte_install_uffd_wp_if_needed
        installs no marker in an anonymous VMA. A file VMA's page keeps it: the unmap leaves
        a marker. Any process's, as the folio may be shared; the data oracle judges what such
        a page reads."""
        for pid, protected in self.protected.items():
            mm = machine.processes.get(pid)
            if protected and mm is not None:
                protected.difference_update([addr for addr in protected if pte_none(machine.lookup(mm, addr)[1])
                                             and not self._in_file_vma(mm, addr)])

    @staticmethod
    def _in_file_vma(mm: MM, addr: int) -> bool:
        vma = mm.find_vma(addr)
        return vma is not None and vma.file is not None

    @staticmethod
    def _drop_range(words: dict[int, dict[int, int]], pid: int, start: int, end: int) -> dict[int, int]:
        """Forget pid's words in [start, end) and return them: O(min(pages in range, pages written))."""
        pages = words.get(pid)
        dropped: dict[int, int] = {}
        if not pages:
            return dropped
        if (end - start) >> PAGE_SHIFT <= len(pages):
            for addr in range(start, end, PAGE_SIZE):
                if addr in pages:
                    dropped[addr] = pages.pop(addr)
        else:
            for addr in [addr for addr in pages if start <= addr < end]:
                dropped[addr] = pages.pop(addr)
        return dropped

    @staticmethod
    def _pins_of(machine: Machine, pid: int) -> list[Pin]:
        return [pin for pin in machine.pins.values() if pin.pid == pid]

    def _release_range(self, machine: Machine, pid: int, start: int, end: int) -> None:
        """Mark released every page of pid's live pins whose address lies in [start, end)."""
        for pin in self._pins_of(machine, pid):
            first = max(0, -(-(start - pin.addr) // PAGE_SIZE))
            last = min(pin.nr_pages, -(-(end - pin.addr) // PAGE_SIZE))
            if first < last:
                self.released.setdefault(pin.pin_id, set()).update(range(first, last))


__all__ = ["Shadow"]
