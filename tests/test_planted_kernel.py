"""A bug planted in a copy of the reference is found by `rmapfuzz replay --impl MODULE`.

This is the differential test end to end: the reference and an independent
copy run side by side, and one wrong kernel decision in the copy shows up as a
finding with a signature, while the clean copy passes.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from fuzz.canaries import load_package_copy, unload
from fuzz.front.cli import main
from machine.errors import OK

ROOT = Path(__file__).resolve().parent.parent
PINNED_FORK = str(ROOT / "tests/scenarios/33-fork-pinned-base.ops")


@pytest.fixture
def reference_copy():
    alias = "planted_reference"
    module = load_package_copy("reference", alias)
    yield module
    unload(alias)


def test_clean_copy_of_the_reference_passes(reference_copy, capsys) -> None:
    assert main(["replay", "--impl", "planted_reference", PINNED_FORK]) == 0


def test_fork_sharing_a_pinned_exclusive_page_is_found(reference_copy, capsys) -> None:
    memory = sys.modules["planted_reference.memory"]

    def dup_ignoring_pins(machine, folio, page, dst_mm, src_mm):
        machine.frames.page_anon_exclusive[page] = False  # planted: no pin check, always share
        machine.frames.page_mapcount[page] += 1
        return OK

    memory.folio_try_dup_anon_rmap_pte = dup_ignoring_pins
    assert main(["replay", "--impl", "planted_reference", PINNED_FORK]) == 1
    out = capsys.readouterr().out
    assert "signature: divergence:fork:" in out or "signature: oracle:fork:" in out
