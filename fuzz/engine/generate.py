"""Seeded random op scripts for the randomised tests: valid by construction.

Addresses are drawn from a small window around a few VMAs and biased to the
boundaries where batching goes wrong (PMD, contpte block, folio and VMA
edges); orders are biased to 0, 2, 4 and 9. The atheris decoder is a separate
piece; this one serves pytest's seeded sweeps.
"""

from __future__ import annotations

import random

from fuzz.implementation import OP_NAMES, PROT_OPS, RANGE_OPS
from fuzz.script.ops import Expect, Op, Script
from machine.pgtable import CONT_PTE_SIZE, PAGE_SIZE, PMD_SIZE

WINDOW_BASE = 0x200000
WINDOW_SIZE = 4 * PMD_SIZE
ORDERS = (0, 0, 2, 4, 4, 9, 9, 1, 3, 8)
SPLIT_ORDERS = (0, 0, 2, 4, 1, 9)
VALUES = (1, 2, 7, 0xdead, 0xffffffffffffffff)
# How often each op is drawn, in OP_NAMES' order: faults and writes make the states the others act on.
OP_WEIGHT = {"mmap": 6, "munmap": 2, "dontneed": 2, "free": 4, "mprotect": 4, "fault": 14, "write": 14, "read": 5,
             "pin": 6, "unpin": 3, "fork": 5, "exit": 2, "reclaim": 5, "try_to_unmap": 4, "split_pmd": 3,
             "split": 4, "file": 2, "sync": 3, "uffd": 3, "wp": 5}
FILE_LENGTHS = (CONT_PTE_SIZE, PMD_SIZE, 4 * PAGE_SIZE, CONT_PTE_SIZE + 3 * PAGE_SIZE)
FILE_OFFSETS = (0, 0, PAGE_SIZE, 8 * PAGE_SIZE, CONT_PTE_SIZE)
OP_WEIGHTS = tuple(OP_WEIGHT[name] for name in OP_NAMES)


class ScriptGenerator:
    """Draws one op at a time, tracking which processes and pins can be named."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.live = [0]
        self.next_pid = 1
        self.nr_pins = 0
        self.used: list[int] = []

    def addr(self) -> int:
        """An address already used, a page near one (the same folio or contpte block), or a
        fresh one near the window's interesting boundaries."""
        draw = self.rng.random()
        if self.used and draw < 0.4:
            return self.rng.choice(self.used)
        if self.used and draw < 0.6:
            addr = self.near_addr(self.rng.choice(self.used))
        else:
            addr = self.fresh_addr()
        self.used.append(addr)
        return addr

    def near_addr(self, addr: int) -> int:
        """Another page of the 64 KiB block around addr, or a page a few away from it."""
        rng = self.rng
        if rng.random() < 0.5:
            addr = addr - addr % CONT_PTE_SIZE + rng.randrange(CONT_PTE_SIZE // PAGE_SIZE) * PAGE_SIZE
        else:
            addr += rng.choice((-3, -2, -1, 1, 2, 3)) * PAGE_SIZE
        return min(max(addr, WINDOW_BASE), WINDOW_BASE + WINDOW_SIZE - PAGE_SIZE)

    def fresh_addr(self) -> int:
        rng = self.rng
        granule = rng.choice((PMD_SIZE, PMD_SIZE, CONT_PTE_SIZE, CONT_PTE_SIZE, PAGE_SIZE))
        base = WINDOW_BASE + rng.randrange(WINDOW_SIZE // granule) * granule
        if rng.random() < 0.3:
            base += rng.choice((-1, 1, 15, 16, 17, 511)) * PAGE_SIZE
        return min(max(base, 0), WINDOW_BASE + WINDOW_SIZE - PAGE_SIZE)

    def length(self) -> int:
        rng = self.rng
        return rng.choice((PAGE_SIZE, 2 * PAGE_SIZE, CONT_PTE_SIZE, 17 * PAGE_SIZE, PMD_SIZE,
                           PMD_SIZE + CONT_PTE_SIZE, 2 * PMD_SIZE, WINDOW_SIZE))

    def process(self) -> int:
        return self.rng.choice(self.live)

    def op(self) -> Op:
        rng = self.rng
        name = rng.choices(OP_NAMES, weights=OP_WEIGHTS)[0]
        pid = self.process()
        if name == "exit" and len(self.live) == 1:
            name = "fork"
        if name == "file":
            return Op(name, file=rng.randrange(3), length=rng.choice(FILE_LENGTHS), shmem=rng.random() < 0.5)
        if name == "sync":
            return Op(name, file=rng.randrange(3))
        if name in RANGE_OPS:
            prot = rng.choice(("rw", "rw", "ro")) if name in PROT_OPS else None
            if name == "mmap" and rng.random() < 0.5:
                return Op(name, process=pid, addr=self.addr(), length=self.length(), prot=prot,
                          file=rng.randrange(3), offset=rng.choice(FILE_OFFSETS) or None, shared=rng.random() < 0.5)
            mode = rng.choice(("on", "on", "off")) if name == "wp" else None
            return Op(name, process=pid, addr=self.addr(), length=self.length(), prot=prot, mode=mode)
        if name == "fault":
            return Op(name, process=pid, addr=self.addr(), order=rng.choice(ORDERS))
        if name == "split":
            return Op(name, process=pid, addr=self.addr(), order=rng.choice(SPLIT_ORDERS))
        if name == "write":
            return Op(name, process=pid, addr=self.addr(), value=rng.choice(VALUES))
        if name == "pin":
            self.nr_pins += 1
            return Op(name, process=pid, addr=self.addr(), nr_pages=rng.choice((1, 1, 2, 17)),
                      prot=rng.choice(("ro", "rw")))
        if name == "unpin":
            return Op(name, pin_id=rng.randrange(self.nr_pins + 1))
        if name == "fork":
            self.live.append(self.next_pid)
            self.next_pid += 1
            return Op(name, process=pid)
        if name == "exit":
            self.live.remove(pid)
            return Op(name, process=pid)
        return Op(name, process=pid, addr=self.addr())

    def script(self, nr_ops: int) -> Script:
        rng = self.rng
        steps: list[Op | Expect] = [Op("mmap", process=0, addr=WINDOW_BASE, length=2 * PMD_SIZE, prot="rw")]
        # Files mapped over the rest of the window, private or shared, from an offset: a file
        # of a PMD and one of 19 pages (its last folio cut short).
        for file, base in ((0, WINDOW_BASE + 2 * PMD_SIZE), (1, WINDOW_BASE + 3 * PMD_SIZE)):
            if rng.random() < 0.5:
                steps.append(Op("file", file=file, length=rng.choice((PMD_SIZE, CONT_PTE_SIZE + 3 * PAGE_SIZE)),
                                shmem=rng.random() < 0.5))
                steps.append(Op("mmap", process=0, addr=base, length=PMD_SIZE, prot=rng.choice(("rw", "rw", "ro")),
                                file=file, offset=rng.choice(FILE_OFFSETS) or None, shared=rng.random() < 0.5))
        steps += [self.op() for _ in range(max(nr_ops - len(steps), 0))]
        return Script(path="<generated>", frames=self.rng.choice((256, 1024, 4096)), steps=steps)


def random_script(seed: int, max_ops: int = 40) -> Script:
    """A valid op script of 1..max_ops ops drawn from seed (same seed, same script)."""
    rng = random.Random(seed)
    return ScriptGenerator(rng).script(rng.randint(1, max_ops))
