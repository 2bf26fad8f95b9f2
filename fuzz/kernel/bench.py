"""`rmapfuzz bench --kernel`: how fast generated scripts are checked against the real kernel.

One campaign of `kernel --fuzz` without minimisation, timed by part: drawing
the scripts and running them on the model (host), the guest's boot (until the
runtime starts, by the guest's own clock), the scripts in the guest, and the
whole call, boot included.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

from fuzz.implementation import REFERENCE_IMPL

from . import guest
from .bridge import check_scripts
from .campaign import draw_scripts


@dataclass
class KernelBench:
    """The figures of one kernel bench run."""

    kernel_version: str
    kernel_release: str
    nr_scripts: int
    draw_seconds: float        # drawing the scripts (the decoder runs the reference)
    check_seconds: float       # check_scripts: the model runs, the boot and the guest's scripts
    boot_seconds: float        # guest clock when the runtime started: kernel boot
    guest_script_seconds: float  # guest clock spent in the scripts themselves
    qemu_seconds: float        # the qemu process, start to power-off
    counts: dict[str, int]

    @property
    def total_seconds(self) -> float:
        return self.draw_seconds + self.check_seconds

    @property
    def scripts_per_second(self) -> float:
        return self.nr_scripts / self.total_seconds if self.total_seconds else 0.0

    def to_json(self) -> dict[str, object]:
        return dict(asdict(self), total_seconds=round(self.total_seconds, 2),
                    scripts_per_second=round(self.scripts_per_second, 1))

    def format(self) -> str:
        return (f"kernel {self.kernel_release} ({self.kernel_version}): {self.nr_scripts} generated scripts "
                f"in {self.total_seconds:.1f} s, boot included ({self.scripts_per_second:.1f} scripts/s)\n"
                f"  draw {self.draw_seconds:.1f} s, check {self.check_seconds:.1f} s (qemu {self.qemu_seconds:.1f} s: "
                f"boot {self.boot_seconds:.1f} s, scripts {self.guest_script_seconds:.1f} s)\n"
                f"  verdicts: " + ", ".join(f"{count} {label}" for label, count in sorted(self.counts.items())))


def bench_kernel(nr_scripts: int, seed: int, kernel: guest.KernelBuild, impl: str = REFERENCE_IMPL) -> KernelBench:
    """Draw nr_scripts realisable scripts from seed and check them all in one boot, timed."""
    started = time.perf_counter()
    scripts = draw_scripts(nr_scripts, seed, impl)
    drawn = time.perf_counter()
    report = check_scripts(scripts, kernel, impl=impl)
    checked = time.perf_counter()
    return KernelBench(report.kernel_version, report.kernel_release, len(scripts), drawn - started,
                       checked - drawn, report.guest_boot_seconds, report.guest_script_seconds,
                       report.boot_seconds, dict(report.counts()))
