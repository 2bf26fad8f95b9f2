"""The kernel bridge against Debian's real arm64 kernel under qemu.

Skipped, with the missing tool named, where qemu or the cross compiler is not
installed (`.ci/run` installs both). Each test boots the guest once for all
its scripts: a boot is a few seconds.
"""

from __future__ import annotations

import os
import subprocess

import pytest

from fuzz.errors import UsageError
from fuzz.front import cli
from fuzz.kernel import guest
from fuzz.kernel.bridge import AGREE, DEVIATION, DISAGREE, UNSUPPORTED, check_scripts, judge
from fuzz.kernel.model import run_model
from fuzz.kernel.observe import parse_guest_output
from fuzz.script.ops import parse_file, parse_script

SCENARIOS = os.path.join(os.path.dirname(__file__), "scenarios")
MISSING = guest.missing_tools(("qemu-system-aarch64", guest.CROSS_CC, "apt-get", "dpkg-deb"))
pytestmark = pytest.mark.skipif(bool(MISSING), reason=f"{', '.join(MISSING)} not installed "
                                                      "(apt-get install qemu-system-arm gcc-aarch64-linux-gnu)")

FORK_MTHP = "mmap P0 0x200000 64K\nfault P0 0x200000 order=4\nfork P0\nwrite P1 0x203000 9\n"


@pytest.fixture(scope="module")
def debian_kernel() -> guest.KernelBuild:
    try:
        return guest.debian_kernel()
    except UsageError as error:     # no route to Debian's archive: nothing to boot
        pytest.skip(f"Debian's arm64 kernel could not be fetched: {error}")


def scenario(name: str):
    return parse_file(os.path.join(SCENARIOS, name))


@pytest.fixture(scope="module")
def scenario_report(debian_kernel):
    names = ["06-fault-pmd.ops", "14-cow-fork-base.ops", "15-cow-fork-mthp.ops", "12-write-read.ops",
             "39-reclaim-base-swapin.ops", "32-pin-rw-shared-cow.ops", "51-split-pmd.ops",
             "188-huge-zero-pins.ops"]
    return names, check_scripts([scenario(name) for name in names], debian_kernel)


def test_scenarios_agree_or_deviate_by_name(scenario_report):
    names, report = scenario_report
    labels = dict(zip(names, (verdict.label for verdict in report.verdicts), strict=True))
    assert labels == {
        "06-fault-pmd.ops": AGREE, "14-cow-fork-base.ops": AGREE, "15-cow-fork-mthp.ops": AGREE,
        "12-write-read.ops": AGREE, "39-reclaim-base-swapin.ops": AGREE,
        "32-pin-rw-shared-cow.ops": AGREE, "51-split-pmd.ops": AGREE,
        "188-huge-zero-pins.ops": UNSUPPORTED}
    assert report.kernel_release.endswith("-arm64") and report.kernel_version in report.kernel_release
    assert not report.unexplained


def test_the_kernel_sides_with_the_reference_against_a_planted_bug(debian_kernel):
    script = parse_script(FORK_MTHP, "fork-mthp.ops")
    canary = check_scripts([script], debian_kernel, impl="fuzz.canaries.fork_wrprotect_first_only")
    assert canary.verdicts[0].status == DISAGREE
    # the entries the canary left writable also break the parent's block, which the kernel keeps folded
    assert canary.verdicts[0].line == 3
    assert canary.verdicts[0].difference["field"] in ("writable", "exclusive", "cont")
    assert any(line.endswith("writable: model True, kernel False") for line in canary.verdicts[0].differences)
    assert check_scripts([script], debian_kernel).verdicts[0].status == AGREE


def test_a_custom_kernel_image_gives_the_same_verdicts(debian_kernel, scenario_report):
    names, report = scenario_report
    custom = guest.custom_kernel(debian_kernel.image, debian_kernel.modules)
    again = check_scripts([scenario(name) for name in names], custom)
    assert [verdict.label for verdict in again.verdicts] == [verdict.label for verdict in report.verdicts]
    assert again.kernel_version == "custom"


def test_a_deviation_stops_the_comparison_at_its_op(debian_kernel):
    script = parse_script("mmap P0 0x200000 32K\nmmap P0 0x208000 32K\nfault P0 0x200000 order=4\n"
                          "write P0 0x200000 3\n", "merged.ops")
    verdict = check_scripts([script], debian_kernel).verdicts[0]
    assert (verdict.status, verdict.deviations, verdict.line) == (DEVIATION, ["vma-merge"], 3)
    assert verdict.ops_compared == 3


def test_an_exported_reproducer_runs_as_init_and_agrees_with_the_model(debian_kernel, tmp_path):
    path = tmp_path / "fork-mthp.ops"
    path.write_text(FORK_MTHP)
    assert cli.main(["export", str(path), "-o", str(tmp_path)]) == 0
    binary = tmp_path / "fork-mthp"
    subprocess.run([guest.CROSS_CC, *guest.CC_FLAGS, "-o", str(binary), str(tmp_path / "fork-mthp.c")], check=True)
    booted = guest.boot(debian_kernel, [], str(tmp_path), timeout=120, init=binary.read_bytes())
    kernel = parse_guest_output(booted.output.splitlines()).scripts["fork-mthp.ops"]
    assert kernel.complete and len(kernel.observations) == 4
    assert judge(run_model(parse_script(FORK_MTHP, str(path))), kernel).status == AGREE
