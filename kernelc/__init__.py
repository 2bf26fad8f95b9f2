"""kernel-c: batched/ with its rmap and PTE-batch helpers served by the kernel's own C.

The helpers are extracted verbatim from a kernel tree (`$RMAPFUZZ_KERNEL_TREE`, which
`--kernel-tree DIR` sets, else Debian's linux-source of the kernel the bridge boots),
compiled against fuzz/kernelc/shim.h and called through kernelc/bridge.py. This package
loads its own copy of batched/ and replaces the helpers there, so batched/ itself is
untouched.
"""

from __future__ import annotations

from fuzz.canaries import load_batched_copy, plant, submodule
from fuzz.kernelc.build import build

from .bridge import load_library
from .internal import KernelcPteBatch
from .rmap import KernelcRmap

LIBRARY_BUILD = build()
LIBRARY = load_library(LIBRARY_BUILD.path)
RMAP = KernelcRmap(LIBRARY)

batched = load_batched_copy(__name__ + ".batched_copy")   # under kernelc: instrumented when fuzzed
for _name, _function in RMAP.functions().items():
    plant(batched, "rmap", _name, _function)
PTE_BATCH = KernelcPteBatch(LIBRARY, submodule(batched, "internal"))
for _name, _batch_function in PTE_BATCH.functions().items():
    plant(batched, "internal", _name, _batch_function)


def helper_costs() -> dict[str, tuple[int, float]]:
    """Each C helper called in this process: (calls, microseconds per call)."""
    return LIBRARY.costs()


class Kernel(batched.Kernel):  # type: ignore[name-defined]
    """batched's kernel with the rmap helpers of the kernel tree LIBRARY_BUILD.tree."""

    name = "kernel-c"


__all__ = ["Kernel", "LIBRARY_BUILD", "helper_costs"]
