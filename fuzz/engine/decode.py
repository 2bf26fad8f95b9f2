"""Raw fuzzer inputs and op scripts, both ways (issue 4: the input decoding).

A raw input is a stream of choices read as atheris' FuzzedDataProvider reads
them (`ConsumeIntInRange`, which takes its bytes from the end of the input). The
decoder is total and deterministic: any bytes give a valid op sequence, because
each op is drawn against the reference machine's state after the ops before
it: only live processes and issued pins are named; addresses are drawn near VMA
edges, at aligned places inside VMAs, at folio, contpte and PMD boundaries, pages
already used or, for an op that acts on a folio, pages of large folios and of
those worth acting on (fuzz.engine.notes: pinned, mapped by several processes,
lazyfree, in the page cache, of mixed PageAnonExclusive, uffd-wp or dirty bits,
across a VMA edge, PMD-mapped, COWed from a file), and three ops in four are drawn to act on such a folio
outright (`act_on_folio_of_note`: unmap, reclaim, split below its order, pin,
write or read a page of it, free, mprotect, wp ... a part of it, fork, exit, map
it again), or to make one where the process maps none (`make_folio`: map memory
or fault a large folio; after a private file mapping's fault, map the clean
page-cache folio it read in again); an act of several ops (uffd before wp, mmap
before read) draws the rest without a choice. An act that gives the folio it aimed at
a hazard it did not have (notes.folio_hazards: shared, pinned, PMD-mapped, in the
page cache, mapped or written or protected in part, across a VMA edge, a folded
contpte block ...) is followed, three times in four, by a walker that batches over it, one
of that hazard's (HAZARD_WALKERS; a folded block's act on a part of it). Machine
sizes include small ones where swap runs out or has no aligned run for a PMD THP.
Orders lean to 0, 2, 4 and 9; the op count is capped. The encoder plays the same grammar the
other way, so seeds and reproducers can be kept as `.ops` and turned back into
bytes: `decode(encode(script)) == script` for every script it accepts. The
encoder needs only what each op may name (`Names`: the live processes and the
pins issued), so it runs the reference only as far as the last fork, exit or
pin, and not at all over the ops a mutated script keeps from the decoded input
it came from: their names were recorded when that input was decoded.

The first choice is the encoding version. Decoding ignores a wrong one (a
mutated input is still an input); stored raw files are always written by the
encoder, and `check_version` refuses files of another version.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import NamedTuple

from fuzz.engine.notes import (
    HAZARDS,
    FolioSpan,
    folio_addresses_of_note,
    folio_hazards,
    folio_span,
    large_folio_addresses,
)
from fuzz.errors import UsageError
from fuzz.implementation import (
    OP_DISPATCH,
    OP_NAMES,
    ORDER_OPS,
    PROCESS_OPS,
    PROT_OPS,
    PROTS,
    RANGE_OPS,
    WP_MODES,
    Kernel,
    reference_kernel,
)
from fuzz.script.ops import Op, Script
from machine import DEFAULT_NR_FRAMES, Machine, check
from machine.mm import VMA
from machine.pgtable import CONT_PTE_SIZE, HPAGE_PMD_ORDER, PAGE_SHIFT, PAGE_SIZE, PMD_SIZE, TASK_SIZE

ENCODING_VERSION = 11  # 2: raw frames, pins and lengths capped; 3: free; 4: folio and near addresses;
                      # 5: an op that acts on a folio of note; 6: reads weighted up (the zero page),
                      # zero-page entries and half-zero folios among folio addresses; 7: files, uffd-wp;
                      # 8: acts on folio parts, pages of any large folio; 9: a read draws an order
                      # (order=9: the huge zero folio), which an act may make; 10: walkers after a
                      # new hazard, clean page-cache folios mapped again, 768 frames; 11: walkers
                      # by hazard (folded contpte blocks, folios across VMA edges, read-only mixed
                      # entries), uffd among the note kinds, wp over parts as often as whole
MAX_OPS = 24
# Small machines: memory and swap (as many slots as frames) run out. Between one and two
# PMDs' worth (768), memory holds a PMD THP but swap has no naturally aligned run for one:
# every PMD-order swap-out falls back to order-0 slots, as with nearly full or fragmented swap.
FRAMES_CHOICES = (DEFAULT_NR_FRAMES, DEFAULT_NR_FRAMES, 1024, 768, 256, 64, 32)
RAW_FRAMES = 2 * DEFAULT_NR_FRAMES  # raw draws stay small: every execution stays fast
WINDOW_BASE = 0x200000
WINDOW_SIZE = 8 << 20
# Op kinds, repeated to weight them: faults and writes make the states the others act on.
KIND_TABLE = ("mmap", "mmap", "fault", "fault", "fault", "write", "write", "write", "read", "read", "pin", "pin",
              "unpin", "fork", "fork", "exit", "munmap", "dontneed", "free", "free", "mprotect", "mprotect", "reclaim",
              "reclaim", "try_to_unmap", "try_to_unmap", "split_pmd", "split", "split", "file", "file", "file", "sync",
              "mmap", "uffd", "wp", "wp")
# Weighted: structured addresses first; the last entry (any page) is how the encoder draws.
# "near": another page of the 64 KiB block around a used address (the rest of a folio an op
# acted on: a write to one page of a folio MADV_FREE cleaned, a fault next to a split).
# "inside": a page, contpte block or PMD boundary inside one of the process's VMAs (where
# faults and writes land instead of failing with EFAULT).
ADDR_CATEGORIES = ("vma_edge", "vma_edge", "inside", "inside", "inside", "boundary", "boundary", "used", "near",
                   "raw")
# An op that acts on the folio at its address also draws pages of the folios worth acting on.
FOLIO_OPS = frozenset({"try_to_unmap", "reclaim", "split", "split_pmd", "pin", "write", "dontneed", "munmap",
                       "mprotect", "free", "uffd", "wp"})
# "large": a page of any large folio the process maps (the raw material of every folio of note).
FOLIO_ADDR_CATEGORIES = ("folio", "folio", "folio", "large", *ADDR_CATEGORIES)
# ACT_SHARE ops in ACT_CHANCE are drawn to act on a folio of note (issue 16): on a page of a folio
# worth acting on (folio_addresses_of_note), else of any large folio, what makes a new state
# of it or acts on one, weighted like KIND_TABLE. "exit" ends another process (the folio a
# fork shared is its own again), "mmap" maps a page-cache folio again elsewhere and reads it
# (as fork maps an anon one again), "wp" registers the VMA first if it is not. An act that does
# not apply to the folio's kind is one that does (mmap and sync of an anon folio are fork and
# write; free and split of a page-cache folio map it again). The encoder
# never takes this way (it draws every op from KIND_TABLE).
ACT_CHANCE = 4
ACT_SHARE = 3   # choices below it act: three ops in four
ACT_KINDS = ("try_to_unmap", "try_to_unmap", "reclaim", "reclaim", "split", "split", "split_pmd", "fork", "exit",
             "pin", "pin", "write", "write", "write", "read", "free", "free", "mprotect", "mprotect", "dontneed",
             "munmap", "uffd", "wp", "wp", "sync", "mmap")
# What an act makes where the process maps no large folio: a VMA of one of these lengths,
# else a fault of one of these orders.
MAKE_LENGTHS = (CONT_PTE_SIZE, PMD_SIZE, 2 * PMD_SIZE, 4 * PAGE_SIZE)
MAKE_ORDERS = (2, 2, 3, 4, 4, 9)   # below a contpte block (16 pages) entries keep their own bits
MAKE_FILE_LENGTHS = (CONT_PTE_SIZE, PMD_SIZE, CONT_PTE_SIZE + 3 * PAGE_SIZE)   # sizes that hold a large folio
# What an act does to a large folio where the process maps none of note: what makes it one
# (shared by fork, lazyfree, pinned, written in part, protected in part, mapped again), or
# the walkers that act on any folio.
NOTE_KINDS = ("fork", "fork", "free", "free", "pin", "write", "write", "mprotect", "uffd", "wp", "wp", "mmap",
              "try_to_unmap", "reclaim", "split")
# What acts on a folio the last act gave a new hazard (notes.HAZARDS: shared by fork, pinned,
# written or protected in part, mapped again ...): the walkers whose batches that hazard
# bears on, one of the new hazards drawn first. A PMD mapping is split, copied, unmapped or
# protected in part; a maybe-pinned folio is copied page by page by fork and kept by
# try_to_unmap; a shared one is COWed; a lazyfree one is written again or discarded; the
# page cache is unmapped, protected or synced; pages that differ are batched over by every
# walker, and where they differ in the write bit too, mprotect makes them agree in it (so
# only the other bits split a batch); a folio across a VMA edge is walked VMA by VMA; a
# folded contpte block is acted on in part (registered, protected, pinned, written, freed,
# zapped: each must unfold it, or keep it whole) or copied by fork; a clean page-cache folio
# mapped writable is written through one of its entries, or zapped and unmapped.
HAZARD_WALKERS = {
    "pmd": ("split_pmd", "fork", "try_to_unmap", "reclaim", "mprotect", "dontneed"),
    "pinned": ("fork", "fork", "try_to_unmap", "reclaim", "split"),
    "shared": ("write", "try_to_unmap", "reclaim", "split", "free"),
    "lazyfree": ("write", "reclaim", "try_to_unmap", "fork"),
    "cache": ("try_to_unmap", "reclaim", "mprotect", "wp", "write", "fork", "sync"),
    "part_mapped": ("reclaim", "try_to_unmap", "split", "fork"),
    "mixed_exclusive": ("try_to_unmap", "reclaim", "fork", "mprotect"),
    "mixed_zero": ("reclaim", "try_to_unmap", "split", "free"),
    "mixed_uffd_wp": ("try_to_unmap", "reclaim", "mprotect", "fork", "dontneed"),
    "mixed_dirty": ("reclaim", "try_to_unmap", "mprotect", "dontneed"),
    "mixed_write": ("mprotect",),   # read-only over the whole folio
    "mixed_read_only": ("try_to_unmap", "reclaim", "fork", "dontneed"),
    "vmas": ("fork", "fork", "try_to_unmap", "reclaim", "munmap"),
    "cont": ("uffd", "wp", "pin", "write", "mprotect", "free", "dontneed", "fork"),
    "clean_writable": ("write", "write", "reclaim", "try_to_unmap", "dontneed", "munmap"),
}
WALKER_CHANCE = 4
WALKER_SHARE = 3   # choices below it walk: three acts in four after a new hazard
# The hazards whose walkers act on a part of the folio (at a page of it drawn anew): the range
# leaves the folio's first or last page out, or covers a page or two (a folded block is split).
PART_HAZARDS = frozenset({"cont"})
# The range an act covers: the whole folio, the contpte block of the page (within the folio),
# from the page to the folio's end, from its start to the page, the page, the page and the next.
FOLIO_PARTS = ("folio", "folio", "folio", "block", "to_end", "from_start", "page", "pages")
IN_PART = ("to_end", "from_start", "page", "pages")   # a part of it (PART_HAZARDS' walkers)
WP_PARTS = ("folio", "block", *IN_PART)   # where wp acts: a protected part is where batches split
WHOLE = ("folio",)   # a walker's range (but wp's): the folio it walks, whole
LISTED_WEIGHT = 3  # a listed value is drawn 3 times in 4, a raw one once
RAW_PAGES = TASK_SIZE // PAGE_SIZE
BOUNDARY_GRANULES = (PMD_SIZE, CONT_PTE_SIZE, PAGE_SIZE)
BOUNDARY_OFFSETS = (0, -1, 1, 15, 16, 17, 511)
LENGTHS = (PAGE_SIZE, 2 * PAGE_SIZE, CONT_PTE_SIZE, CONT_PTE_SIZE + PAGE_SIZE, PMD_SIZE, PMD_SIZE + CONT_PTE_SIZE,
           2 * PMD_SIZE, 4 * PMD_SIZE)
RAW_LENGTH_PAGES = 4096            # up to 16 MiB: eight PMDs, twice the address window
ORDERS = (0, 2, 4, 9, 1, 3, 8)
RAW_ORDERS = 64
VALUES = (1, 2, 7, 0xdead, (1 << 64) - 1)
PIN_PAGES = (1, 2, 16, 17)
RAW_PIN_PAGES = 1024               # two PMDs' worth
# Files: F0..F2 (a file op on one that exists is EEXIST; a mmap or sync of one never made is
# EBADF); sizes from a page to a PMD, a size that is not a folio's (the last folio of a
# file stops short of an order); a file mmap's offset at, inside or past a large folio's start.
# "new" and "existing" are drawn against the machine (the lowest file not made yet, one that
# exists), as vma_edge is: the encoder writes the file's number raw.
FILE_IDS = (0, 1, 2)
FILE_OP_IDS = ("new", "new", *FILE_IDS)
MMAP_FILES = (None, None, None, "existing", "existing", "existing", *FILE_IDS)   # anonymous half the time
FILE_LENGTHS = (CONT_PTE_SIZE, PMD_SIZE, 4 * PAGE_SIZE, PAGE_SIZE, CONT_PTE_SIZE + 3 * PAGE_SIZE)
FILE_OFFSETS = (0, 0, PAGE_SIZE, 8 * PAGE_SIZE, CONT_PTE_SIZE, 15 * PAGE_SIZE)
# The only ops that change what later ops may name (SPEC §3): fork makes a process, exit
# ends one, a successful pin issues the next pin id.
NAMING_OPS = ("fork", "exit", "pin")

assert set(KIND_TABLE) == set(OP_NAMES)
assert set(HAZARD_WALKERS) == set(HAZARDS)
assert set(ACT_KINDS) | set(NOTE_KINDS) | {kind for kinds in HAZARD_WALKERS.values() for kind in kinds} \
    <= set(KIND_TABLE) - {"unpin", "fault", "file"}


class EncodeError(UsageError):
    """An op script the grammar cannot produce (e.g. an address the decoder never draws)."""


class Names(NamedTuple):
    """What an op may name: the live processes, ascending, and the number of pins issued
    (an unpin names one of them or the next, which does not exist)."""

    live: tuple[int, ...]
    nr_pins: int


def names_of(machine: Machine) -> Names:
    return Names(tuple(sorted(machine.processes)), machine.nr_pins)


@dataclass(frozen=True)
class Decoded:
    """A raw input's op script with the names each op was drawn against, then those left
    after the last op: what encode needs to draw the same ops again without running them."""

    script: Script
    names: tuple[Names, ...]


class ByteChoices:
    """Choices read from raw bytes exactly as atheris' FuzzedDataProvider.ConsumeIntInRange
    reads them (a test holds it to that), at a fraction of its per-call cost: each from the
    end of the input, little-endian in as many bytes as its range needs (fewer if fewer are
    left), modulo the count."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.remaining = len(data)   # data[:remaining] is not read yet
        self.short = False   # a choice found fewer bytes than it reads: a longer input reads on

    def choose(self, count: int, wanted: int | None = None) -> int:
        end = self.remaining
        if count <= 256:   # most choices: one byte, none if there is one way or no byte left
            if count == 1:
                return 0
            if end == 0:
                self.short = True
                return 0
            self.remaining = end - 1
            return self.data[end - 1] % count
        start = end - ((count - 1).bit_length() + 7) // 8
        if start < 0:
            start, self.short = 0, True
        self.remaining = start
        return int.from_bytes(self.data[start:end], "little") % count

    def exhausted(self) -> bool:
        return self.remaining == 0


class RecordedChoices:
    """The encoder's side: each choice is the wanted value, recorded to be written out."""

    def __init__(self) -> None:
        self.choices: list[tuple[int, int]] = []

    def choose(self, count: int, wanted: int | None = None) -> int:
        if wanted is None or not 0 <= wanted < count:
            raise EncodeError(f"cannot encode choice {wanted} of {count}")
        self.choices.append((wanted, count))
        return wanted

    def to_bytes(self) -> bytes:
        """The bytes FuzzedDataProvider turns back into these choices: each one little-endian
        in as many bytes as its range needs, the first choice at the very end."""
        parts = [value.to_bytes(((count - 1).bit_length() + 7) // 8, "little") for value, count in self.choices]
        return b"".join(reversed(parts))


def _index(options: tuple, wanted: object) -> int | None:
    if wanted is None:   # decoding: nothing is wanted
        return None
    return options.index(wanted) if wanted in options else None


class MapAgain(NamedTuple):
    """A pending act: map again the page-cache folio process maps at addr (or COWed a page
    of), once the ops before it have run, and read it there (OpGrammar.map_again)."""

    process: int
    addr: int


class OpGrammar:
    """Ops drawn one after another from choices; with RecordedChoices and a target op the
    same code records the choices that draw exactly that op."""

    def __init__(self, choices: ByteChoices | RecordedChoices) -> None:
        self.choices = choices
        self.used: list[int] = []   # the addresses drawn so far
        self.pending: list[Op | MapAgain] = []   # the rest of an act of several ops, drawn next
        # The process and page the last act aimed at, and its folio's hazards then (folio_hazards).
        self.focus: tuple[int, int, int] | None = None

    def op(self, names: Names, machine: Machine | None = None, target: Op | None = None) -> Op:
        """One op naming only what names holds, its address near machine's VMA edges among
        others (machine is None when encoding: the encoder never draws those). One op in
        ACT_CHANCE (ACT_SHARE of them) acts on a folio of note, where the process it draws maps one; the rest of
        an act of several ops comes first, without a choice."""
        if self.pending and machine is not None:
            pending = self.pending.pop(0)
            if pending.process not in names.live:
                self.pending.clear()
            elif isinstance(pending, Op):
                return pending
            else:
                span = folio_span(machine, pending.process, pending.addr)
                if span.file is not None and span.nr_pages > 1:   # else the fault made no large folio
                    return self.map_again(pending.process, span, machine)
        choose = self.choices.choose
        if choose(ACT_CHANCE, None if target is None else ACT_CHANCE - 1) < ACT_SHARE and machine is not None:
            acting = self.act_on_folio_of_note(names, machine)
            if acting is not None:
                return acting
        name = KIND_TABLE[choose(len(KIND_TABLE), _index(KIND_TABLE, target and target.name))]
        if name in ("file", "sync"):
            ids = FILE_OP_IDS if name == "file" else MMAP_FILES[3:]
            drawn = ids[choose(len(ids), _index(ids, target and target.file))]
            file = drawn if isinstance(drawn, int) else self.file_of_note(machine, drawn)
            if name == "sync":
                return Op(name, file=file)
            length = FILE_LENGTHS[choose(len(FILE_LENGTHS), _index(FILE_LENGTHS, target and target.length))]
            shmem = bool(choose(2, None if target is None else int(target.shmem)))
            return Op(name, file=file, length=length, shmem=shmem)
        if name == "unpin":
            nr_pins = names.nr_pins
            pin_id = choose(nr_pins + 1, target.pin_id if target else None)
            return Op("unpin", pin_id=pin_id)
        live = names.live
        process = live[choose(len(live), _index(live, target and target.process))]
        if name in PROCESS_OPS:
            return Op(name, process=process)
        addr = self.addr(process, machine, target.addr if target else None,
                         FOLIO_ADDR_CATEGORIES if name in FOLIO_OPS else ADDR_CATEGORIES)
        return self.op_at(name, process, addr, target, machine)

    def act_on_folio_of_note(self, names: Names, machine: Machine) -> Op | None:
        """An op of ACT_KINDS on a page of a folio worth acting on (folio_addresses_of_note),
        else one of NOTE_KINDS on a page of any large folio, in a process drawn from names
        (half the time the page the last act aimed at, while it is one: if that act gave its
        folio a hazard it did not have, WALKER_SHARE times in WALKER_CHANCE one of that hazard's
        HAZARD_WALKERS at a page of it); if that
        process maps neither, an op that makes one (make_folio)."""
        choose = self.choices.choose
        process = names.live[choose(len(names.live))]
        noted = folio_addresses_of_note(machine, process)
        kinds: tuple[str, ...] = ACT_KINDS
        if not noted:
            noted, kinds = large_folio_addresses(machine, process), NOTE_KINDS
        if not noted:
            return self.make_folio(process, machine)
        focus = self.focus
        if focus is not None and (focus[0] != process or focus[1] not in noted):
            focus = None   # another process, or its page is no longer one to act on
        new = 0 if focus is None else folio_hazards(machine, process, focus[1]) & ~focus[2]
        parts: tuple[str, ...] = FOLIO_PARTS
        hazard = None
        if focus is not None and new and choose(WALKER_CHANCE) < WALKER_SHARE:
            # the last act gave the folio it aimed at a new hazard: what batches over it, next
            hazards = [hazard for bit, hazard in enumerate(HAZARDS) if new >> bit & 1]
            hazard = hazards[choose(len(hazards))]
            walkers = HAZARD_WALKERS[hazard]
            name = walkers[choose(len(walkers))]
            span = folio_span(machine, process, focus[1])
            if hazard in PART_HAZARDS:   # any page the process maps of it: a part around it
                pages = [page for page in noted if span.start <= page < span.end]
                addr, parts = pages[choose(len(pages))], IN_PART
            else:
                addr, parts = self.page_of(focus[1], span), WHOLE
        else:
            name = kinds[choose(len(kinds))]
            addr = noted[choose(len(noted))]
            if focus is not None and choose(2) == 0:
                addr = focus[1]   # half the time, the folio the last act aimed at again
        self.focus = (process, addr, folio_hazards(machine, process, addr))
        self.used.append(addr)
        span = folio_span(machine, process, addr)
        if name == "exit":
            others = [pid for pid in names.live if pid != process]
            if others:
                return Op("exit", process=others[choose(len(others))])
            name = "fork"
        if span.file is None:   # what does not apply to an anon folio: mapping it again is fork
            name = {"mmap": "fork", "sync": "write"}.get(name, name)
        else:   # nor to a page-cache folio (no MADV_FREE, split or PMD mapping): map it again
            name = {"free": "mmap", "split": "mmap", "split_pmd": "mmap"}.get(name, name)
        if name in PROCESS_OPS:
            return Op(name, process=process)
        if name == "mmap":
            return self.map_again(process, span, machine)
        if name == "sync":
            return Op("sync", file=span.file)
        if name in ("uffd", "wp"):
            return self.act_uffd(name, process, addr, span, machine, parts)
        if name in RANGE_OPS:
            start, end = self.folio_part(addr, span, parts)
            prot = None
            if name == "mprotect" and hazard == "mixed_write":   # the entries made to agree in it
                prot = "ro"
            elif name == "mprotect":   # read-only 3 times in 4: batches of mixed exclusivity stay whole
                prot = PROTS[int(choose(LISTED_WEIGHT + 1) != LISTED_WEIGHT)]
            return Op(name, process=process, addr=start, length=self.clip_length(start, end), prot=prot)
        page = self.page_of(addr, span)
        if name == "split":
            order = 0 if span.order == 0 or choose(2) == 0 else choose(span.order)   # below the folio's
            return Op(name, process=process, addr=page, order=order)
        if name == "pin":
            nr_pages = 1 if choose(2) == 0 else (span.end - page) >> PAGE_SHIFT
            return Op(name, process=process, addr=page, nr_pages=nr_pages, prot=PROTS[choose(len(PROTS))])
        if name == "write":
            return Op(name, process=process, addr=page, value=self.value(None))
        return Op(name, process=process, addr=page)

    def make_folio(self, process: int, machine: Machine) -> Op:
        """Where process maps no large folio: fault a folio of a MAKE_ORDERS order at an
        address aligned to it in a VMA (the PMD order is read one time in two: the huge zero
        folio); or, where it has no VMA (else one time in four), map memory at a free place
        first: anonymous, or a file (made first if there is none), shared or private; after a
        private file mapping's fault, half the time the page-cache folio it read in (clean: the
        write went to the anon copy) is mapped again and read. The ops after the first are
        drawn next, without a choice; the folio made is the next act's focus, with no hazards
        yet (a PMD mapping or the page cache are new ones)."""
        choose = self.choices.choose
        mm = machine.processes[process]
        order = MAKE_ORDERS[choose(len(MAKE_ORDERS))]
        size = PAGE_SIZE << order
        # The PMD order is a read of it one time in two: the huge zero folio where it fits.
        kind = "read" if order == HPAGE_PMD_ORDER and choose(2) == 0 else "fault"
        if mm.vmas and choose(4) != 0:
            vma = mm.vmas[choose(len(mm.vmas))]
            first = -(-vma.start // size) * size
            count = (vma.end - first) // size if vma.end > first else 0
            addr = first + choose(count) * size if count else vma.start
            self.used.append(addr)
            self.focus = (process, addr, 0)
            return Op(kind, process=process, addr=addr, order=order)
        length = MAKE_LENGTHS[choose(len(MAKE_LENGTHS))]
        base = free_base(machine, process, max(length, PMD_SIZE))   # room for any file made
        self.used.append(base)
        self.focus = (process, base, 0)
        ops = [Op("mmap", process=process, addr=base, length=length, prot="rw")]
        if choose(3) == 2:   # a file one time in three
            shared = bool(choose(2))
            if machine.files:
                ops = [Op("mmap", process=process, addr=base, length=length, prot="rw",
                          file=self.file_of_note(machine, "existing"), shared=shared)]
            else:
                file_length = MAKE_FILE_LENGTHS[choose(len(MAKE_FILE_LENGTHS))]
                ops = [Op("file", file=FILE_IDS[0], length=file_length, shmem=bool(choose(2))),
                       Op("mmap", process=process, addr=base, length=file_length, prot="rw", file=FILE_IDS[0],
                          shared=shared)]
        self.pending.extend([*ops[1:], Op(kind, process=process, addr=base, order=order)])
        if ops[-1].file is not None and not ops[-1].shared and choose(2) == 0:
            self.pending.append(MapAgain(process, base))
        return ops[0]

    def page_of(self, addr: int, span: FolioSpan) -> int:
        """The noted page itself half the time, else any page of its folio."""
        choose = self.choices.choose
        if span.nr_pages == 1 or choose(2) == 0:
            return addr
        return span.start + (choose(span.nr_pages) << PAGE_SHIFT)

    def folio_part(self, addr: int, span: FolioSpan, parts: tuple[str, ...] = FOLIO_PARTS) -> tuple[int, int]:
        """The range [start, end) of a part of span around its page at addr, one of parts."""
        part = parts[self.choices.choose(len(parts))]
        page = addr - addr % PAGE_SIZE
        if part == "folio":
            start, end = span.start, span.end
        elif part == "block":
            block = page - page % CONT_PTE_SIZE
            start, end = max(block, span.start), min(block + CONT_PTE_SIZE, span.end)
        elif part == "to_end":
            start, end = page, span.end
        elif part == "from_start":
            start, end = span.start, page + PAGE_SIZE
        else:
            start, end = page, page + (PAGE_SIZE if part == "page" else 2 * PAGE_SIZE)
        return start, end

    def act_uffd(self, name: str, process: int, addr: int, span: FolioSpan, machine: Machine,
                 parts: tuple[str, ...] = FOLIO_PARTS) -> Op:
        """uffd: register the VMA holding addr (not when parts are IN_PART), or a part of the
        folio (one of parts); wp: protect (3 times in 4) or unprotect a part of the folio, after
        registering its VMA if it is not. uffd where the VMA is registered is wp."""
        choose = self.choices.choose
        vma = machine.processes[process].find_vma(addr)
        if name == "uffd" and vma is not None and vma.uffd_wp:
            name = "wp"   # registered already (a second registration is EBUSY): protect a part
        if name == "uffd" and vma is not None and parts is not IN_PART and choose(2) == 0:
            start, end = vma.start, vma.end
        elif name == "wp" and parts is not IN_PART:   # the whole folio or, as often, a part of it
            start, end = self.folio_part(addr, span, WP_PARTS)
        else:
            start, end = self.folio_part(addr, span, parts)
        if name == "uffd":
            return Op("uffd", process=process, addr=start, length=self.clip_length(start, end))
        mode = WP_MODES[int(choose(LISTED_WEIGHT + 1) == LISTED_WEIGHT)]
        wp = Op("wp", process=process, addr=start, length=self.clip_length(start, end), mode=mode)
        if vma is None or vma.uffd_wp:
            return wp
        self.pending.append(wp)
        return Op("uffd", process=process, addr=vma.start, length=self.clip_length(vma.start, vma.end))

    def map_again(self, process: int, span: FolioSpan, machine: Machine) -> Op:
        """Map span's file from its start to the folio's end again, shared or private, at the
        first free PMD-aligned place of the window or after it; then read the folio there."""
        assert span.file is not None
        length = (span.file_index + span.nr_pages) << PAGE_SHIFT
        base = free_base(machine, process, length)
        shared = bool(self.choices.choose(2))
        self.pending.append(Op("read", process=process, addr=base + (span.file_index << PAGE_SHIFT)))
        self.focus = (process, base + (span.file_index << PAGE_SHIFT), 0)
        return Op("mmap", process=process, addr=base, length=self.clip_length(base, base + length), prot="rw",
                  file=span.file, shared=shared)

    @staticmethod
    def clip_length(start: int, end: int) -> int:
        """end - start, at least a page and at most what the grammar can draw."""
        return max(PAGE_SIZE, min(end - start, RAW_LENGTH_PAGES * PAGE_SIZE, TASK_SIZE - start))

    def op_at(self, name: str, process: int, addr: int, target: Op | None, machine: Machine | None) -> Op:
        """The op name of process at addr, with the rest of its fields drawn (a file mmap's
        file among those machine holds)."""
        assert name not in PROCESS_OPS and name != "unpin", name
        choose = self.choices.choose
        if name in RANGE_OPS:
            length = self.length(addr, target.length if target else None,
                                 None if machine is None else machine.processes[process].find_vma(addr))
            prot = None
            if name in PROT_OPS:
                prot = PROTS[choose(len(PROTS), _index(PROTS, target and (target.prot or "rw")))]
            if name == "mmap":
                wanted_file: int | None = None
                if target is not None:
                    wanted_file = 0 if target.file is None else _index(MMAP_FILES, target.file)
                drawn_file = MMAP_FILES[choose(len(MMAP_FILES), wanted_file)]
                mmap_file: int | None = None if isinstance(drawn_file, str) else drawn_file
                if isinstance(drawn_file, str):   # an existing file; before any, anonymous memory
                    made = machine is not None and bool(machine.files)
                    mmap_file = self.file_of_note(machine, drawn_file) if made else None
                if mmap_file is not None:
                    offset = FILE_OFFSETS[choose(len(FILE_OFFSETS),
                                                 _index(FILE_OFFSETS, (target.offset or 0) if target else None))]
                    shared = bool(choose(2, None if target is None else int(target.shared)))
                    return Op(name, process=process, addr=addr, length=length, prot=prot, file=mmap_file,
                              offset=offset or None, shared=shared)
            mode = None
            if name == "wp":
                mode = WP_MODES[choose(len(WP_MODES), _index(WP_MODES, target and target.mode))]
            return Op(name, process=process, addr=addr, length=length, prot=prot, mode=mode)
        if name in ORDER_OPS:
            order: int | None = self.order((target.order or 0) if target else None)
            if name == "read" and not order:
                order = None   # a read of order 0 is written without it
            return Op(name, process=process, addr=addr, order=order)
        if name == "write":
            return Op(name, process=process, addr=addr, value=self.value(target.value if target else None))
        if name == "pin":
            nr_pages = self.pin_pages(target.nr_pages if target else None)
            prot = PROTS[choose(len(PROTS), _index(PROTS, target and target.prot))]
            return Op(name, process=process, addr=addr, nr_pages=nr_pages, prot=prot)
        return Op(name, process=process, addr=addr)

    def file_of_note(self, machine: Machine | None, which: str) -> int:
        """The lowest file number not made yet ("new"), or one of the files made ("existing")."""
        assert machine is not None   # the encoder draws every file number raw
        if which == "new":
            return next((file for file in FILE_IDS if file not in machine.files), FILE_IDS[-1])
        existing = sorted(machine.files)
        return existing[self.choices.choose(len(existing))] if existing else 0

    def addr(self, process: int, machine: Machine | None, wanted: int | None,
             categories: tuple[str, ...] = ADDR_CATEGORIES) -> int:
        """A page of a folio worth acting on (where categories offer it), near a VMA edge, at
        or near a boundary in the window, already used, or any page."""
        choose = self.choices.choose
        category = categories[choose(len(categories), None if wanted is None else len(categories) - 1)]
        noted: list[int] = []
        if category == "folio" and machine is not None:
            noted = folio_addresses_of_note(machine, process)
        elif category == "large" and machine is not None:
            noted = large_folio_addresses(machine, process)
        if noted:
            addr = noted[choose(len(noted))]
        elif category in ("vma_edge", "folio", "large"):
            assert machine is not None   # the encoder draws every address raw
            edges = vma_edges(machine, process)
            addr = edges[choose(len(edges))]
        elif category == "inside":
            assert machine is not None
            addr = self.inside_vma(machine, process)
        elif category == "boundary":
            granule = BOUNDARY_GRANULES[choose(len(BOUNDARY_GRANULES))]
            addr = WINDOW_BASE + choose(WINDOW_SIZE // granule) * granule
            addr += BOUNDARY_OFFSETS[choose(len(BOUNDARY_OFFSETS))] * PAGE_SIZE
            addr = min(max(addr, 0), TASK_SIZE - PAGE_SIZE)
        elif category == "used" and self.used:
            addr = self.used[choose(len(self.used))]
        elif category == "near" and self.used:
            block = self.used[choose(len(self.used))] & ~(CONT_PTE_SIZE - 1)
            addr = block + choose(CONT_PTE_SIZE // PAGE_SIZE) * PAGE_SIZE
        else:
            addr = choose(RAW_PAGES, None if wanted is None else wanted // PAGE_SIZE) * PAGE_SIZE
        self.used.append(addr)
        return addr

    def inside_vma(self, machine: Machine, process: int) -> int:
        """A page of one of process's VMAs (the window's base if it has none), aligned to a
        PMD, a contpte block or a page: drawn among the aligned ones inside the VMA."""
        choose = self.choices.choose
        vmas = machine.processes[process].vmas
        if not vmas:
            return WINDOW_BASE
        vma = vmas[choose(len(vmas))]
        granule = BOUNDARY_GRANULES[choose(len(BOUNDARY_GRANULES))]
        first = -(-vma.start // granule) * granule
        count = (vma.end - first) // granule if vma.end > first else 0
        return first + choose(count) * granule if count else vma.start

    def length(self, addr: int, wanted: int | None, vma: VMA | None = None) -> int:
        """A listed length, the rest of vma from addr (if addr is inside one), or any; the
        encoder always takes the last way."""
        choose = self.choices.choose
        way = choose(LISTED_WEIGHT + 2, None if wanted is None else LISTED_WEIGHT + 1)
        if way < LISTED_WEIGHT:
            length = LENGTHS[choose(len(LENGTHS))]
        elif way == LISTED_WEIGHT and vma is not None:
            length = vma.end - addr
        else:
            raw_pages = None if wanted is None else wanted // PAGE_SIZE - 1
            length = (choose(RAW_LENGTH_PAGES, raw_pages) + 1) * PAGE_SIZE
        return max(PAGE_SIZE, min(length, TASK_SIZE - addr))

    def order(self, wanted: int | None) -> int:
        return pick(self.choices, ORDERS, RAW_ORDERS, wanted)

    def value(self, wanted: int | None) -> int:
        return pick(self.choices, VALUES, 1 << 64, wanted)

    def pin_pages(self, wanted: int | None) -> int:
        return pick(self.choices, PIN_PAGES, RAW_PIN_PAGES, wanted)


def free_base(machine: Machine, pid: int, length: int) -> int:
    """The first PMD-aligned address from the window's base on where pid has no VMA for length bytes."""
    mm = machine.processes[pid]
    base = WINDOW_BASE
    while mm.vmas_intersecting(base, base + length) and base + PMD_SIZE + length < TASK_SIZE:
        base += PMD_SIZE
    return base


def vma_edges(machine: Machine, pid: int) -> list[int]:
    """The first and last page of each of pid's VMAs (the window's base if it has none)."""
    edges: list[int] = []
    for vma in machine.processes[pid].vmas:
        edges.extend((vma.start, vma.end - PAGE_SIZE))
    return edges or [WINDOW_BASE]


def pick(choices: ByteChoices | RecordedChoices, listed: tuple[int, ...], raw_count: int,
         wanted: int | None) -> int:
    """One of the listed values (3 times in 4), else any value below raw_count; the
    encoder always takes the raw way."""
    if choices.choose(LISTED_WEIGHT + 1, None if wanted is None else LISTED_WEIGHT) < LISTED_WEIGHT:
        return listed[choices.choose(len(listed))]
    return choices.choose(raw_count, wanted)


def draw_frames(choices: ByteChoices | RecordedChoices, wanted: int | None = None) -> int:
    """The machine size: a usual one, or any from 1 to RAW_FRAMES."""
    return pick(choices, FRAMES_CHOICES, RAW_FRAMES + 1, wanted) or 1


def _nr_frames(script: Script) -> int:
    return script.frames if script.frames is not None else DEFAULT_NR_FRAMES


class OpStream:
    """The decoder as a stream: each op drawn against the machine it is handed (the
    reference's, after the ops before), so decoding and running are one pass."""

    def __init__(self, data: bytes, path: str = "<input>") -> None:
        self.choices = ByteChoices(data)
        self.choices.choose(256)  # the encoding version: ignored here (see check_version)
        frames = draw_frames(self.choices)
        self.script = Script(path=path, frames=None if frames == DEFAULT_NR_FRAMES else frames, steps=[])
        self.grammar = OpGrammar(self.choices)
        self.names: list[Names] = []   # what each op was drawn against, then what is left
        self.ended = False   # set when next_op has drawn the last op: script holds them all

    def next_op(self, machine: Machine) -> Op | None:
        names = names_of(machine)
        if self.names and self.names[-1] == names:
            names = self.names[-1]   # one object per change: remembered inputs stay small
        self.names.append(names)
        if self.choices.exhausted() or len(self.script.steps) >= MAX_OPS or not names.live:
            self.ended = True
            return None
        return self.grammar.op(names, machine)

    def decoded(self) -> Decoded:
        """What the input decodes to (a copy of the script) once the stream has ended."""
        check(self.ended, "the stream has not drawn its last op")
        script = self.script
        return Decoded(Script(path=script.path, frames=script.frames, steps=list(script.steps)),
                       tuple(self.names))


def decode_input(data: bytes, path: str = "<input>") -> Decoded:
    """The op script a raw input stands for (total: any bytes decode) and its names. The
    reference runs alone to give each op its state; the harness runs both implementations instead."""
    stream = OpStream(data, path)
    machine, kernel = reference_kernel(_nr_frames(stream.script))
    while (op := stream.next_op(machine)) is not None:
        OP_DISPATCH[op.name](kernel, op)
        stream.script.steps.append(op)
    return stream.decoded()


def decode(data: bytes, path: str = "<input>") -> Script:
    """The op script a raw input stands for (see decode_input)."""
    return decode_input(data, path).script


def encode(script: Script, known: Decoded | None = None) -> bytes:
    """The raw input that decodes to script's ops (its expects are dropped); known, if
    given, is a decoded input whose names save running the ops script starts with too.

    Raises EncodeError if the grammar cannot draw the script (a machine size the decoder
    never picks, more than MAX_OPS ops, a process or pin it could not name).
    """
    frames = _nr_frames(script)
    recorded = RecordedChoices()
    recorded.choose(256, ENCODING_VERSION)
    draw_frames(recorded, frames)
    ops = [step for step in script.steps if isinstance(step, Op)]
    if len(ops) > MAX_OPS:
        raise EncodeError(f"{script.path}: {len(ops)} ops, the decoder draws at most {MAX_OPS}")
    grammar = OpGrammar(recorded)
    for op, names in zip(ops, names_before_ops(frames, ops, _known_names(script, ops, known)), strict=True):
        if not names.live:
            raise EncodeError(f"{script.path}:{op.line}: no process is left to name")
        drawn = grammar.op(names, target=op)
        if drawn != op:
            raise EncodeError(f"{script.path}:{op.line}: the decoder cannot draw this op exactly")
    return recorded.to_bytes()


def _known_names(script: Script, ops: list[Op], known: Decoded | None) -> tuple[Names, ...]:
    """known's names before each op script starts with too, and before the op after those."""
    if known is None or _nr_frames(known.script) != _nr_frames(script):
        return ()
    known_ops = known.script.steps
    check(len(known.names) == len(known_ops) + 1, "a decoded input has names after its last op")
    shared = 0
    while shared < min(len(ops), len(known_ops)) and ops[shared] == known_ops[shared]:
        shared += 1
    return known.names[:shared + 1]


def names_before_ops(frames: int, ops: list[Op], known_names: tuple[Names, ...] = ()) -> Iterator[Names]:
    """The names each op is drawn against: the reference machine's after the ops before.

    known_names, the first ones, need no run. After them the reference runs the ops only
    up to each op that can change the names (NAMING_OPS), and lazily: an op runs once the
    names after it are asked for, so the encoder refuses an op before running it.
    """
    machine: Machine | None = None
    kernel: Kernel | None = None
    ran = 0   # ops the reference has run
    for index in range(len(ops)):
        if index < len(known_names):
            names = known_names[index]
        elif index == 0 or ops[index - 1].name in NAMING_OPS:
            if machine is None or kernel is None:
                machine, kernel = reference_kernel(frames)
            for op in ops[ran:index]:
                OP_DISPATCH[op.name](kernel, op)
            ran = index
            names = names_of(machine)
        yield names


def check_version(data: bytes, path: str) -> None:
    """Refuse a stored raw input written by another encoding version."""
    version = ByteChoices(data).choose(256)
    if version != ENCODING_VERSION:
        raise UsageError(f"{path}: raw input of encoding version {version}, this rmapfuzz reads "
                         f"version {ENCODING_VERSION}")
