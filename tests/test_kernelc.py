"""kernel-c: the kernel's own rmap helpers, extracted from a tree, compiled against the shim
and judged against the reference.

The tree is `$RMAPFUZZ_KERNEL_TREE` or Debian's linux-source in the cache (fetched on first
use); without gcc or a tree the tests skip, saying which is missing. Trees that differ from
it (a helper missing, a helper changed) are copies of its few extracted files.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from fuzz.errors import UsageError
from fuzz.kernelc.build import build, compiler_missing
from fuzz.kernelc.extract import PAGE_FLAGS_H, RMAP_C, RMAP_H, TARGETS, ExtractionError, extract, extract_function
from fuzz.kernelc.source import KERNEL_TREE_ENV, SOURCE_FILES, kernel_tree

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = sorted((ROOT / "tests" / "scenarios").glob("*.ops"))


def default_tree() -> str:
    """The tree kernel-c uses here, or skip naming what is missing."""
    missing = compiler_missing()
    if missing:
        pytest.skip(missing)
    try:
        return kernel_tree()
    except UsageError as error:
        pytest.skip(f"no kernel source for kernel-c: {error}")


@pytest.fixture(scope="module")
def tree() -> str:
    return default_tree()


def tree_copy(tree: str, into: Path, edit: Callable[[str], str], path: str = RMAP_H) -> str:
    """A second tree: tree's extracted files, with edit applied to path's text."""
    for name in SOURCE_FILES:
        target = into / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(os.path.join(tree, name), target)
        target.chmod(0o644)
    edited = into / path
    text = edited.read_text(encoding="utf-8")
    changed = edit(text)
    assert changed != text, "the edit changed nothing"
    edited.write_text(changed, encoding="utf-8")
    return str(into)


def rmapfuzz(*args: str, tree: str | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    if tree is not None:
        env.pop(KERNEL_TREE_ENV, None)
        args = (*args, "--kernel-tree", tree)
    return subprocess.run([sys.executable, "-m", "fuzz", *args], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=600, check=False)


# Extraction.

def test_extraction_finds_every_required_target_in_the_default_tree(tree: str) -> None:
    found = {function.target.name for function in extract(tree)}
    assert {target.name for target in TARGETS if not target.optional} <= found


def test_extraction_takes_the_function_verbatim_with_balanced_braces() -> None:
    source = "int x;\nstatic inline int f(int a,\n\t\tint b)\n{\n\tif (a) { return '}'; }\n\t/* } */\n\treturn b;\n}\n"
    line, text = extract_function(source, "f") or (0, "")
    assert line == 2
    assert text == source[source.index("static"):source.rindex("}") + 1]


def test_extraction_skips_prototypes_and_takes_the_first_definition() -> None:
    source = "static int f(int a);\nstatic int f(int a)\n{\n\treturn 1;\n}\nstatic int f(int a)\n{\n\treturn 2;\n}\n"
    line, text = extract_function(source, "f") or (0, "")
    assert line == 2 and "return 1" in text


def test_extraction_names_each_missing_function(tree: str, tmp_path: Path) -> None:
    renamed = tree_copy(tree, tmp_path, lambda text: text.replace("__folio_try_dup_anon_rmap(", "__folio_dup(")
                        .replace("folio_mm_id(const", "folio_mm_id_of(const"))
    with pytest.raises(ExtractionError) as raised:
        extract(renamed)
    message = str(raised.value)
    assert "__folio_try_dup_anon_rmap (include/linux/rmap.h)" in message
    assert "folio_mm_id (include/linux/rmap.h)" in message
    assert "shim.h" in message


def test_a_changed_kernel_type_fails_the_build_with_the_compiler_message(tree: str, tmp_path: Path) -> None:
    moved = tree_copy(tree, tmp_path, lambda text: text.replace("folio->_mm_id[idx] & MM_ID_MASK",
                                                                "folio->_mm_id_slots[idx] & MM_ID_MASK"))
    with pytest.raises(UsageError, match="_mm_id_slots"):
        build(moved)


# The implementation.

@pytest.mark.parametrize("path", SCENARIOS, ids=lambda path: path.stem)
def test_scenario_replays_clean_on_kernel_c(tree: str, path: Path) -> None:
    from fuzz.judge.runner import run_script
    from fuzz.script.ops import parse_file

    result = run_script(parse_file(str(path)), impl="kernel-c", ref="reference")
    assert result.findings == [], result.findings[0].report()


def test_kernel_c_equals_reference_on_random_sequences(tree: str) -> None:
    from fuzz.engine.generate import random_script
    from fuzz.judge.runner import run_script
    from fuzz.script.ops import ScriptError

    for seed in range(400):
        try:
            result = run_script(random_script(20_000_000 + seed, 40), "kernel-c", "reference", check_every_op=True)
        except ScriptError:
            continue
        assert result.findings == [], f"seed {20_000_000 + seed}:\n" + result.findings[0].report()


def test_a_helper_changed_in_a_second_tree_is_caught(tree: str, tmp_path: Path) -> None:
    # The MM_ID "maybe mapped shared" bit is not set when a second process takes slot 1.
    forgetful = tree_copy(tree, tmp_path, lambda text: text.replace(
        "\t\t/* Slot 0 certainly has mappings as well. */\n\t\tfolio->_mm_ids |= FOLIO_MM_IDS_SHARED_BIT;\n", ""))
    done = rmapfuzz("replay", "--impl", "kernel-c", str(ROOT / "tests/scenarios/59-mmid-shared-bit.ops"),
                    tree=forgetful)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "oracle:fork:mapcount" in done.stdout or "expect" in done.stdout, done.stdout


def test_a_kernel_warning_is_a_finding_naming_function_and_line(tree: str, tmp_path: Path) -> None:
    # The PMD dup passes one page short: __folio_rmap_sanity_checks warns.
    short = tree_copy(tree, tmp_path, lambda text: text.replace(
        "return __folio_try_dup_anon_rmap(folio, page, HPAGE_PMD_NR, dst_vma,",
        "return __folio_try_dup_anon_rmap(folio, page, HPAGE_PMD_NR - 1, dst_vma,"))
    line = next(number for number, text in enumerate(Path(short, RMAP_H).read_text().splitlines(), 1)
                if "VM_WARN_ON_FOLIO(nr_pages != HPAGE_PMD_NR, folio);" in text)
    done = rmapfuzz("replay", "--impl", "kernel-c", str(ROOT / "tests/scenarios/16-cow-fork-pmd.ops"), tree=short)
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"warning:fork:__folio_rmap_sanity_checks:{line}" in done.stdout, done.stdout


def test_kernel_c_without_a_compiler_exits_2_with_one_line_saying_how_to_install(tree: str) -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT), CC="no-such-cc")
    done = subprocess.run([sys.executable, "-m", "fuzz", "replay", "--impl", "kernel-c",
                           str(SCENARIOS[0])], capture_output=True, text=True, env=env, cwd=ROOT, check=False)
    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1
    assert "install gcc" in done.stderr


# The series under review (patch 8/9: folio_try_share_anon_rmap_ptes), rebuilt from the thread.

REVIEW_THREAD = Path("/work/shared/seed/review-folio_try_share_anon_rmap_ptes.txt")
PMD_HEAD_ONLY = "if (level == PGTABLE_LEVEL_PMD)\n nr_pages = 1;\n"


@pytest.fixture(scope="module")
def series_tree(tree: str) -> str:
    from fuzz.kernelc.series import patched_tree

    if not REVIEW_THREAD.exists():
        pytest.skip(f"no review thread at {REVIEW_THREAD}")
    return patched_tree(tree, REVIEW_THREAD.read_text(encoding="utf-8"), SOURCE_FILES)


def test_the_series_is_rebuilt_from_the_thread_and_applies(series_tree: str) -> None:
    functions = {function.target.name for function in extract(series_tree)}
    assert {"folio_try_share_anon_rmap_ptes", "ClearPagesAnonExclusive"} <= functions
    assert PMD_HEAD_ONLY in Path(series_tree, RMAP_H).read_text(encoding="utf-8")


def test_a_patch_that_does_not_apply_is_named(tree: str) -> None:
    from fuzz.kernelc.series import patched_tree

    patch = ("diff --git a/include/linux/rmap.h b/include/linux/rmap.h\n--- a/include/linux/rmap.h\n"
             "+++ b/include/linux/rmap.h\n@@ -10,3 +10,3 @@\n no such line\n-nor this\n+but this\n")
    with pytest.raises(UsageError, match="include/linux/rmap.h hunk at line 10"):
        patched_tree(tree, patch, SOURCE_FILES)


def test_every_scenario_passes_with_the_series(series_tree: str) -> None:
    done = rmapfuzz("replay", "--impl", "kernel-c", "--kernel-patch", str(REVIEW_THREAD), *map(str, SCENARIOS))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr


def pmd_mapped_thp_with_a_stale_tail_bit() -> tuple[object, int]:
    from fuzz.implementation import reference_kernel

    machine, kernel = reference_kernel(1024)
    assert kernel.mmap(0, 0x200000, 0x200000, "rw") == "ok"
    assert kernel.fault(0, 0x200000, 9) == "ok"
    folio = int(machine.frames.folio_order.argmax())
    machine.frames.page_anon_exclusive[folio + 5] = True   # a tail's bit, which the PMD path must not touch
    return machine, folio


@pytest.mark.parametrize("planted", [False, True], ids=["series", "pmd-clears-every-subpage"])
def test_the_series_pmd_share_clears_the_head_only(series_tree: str, tmp_path: Path, planted: bool) -> None:
    """The review's worry: the PMD path must keep clearing the head's bit only. Planted: the
    `nr_pages = 1` of the PMD level dropped. (The model keeps tail bits clear while a THP is
    PMD-mapped, and try_to_unmap splits the PMD first, so only this direct call sees it.)"""
    from kernelc import bridge

    tree = tree_copy(series_tree, tmp_path, lambda text: text.replace(PMD_HEAD_ONLY, "")) if planted else series_tree
    library = bridge.load_library(build(tree).path)
    machine, folio = pmd_mapped_thp_with_a_stale_tail_bit()
    assert bridge.try_share_anon_rmap_pmd(library, machine, folio) == 0
    frames = machine.frames
    assert not frames.page_anon_exclusive[folio]
    assert bool(frames.page_anon_exclusive[folio + 5]) is not planted


def test_nr_pages_zero_reaching_the_series_clearing_loop_is_a_warning(series_tree: str, tmp_path: Path) -> None:
    """The review's other worry: ClearPagesAnonExclusive's `for (;;) ... if (--nr == 0)` loop
    clears 2^32 pages when nr_pages == 0 reaches it. Planted: the PMD special case written as
    `nr_pages = level == PGTABLE_LEVEL_PMD;`, which zeroes every PTE batch after the sanity
    checks passed; the loop walks off the folio's window and the call is abandoned."""
    zeroed = tree_copy(series_tree, tmp_path, lambda text: text.replace(
        PMD_HEAD_ONLY, "nr_pages = level == PGTABLE_LEVEL_PMD;\n"))
    done = rmapfuzz("replay", "--impl", "kernel-c", str(ROOT / "tests/scenarios/64-ttu-mixed-exclusive-batch.ops"),
                    tree=zeroed)
    assert done.returncode == 1, done.stdout + done.stderr
    line = next(number for number, text in enumerate(Path(zeroed, PAGE_FLAGS_H).read_text().splitlines(), 1)
                if "ClearPageAnonExclusive(page);" in text and number > 1100)
    assert f"warning:try_to_unmap:ClearPagesAnonExclusive:{line}" in done.stdout, done.stdout
    assert "page outside the folio's window" in done.stdout


def test_bench_reports_microseconds_per_helper_call(tree: str) -> None:
    done = rmapfuzz("bench", "--impl", "kernel-c", "--sizes", "2M", "--fuzz-seconds", "2", "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(done.stdout)
    costs = result["helper_us_per_call"]
    assert costs["try_dup_anon_rmap_pmd"] > 0
    assert costs["remove_rmap_pmd"] > 0
    assert costs["folio_pte_batches"] > 0
    assert result["fuzz_exec_per_s"] > 0 and result["fuzz_exec_per_s_batched"] > 0   # the loop beside batched's


def test_selftest_finds_the_bugs_planted_in_the_c(series_tree: str) -> None:
    done = rmapfuzz("selftest", "--impl", "kernel-c", "--kernel-patch", str(REVIEW_THREAD), "--budget", "30",
                    "--canary", "share_nr_pages_zero", "--canary", "dup_pin_check_first_page_only", "--json")
    assert done.returncode in (0, 1), done.stdout + done.stderr   # 1: a reproducer longer than the table's bound
    rows = {row["bug"]: row for row in json.loads(done.stdout)["canaries"]}
    signature = rows["share_nr_pages_zero"]["signature"]
    assert signature.startswith("warning:") and ":ClearPagesAnonExclusive:" in signature, signature
    assert rows["dup_pin_check_first_page_only"]["found"]


def test_a_plant_of_the_series_is_skipped_on_a_tree_without_it(tree: str) -> None:
    from fuzz.kernelc.plants import PLANTS, planted_tree

    plant = next(plant for plant in PLANTS if plant.name == "share_nr_pages_zero")
    with pytest.raises(UsageError, match="plant share_nr_pages_zero"):
        planted_tree(plant, tree)


def test_nr_pages_mapped_is_checked_on_the_way_out(tree: str, tmp_path: Path) -> None:
    """The kernel keeps _nr_pages_mapped and the model does not: the bridge derives it from
    the mapcounts on the way in and checks the C kept it right on the way out."""
    stale = tree_copy(tree, tmp_path, lambda text: text.replace(
        "atomic_sub_return_relaxed(last, mapped) < ENTIRELY_MAPPED", "atomic_read(mapped) < ENTIRELY_MAPPED"),
        path=RMAP_C)
    done = rmapfuzz("replay", "--impl", "kernel-c", *map(str, SCENARIOS), tree=stale)
    assert done.returncode == 1, done.stdout + done.stderr
    assert ":folio_copy_out:" in done.stdout and "_nr_pages_mapped disagrees" in done.stdout, done.stdout


def test_a_kernel_tree_that_is_not_a_directory_is_exit_2() -> None:
    done = rmapfuzz("replay", "--impl", "kernel-c", str(SCENARIOS[0]), tree="/no/such/tree")
    assert done.returncode == 2
    assert "--kernel-tree /no/such/tree: not a directory" in done.stderr


# PTE batching: folio_pte_batch_flags() and arm64's accessors on the machine's tables.

def test_the_trees_descriptor_bits_are_the_machines(tree: str) -> None:
    """The machine encodes arm64's descriptors; the tree's pgtable-hwdef.h and pgtable-prot.h
    say what they are. A tree that moved a bit fails here, naming it."""
    import kernelc
    from kernelc.bridge import pte_bits
    from machine import pgtable

    for name, value in pte_bits(kernelc.LIBRARY).items():
        if name == "PTE_ADDR_LOW":   # the model's physical addresses have 48 bits
            name, value = "PTE_ADDR_MASK", value & ((1 << 48) - 1)
        assert getattr(pgtable, name) == value, f"machine/pgtable.py's {name} is not the tree's {value:#x}"


def test_folio_pte_batch_reads_the_machines_table_in_place(tree: str) -> None:
    """The C is handed the table itself: page-aligned (pte_batch_hint reads the block offset
    from the address), and the entries the caller batches are the table's."""
    import kernelc
    from machine import Machine
    from machine.errors import MachineBug
    from machine.pgtable import PAGE_SIZE
    from tests.pte_values import fault_pte

    machine = Machine(4096)
    folio = machine.frames.folio_alloc(4)
    mm = machine.mm_alloc()
    for index in range(16):
        machine.set_pte_at(mm, 0x200000 + index * PAGE_SIZE, fault_pte(folio + index))
    table = mm.pte_table(0x200000)
    assert table is not None and table.entries.__array_interface__["data"][0] % PAGE_SIZE == 0
    ptes = machine.ptes_get(mm, 0x200000, 16)
    batches = kernelc.PTE_BATCH.folio_pte_batch(machine, mm, 0x200000, ptes, 0)
    assert list(batches.nr_pages) == [16]
    ptes[3] = fault_pte(folio + 5)
    with pytest.raises(MachineBug, match="not the table's"):
        kernelc.PTE_BATCH.folio_pte_batch(machine, mm, 0x200000, ptes, 0)


def test_a_batch_past_the_folio_end_in_a_second_tree_is_caught(tree: str, tmp_path: Path) -> None:
    from fuzz.kernelc.extract import INTERNAL_H

    unbounded = tree_copy(tree, tmp_path, lambda text: text.replace(
        "max_nr = min_t(unsigned long, max_nr,\n\t\t       folio_pfn(folio) + folio_nr_pages(folio) - pte_pfn(pte));",
        ""), path=INTERNAL_H)
    done = rmapfuzz("replay", "--impl", "kernel-c", *map(str, SCENARIOS), tree=unbounded)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "warning:fork:__folio_rmap_sanity_checks:" in done.stdout, done.stdout   # the batch's rmap call
