"""Ranges split every 2 MiB from their start instead of at PMD boundaries, so a batch of an
unaligned range runs past the end of its PTE table."""

from machine.pgtable import PMD_SIZE

from . import load_batched_copy, plant

batched = load_batched_copy(__name__ + "_batched")


def pmd_ranges(mm, start, end):
    addr = start
    while addr < end:
        next_addr = min(addr + PMD_SIZE, end)  # planted: not pmd_addr_end()
        yield addr, next_addr, addr % PMD_SIZE == 0 and next_addr == addr + PMD_SIZE
        addr = next_addr


plant(batched, "memory", "pmd_ranges", pmd_ranges)
Kernel = batched.Kernel
