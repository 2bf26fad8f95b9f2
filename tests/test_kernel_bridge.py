"""The kernel bridge without a kernel: projection, the guest output's parser, the comparison,
realisation, the deviation matchers, export and the CLI's errors.

The comparison is checked the way an oracle is: the model's own observation, rewritten
as the guest runtime would print it (with other pfns), agrees with the model, and each
planted difference is reported on its field, or explained by exactly its deviation.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from fuzz.front import cli
from fuzz.kernel import guest
from fuzz.kernel.bridge import AGREE, DISAGREE, ERROR, errno_name, export_script, judge
from fuzz.kernel.deviations import DEVIATIONS, OpContext, explain
from fuzz.kernel.model import run_model
from fuzz.kernel.observe import (
    MARKER,
    PRESENT,
    SWAP,
    ZERO,
    Difference,
    GuestScript,
    PageView,
    compare_observations,
    parse_guest_output,
)
from fuzz.kernel.realise import GUEST_KINDS, UnsupportedScript, export_c, guest_script_text, realise
from fuzz.script.ops import parse_file, parse_script

SCENARIOS = os.path.join(os.path.dirname(__file__), "scenarios")

COW_THP = """\
mmap P0 0x200000 2M
fault P0 0x200000 order=9
fork P0
write P0 0x201000 7
"""


def model_of(text: str):
    return run_model(parse_script(text, "test.ops"))


def guest_lines(observation, offset: int = 0x10000) -> list[str]:
    """The runtime's P lines for an observation, every pfn, head and slot moved by offset."""
    lines = []
    for (process, addr), view in sorted(observation.items()):
        if view.state == SWAP:
            lines.append(f"P {process} {addr:x} s {view.slot + offset:x} {int(view.exclusive)} {int(view.uffd_wp)} 0")
        elif view.state == MARKER:
            lines.append(f"P {process} {addr:x} s 1 0 {int(view.uffd_wp)} 31")
        elif view.state == PRESENT:
            fields = (view.pfn + offset, view.head + offset)
            flags = (view.order, int(view.level == "pmd"), int(view.cont), int(view.dirty), int(view.young),
                     int(view.writable), int(view.exclusive), view.mapcount, view.refcount, view.pincount,
                     int(view.shared), 0)
            lines.append(f"P {process} {addr:x} p {fields[0]:x} {fields[1]:x} "
                         + " ".join(str(flag) for flag in flags) + f" {view.value:x}"
                         + f" {int(view.lazyfree)} {int(view.folio_dirty)} {int(view.file)} {int(view.uffd_wp)}")
    return lines


def guest_script_of(run, rewrite=lambda index, lines: lines) -> GuestScript:
    """What the runtime would print if the kernel did exactly what the model did (pfns moved)."""
    output = ["K 7.2.13-test", "S 00000"]
    previous: set[tuple[int, int]] = set()
    for index, step in enumerate(run.steps):
        output.append(f"R {index} {0 if step.result == 'ok' else 22}")
        for key in sorted(previous - step.after.keys()):
            output.append(f"P {key[0]} {key[1]:x} n")
        output.extend(rewrite(index, guest_lines(step.after)))
        output.append(f"E {index}")
        previous = set(step.after)
    output.append("Z 00000")
    return parse_guest_output(output).scripts["00000"]


# ---------------------------------------------------------------------------
# Projection and parsing


def test_project_shows_a_pmd_thp_page_by_page():
    run = model_of("mmap P0 0x200000 2M\nfault P0 0x200000 order=9\n")
    after = run.steps[-1].after
    assert len(after) == 512
    head = after[(0, 0x200000)]
    tail = after[(0, 0x3ff000)]
    assert head.level == tail.level == "pmd" and head.order == 9
    assert tail.pfn == head.pfn + 511 and tail.head == head.pfn
    assert head.exclusive and tail.exclusive          # the head's bit, as SPEC §4 reports it
    assert head.refcount == 1 and head.mapcount == 1


def test_project_leaves_out_pages_no_mmap_named():
    run = model_of("mmap P0 0x200000 64K\nfault P0 0x200000 order=4\nmunmap P0 0x200000 4K\n")
    assert set(run.steps[-1].after) == {(0, 0x200000 + index * 0x1000) for index in range(1, 16)}


def test_parse_rebuilds_each_op_from_delta_lines():
    run = parse_guest_output([
        "K 7.2.13", "S a", "R 0 0", "P 0 200000 n", "E 0",
        "R 1 0", "P 0 200000 p 45a00 45a00 0 0 0 1 1 1 1 1 1 0 0 0 7 0 1 0 0", "E 1",
        "R 2 0", "N 1 90", "P 1 200000 s 2a 0 0 0", "E 2",
        "R 3 0", "G 1", "E 3", "Z a", "D"])
    script = run.scripts["a"]
    assert run.kernel_release == "7.2.13" and run.finished and script.complete
    assert script.results == [0, 0, 0, 0]
    assert script.observations[0] == {}
    assert script.observations[1][(0, 0x200000)].value == 7
    assert script.observations[1][(0, 0x200000)].folio_dirty and not script.observations[1][(0, 0x200000)].lazyfree
    assert script.observations[2][(1, 0x200000)] == PageView(SWAP, slot=0x2a, exclusive=False)
    assert (1, 0x200000) not in script.observations[3]
    assert (0, 0x200000) in script.observations[3]


def test_parse_reads_uffd_wp_bits_and_markers():
    run = parse_guest_output([
        "S a", "R 0 0", "P 0 200000 p 45a00 45a00 0 0 0 1 1 0 1 1 1 0 0 0 7 0 1 0 1",
        "P 0 201000 s 2a 1 1 0", "P 0 202000 s 1 0 1 31", "E 0", "R 1 1000", "E 1", "Z a"])
    observation = run.scripts["a"].observations[0]
    assert observation[(0, 0x200000)].uffd_wp and not observation[(0, 0x200000)].writable
    assert observation[(0, 0x201000)] == PageView(SWAP, slot=0x2a, exclusive=True, uffd_wp=True)
    assert observation[(0, 0x202000)] == PageView(MARKER, uffd_wp=True)
    assert errno_name(run.scripts["a"].results[1]) == "UFFD"


def test_parse_reads_the_zero_page_and_runtime_failures():
    run = parse_guest_output(["S a", "R 0 0", "P 0 200000 p 4150b 4150b 0 0 0 0 1 0 0 0 1 0 0 1 0 0 0 0 0", "E 0",
                              "X op 1: worker P0 died or hung", "Z a"])
    assert run.scripts["a"].observations[0][(0, 0x200000)].state == ZERO
    assert run.scripts["a"].failure.startswith("op 1")


# ---------------------------------------------------------------------------
# Comparison


def test_the_model_agrees_with_itself_under_other_pfns():
    run = model_of(COW_THP)
    assert judge(run, guest_script_of(run)).status == AGREE


def test_comparison_names_identity_not_pfns():
    run = model_of(COW_THP)
    after = run.steps[-1].after
    moved = {key: view._replace(pfn=view.pfn + 7, head=view.head + 7) for key, view in after.items()}
    assert compare_observations(after, moved) == []
    # P1's copy of 0x201000 made the same page as P0's: a relation differs.
    p0 = moved[(0, 0x201000)]
    moved[(1, 0x201000)] = moved[(1, 0x201000)]._replace(pfn=p0.pfn, head=p0.head)
    fields = {(d.process, d.field) for d in compare_observations(after, moved) if d.addr == 0x201000}
    assert (1, "page") in fields and (1, "folio") in fields


@pytest.mark.parametrize("field, value", [
    ("exclusive", False), ("refcount", 3), ("mapcount", 5), ("young", False), ("writable", False),
    ("value", 8), ("order", 4), ("pincount", 1), ("lazyfree", True), ("folio_dirty", True)])
def test_a_planted_difference_is_reported_on_its_field(field, value):
    run = model_of(COW_THP)

    def plant(index, lines):
        if index != 3:
            return lines
        return [line for line in lines if not line.startswith("P 0 201000 ")] + guest_lines(
            {(0, 0x201000): run.steps[3].after[(0, 0x201000)]._replace(**{field: value})})

    verdict = judge(run, guest_script_of(run, plant))
    assert verdict.status == DISAGREE
    assert verdict.difference["field"] == field
    assert (verdict.difference["process"], verdict.difference["addr"]) == (0, 0x201000)
    assert verdict.line == 4


def test_a_result_difference_is_a_disagreement():
    run = model_of("mmap P0 0x200000 2M\nmunmap P0 0x200000 4K\n")
    kernel = guest_script_of(run)
    kernel.results[1] = 22
    verdict = judge(run, kernel)
    assert verdict.status == DISAGREE and verdict.difference["field"] == "result"


def test_a_missing_observation_is_an_error():
    run = model_of(COW_THP)
    kernel = guest_script_of(run)
    del kernel.observations[2:]
    del kernel.results[2:]
    verdict = judge(run, kernel)
    assert verdict.status == ERROR and verdict.line == 3


# ---------------------------------------------------------------------------
# Deviations: each explains its own pattern and nothing else


def context_of(run, index, kernel_after):
    step = run.steps[index]
    return OpContext(step.op, step.before, step.after, run.steps[index - 1].after if index else {},
                     kernel_after, step.vmas)


def test_the_models_zero_page_is_compared_with_the_kernels_by_what_it_is():
    run = model_of("mmap P0 0x200000 2M\nwrite P0 0x300000 1\nread P0 0x200000\nfork P0\n")
    model = run.steps[3].after
    assert model[(0, 0x200000)].state == model[(1, 0x200000)].state == ZERO
    assert model[(0, 0x200000)].young and not model[(1, 0x200000)].young
    kernel = {key: view._replace(pfn=77, head=77) for key, view in model.items()}
    assert compare_observations(model, kernel) == []      # no identity: every zero page is one page
    older = dict(kernel)
    older[(0, 0x200000)] = older[(0, 0x200000)]._replace(young=False, writable=True)
    assert [(d.field, d.model, d.kernel) for d in compare_observations(model, older)] == [
        ("young", True, False), ("writable", False, True)]
    nothing = {key: view for key, view in kernel.items() if key[0] == 1}
    difference = compare_observations(model, nothing)[0]
    assert (difference.field, difference.model, difference.kernel) == ("state", ZERO, "none")
    assert explain(difference, context_of(run, 3, nothing)) is None   # no deviation explains a zero page


def test_nothing_explains_a_contpte_difference_any_more():
    run = model_of("mmap P0 0x200000 64K\nfault P0 0x200000 order=4\n")
    after = run.steps[1].after
    unfolded = {key: view._replace(cont=False, young=False) for key, view in after.items()}
    context = context_of(run, 1, unfolded)
    assert {explain(d, context) for d in compare_observations(after, unfolded)} == {None}


def test_nothing_explains_a_result_code_any_more():
    run = model_of("mmap P0 0x200000 2M\nmmap P0 0x200000 4K\n")
    context = context_of(run, 1, run.steps[1].after)
    assert run.steps[1].result == "EEXIST"     # MAP_FIXED_NOREPLACE's answer (docs/model.md, resolution 24)
    assert explain(Difference(0, 0x200000, "result", "EINVAL", "EEXIST"), context) is None


def test_no_deviation_explains_a_split_any_more():
    run = model_of("mmap P0 0x200000 64K\nfault P0 0x200000 order=4\nwrite P0 0x200000 1\n"
                   "split P0 0x200000 order=0\n")
    old = {key: view._replace(young=False) for key, view in run.steps[3].after.items()}
    # an old PTE after a split is arm64's LPA2 bug (docs/model.md, resolution 23): nothing explains it
    assert explain(Difference(0, 0x200000, "young", True, False), context_of(run, 3, old)) is None
    assert explain(Difference(0, 0x200000, "state", PRESENT, ZERO), context_of(run, 3, old)) is None


def test_every_deviation_is_documented_in_docs_model():
    with open(os.path.join(os.path.dirname(__file__), "..", "docs", "model.md"), encoding="utf-8") as stream:
        text = stream.read()
    for deviation in DEVIATIONS:
        assert f"`deviation:{deviation.id}`" in text, deviation.id


# ---------------------------------------------------------------------------
# Realisation and export


@pytest.mark.parametrize("line, reason", [
    ("try_to_unmap P0 0x200000", "GUP-fast"),
    ("pin P0 0x200000 1 ro", "GUP_TEST"),
    ("pin P0 0x0 1 rw", "address 0"),
])
def test_ops_without_a_faithful_realisation_are_refused(line, reason):
    run = run_model(parse_script(f"mmap P0 0x0 4M\nfault P0 0x200000 order=9\n{line}\n", "t.ops"))
    with pytest.raises(UnsupportedScript, match=reason) as error:
        realise(run)
    assert error.value.unsupported.line == 3


def test_an_enomem_path_and_a_shared_reclaim_are_refused():
    with pytest.raises(UnsupportedScript, match="ENOMEM"):
        realise(model_of("frames 1\nmmap P0 0x200000 2M\nwrite P0 0x200000 1\nwrite P0 0x201000 2\n"))
    with pytest.raises(UnsupportedScript, match="more than one process"):
        realise(model_of("mmap P0 0x200000 2M\nwrite P0 0x200000 1\nfork P0\nreclaim P0 0x200000\n"))
    # dontneed's ENOMEM is a hole, not an allocation: realisable.
    assert realise(model_of("mmap P0 0x200000 8K\ndontneed P0 0x200000 16K\n"))


def test_a_reclaim_split_only_for_want_of_an_aligned_slot_run_is_refused():
    fallback = ("frames 16\nmmap P0 0x200000 2M\nfault P0 0x200000 order=3\nreclaim P0 0x200000\n"
                "read P0 0x201000\nfault P0 0x300000 order=3\nwrite P0 0x302000 9\nreclaim P0 0x300000\n")
    with pytest.raises(UnsupportedScript, match="aligned run of slots") as error:
        realise(model_of(fallback))
    assert error.value.unsupported.line == 8
    # Swapped whole, discarded (lazyfree), refused (pinned) or partially mapped: realisable.
    assert realise(model_of("mmap P0 0x200000 2M\nfault P0 0x200000 order=4\nreclaim P0 0x200000\n"))
    assert realise(model_of("mmap P0 0x200000 2M\nfault P0 0x200000 order=4\nfree P0 0x200000 64K\n"
                            "reclaim P0 0x200000\n"))
    assert realise(model_of("mmap P0 0x200000 2M\nfault P0 0x200000 order=4\npin P0 0x200000 1 rw\n"
                            "reclaim P0 0x200000\n"))
    assert realise(model_of("mmap P0 0x200000 2M\nfault P0 0x200000 order=4\nwrite P0 0x201000 1\n"
                            "dontneed P0 0x20f000 4K\nreclaim P0 0x200000\n"))


def test_a_reclaim_madv_pageout_splits_or_skips_is_realised():
    # madvise_cold_or_pageout_pte_range's own split (the batch is shorter than the folio) is not
    # the swap-out fallback, even where no aligned slot run was left.
    split_by_wp = ("frames 16\nmmap P0 0x200000 2M\nfault P0 0x200000 order=3\nreclaim P0 0x200000\n"
                   "read P0 0x201000\nfault P0 0x300000 order=3\nwrite P0 0x302000 9\n"
                   "uffd P0 0x300000 32K\nwp P0 0x304000 4K on\nreclaim P0 0x300000\n")
    run = model_of(split_by_wp)
    assert run.steps[-1].after[(0, 0x302000)].state == "swap"
    assert run.steps[-1].after[(0, 0x300000)].state == "zero"
    assert realise(run)
    assert realise(model_of("mmap P0 0x200000 64K\nfault P0 0x200000 order=4\nwrite P0 0x201000 7\n"
                            "mprotect P0 0x208000 32K ro\nreclaim P0 0x200000\n"))
    # A folio fork shares, in a batch shorter than it: skipped by both, so realisable; in one
    # batch the model reclaims it everywhere where MADV_PAGEOUT skips it: refused.
    skipped = model_of("mmap P0 0x200000 16K\nfault P0 0x200000 order=2\nfork P0\n"
                       "mprotect P0 0x202000 8K ro\nreclaim P0 0x200000\n")
    assert skipped.steps[-1].after == skipped.steps[-1].before
    assert realise(skipped)
    with pytest.raises(UnsupportedScript, match="more than one process"):
        realise(model_of("mmap P0 0x200000 16K\nfault P0 0x200000 order=2\nfork P0\nreclaim P0 0x200000\n"))


def test_guest_ops_carry_every_argument():
    ops = realise(model_of(COW_THP + "pin P0 0x200000 2 rw\nunpin 0\nsplit P1 0x200000 order=4\nexit P1\n"))
    assert guest_script_text(ops).splitlines() == [
        f"{GUEST_KINDS['mmap']} 0 2097152 2097152 0 1", f"{GUEST_KINDS['fault']} 0 2097152 0 0 9",
        f"{GUEST_KINDS['fork']} 0 0 0 0 1", f"{GUEST_KINDS['write']} 0 2101248 0 7 0",
        f"{GUEST_KINDS['pin']} 0 2097152 8192 0 1", f"{GUEST_KINDS['unpin']} 0 0 0 0 0",
        f"{GUEST_KINDS['split']} 1 2097152 0 0 4", f"{GUEST_KINDS['exit']} 1 0 0 0 0"]


def test_split_pmd_is_realised_with_its_address():
    """split_pmd goes to the runtime as RF_SPLIT_PMD at the op's address (the runtime reads
    the PMD itself and splits it by a VMA split and merge inside it)."""
    ops = realise(model_of(COW_THP + "split_pmd P0 0x201000\n"))
    assert guest_script_text(ops).splitlines()[-1] == f"{GUEST_KINDS['split_pmd']} 0 2101248 0 0 0"


def test_shmem_files_are_realised_with_their_file_offset_and_sharing():
    ops = realise(model_of("file F1 16K shmem\nmmap P0 0x200000 16K ro file=F1 offset=0x1000 shared\n"
                           "read P0 0x200000\nsync F1\n"))
    assert guest_script_text(ops).splitlines() == [
        f"{GUEST_KINDS['file']} 0 0 16384 0 1", f"{GUEST_KINDS['mmap']} 0 2097152 16384 4096 {0 | 1 << 1 | 2 << 2}",
        f"{GUEST_KINDS['read']} 0 2097152 0 0 0", f"{GUEST_KINDS['sync']} 0 0 0 0 1"]


def test_regular_files_are_realised_on_the_guests_disk():
    ops = realise(model_of("file F0 16K\nfile F1 8K shmem\nmmap P0 0x200000 16K file=F0 shared\n"
                           "write P0 0x200000 3\nsync F0\nreclaim P0 0x200000\nread P0 0x200000\n"))
    lines = guest_script_text(ops).splitlines()
    assert lines[:2] == [f"{GUEST_KINDS['file']} 0 0 16384 1 0", f"{GUEST_KINDS['file']} 0 0 8192 0 1"]
    # An anonymous fault of order K beside files, and a file fault that finds order 0: realised.
    assert realise(model_of("file F0 16K shmem\nmmap P0 0x400000 16K file=F0 shared\nmmap P0 0x200000 64K\n"
                            "fault P0 0x200000 order=4\nfault P0 0x400000 order=0\n"))
    assert realise(model_of("file F0 4K shmem\nmmap P0 0x200000 4K file=F0 shared\nfault P0 0x200000 order=4\n"))


def test_large_page_cache_folios_sigbus_and_pageout_the_kernel_skips_are_refused():
    with pytest.raises(UnsupportedScript, match="SIGBUS"):
        realise(model_of("file F0 4K shmem\nmmap P0 0x200000 16K file=F0 shared\nread P0 0x201000\n"))
    with pytest.raises(UnsupportedScript, match="order-4 shmem folio.*shmem_enabled") as error:
        realise(model_of("file F0 64K shmem\nmmap P0 0x200000 64K file=F0 shared\nfault P0 0x200000 order=4\n"))
    assert error.value.unsupported.line == 3
    # The private mapping's fault COWs: the large folio is made in the cache, unmapped.
    with pytest.raises(UnsupportedScript, match="order-2 regular-file folio.*readahead"):
        realise(model_of("file F0 16K\nmmap P0 0x200000 16K file=F0\nfault P0 0x200000 order=2\n"))
    with pytest.raises(UnsupportedScript, match="folio_mapcount != folio_nr_pages"):
        realise(model_of("file F0 16K\nmmap P0 0x200000 16K file=F0 shared\nmmap P0 0x400000 16K file=F0\n"
                         "read P0 0x200000\nread P0 0x400000\nreclaim P0 0x400000\n"))
    dirty = "file F0 16K{}\nmmap P0 0x200000 16K file=F0 shared\nwrite P0 0x200000 3\nreclaim P0 0x200000\n"
    with pytest.raises(UnsupportedScript, match="dirty regular-file folio to the flushers"):
        realise(model_of(dirty.format("")))
    # A forked child's mapping is its parent's: the file is found through the fork.
    with pytest.raises(UnsupportedScript, match="dirty regular-file folio"):
        realise(model_of("file F0 16K\nmmap P0 0x200000 16K file=F0\nwrite P0 0x201000 1\nread P0 0x200000\n"
                         "fork P0\nexit P0\nmmap P1 0x400000 16K file=F0 shared\nwrite P1 0x402000 2\n"
                         "reclaim P1 0x402000\n"))
    assert realise(model_of(dirty.format(" shmem")))    # shmem_writeout swaps it, as the model does
    assert realise(model_of(dirty.format("").replace("reclaim", "sync F0\nreclaim")))   # clean: dropped


def test_parse_reads_a_page_cache_folio():
    run = parse_guest_output(["S a", "R 0 0", "P 0 200000 p 45a00 45a00 0 0 0 0 1 1 0 1 2 0 0 0 7 0 0 1 0",
                              "E 0", "Z a"])
    assert run.scripts["a"].observations[0][(0, 0x200000)].file


def test_parse_takes_a_filesystems_private_reference_off_the_refcount():
    run = parse_guest_output(["S a", "R 0 0", "P 0 200000 p 45a00 45a00 0 0 0 1 1 1 0 1 3 0 0 0 5 0 1 1 0 1",
                              "P 0 201000 p 45a01 45a01 0 0 0 0 1 0 0 1 2 0 0 0 6 0 0 1 0 0", "E 0", "Z a"])
    observation = run.scripts["a"].observations[0]
    assert observation[(0, 0x200000)].refcount == 2 and observation[(0, 0x201000)].refcount == 2


def test_guest_kinds_match_the_runtime_enum():
    with open(guest.RUNTIME_SOURCE, encoding="utf-8") as stream:
        source = stream.read()
    enum = source[source.index("enum rf_op_kind {"):source.index("};", source.index("enum rf_op_kind {"))]
    names = [word.strip().strip(",") for word in enum.split("{")[1].replace("\n", " ").split(",")]
    assert [name for name in names if name and name != "RF_NR_KINDS"] == [
        f"RF_{name.upper()}" for name, _kind in sorted(GUEST_KINDS.items(), key=lambda item: item[1])]


def test_export_writes_one_commented_row_per_op():
    script = parse_script(COW_THP, "cow.ops")
    text = export_c(script, realise(run_model(script)), "/* runtime */", "0.1.0")
    assert "/* line 4: write P0 0x201000 7 */" in text
    assert "{ RF_WRITE, 0, 0x201000, 0x0, 0x7, 0 }," in text
    assert "run_script(\"cow.ops\", script" in text


@pytest.mark.skipif(shutil.which(guest.CROSS_CC) is None, reason=f"{guest.CROSS_CC} is not installed")
def test_exported_reproducer_compiles_standalone(tmp_path):
    path = tmp_path / "cow.ops"
    path.write_text(COW_THP)
    assert cli.main(["export", str(path), "-o", str(tmp_path)]) == 0
    binary = tmp_path / "cow"
    done = subprocess.run([guest.CROSS_CC, *guest.CC_FLAGS, "-Werror", "-o", str(binary), str(tmp_path / "cow.c")],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr


@pytest.mark.skipif(shutil.which(guest.CROSS_CC) is None, reason=f"{guest.CROSS_CC} is not installed")
def test_runtime_compiles_as_init_without_warnings(tmp_path):
    done = subprocess.run([guest.CROSS_CC, *guest.CC_FLAGS, "-Wextra", "-Werror", "-DRF_INIT", "-o",
                           str(tmp_path / "init"), guest.RUNTIME_SOURCE], capture_output=True, text=True,
                          check=False)
    assert done.returncode == 0, done.stderr


# ---------------------------------------------------------------------------
# The CLI


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    return err.strip()


def test_export_of_an_unrealisable_op_is_exit_2_naming_the_line(tmp_path, capsys):
    path = tmp_path / "ttu.ops"
    path.write_text("mmap P0 0x200000 2M\nwrite P0 0x200000 1\ntry_to_unmap P0 0x200000\n")
    assert cli.main(["export", str(path)]) == 2
    assert one_error_line(capsys).startswith(f"rmapfuzz: {path}:3: cannot export 'try_to_unmap P0 0x200000'")


def test_export_of_several_files_needs_an_output_directory(tmp_path, capsys):
    path = tmp_path / "a.ops"
    path.write_text(COW_THP)
    assert cli.main(["export", str(path), str(path)]) == 2
    assert "needs -o DIR" in one_error_line(capsys)


def test_kernel_without_qemu_is_exit_2_naming_the_package(tmp_path, capsys, monkeypatch):
    path = tmp_path / "a.ops"
    path.write_text(COW_THP)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert cli.main(["kernel", str(path)]) == 2
    assert one_error_line(capsys) == ("rmapfuzz: qemu-system-aarch64 not found: install it with "
                                      "'apt-get install qemu-system-arm'")


def test_kernel_with_a_missing_image_is_exit_2(tmp_path, capsys, monkeypatch):
    path = tmp_path / "a.ops"
    path.write_text(COW_THP)
    monkeypatch.setattr(guest, "require_tools", lambda names=(): None)
    assert cli.main(["kernel", str(path), "--kernel", str(tmp_path / "Image")]) == 2
    assert one_error_line(capsys) == f"rmapfuzz: {tmp_path / 'Image'}: no such kernel image"


def test_initramfs_holds_init_modules_in_order_and_scripts(tmp_path):
    path = tmp_path / "initramfs.cpio.gz"
    guest.pack_initramfs(str(path), b"\x7fELF", [("lz4hc_compress", b"a"), ("zram", b"b")],
                         [("00000", "0 0 1 2 3 4\n")])
    listing = subprocess.run(["sh", "-c", f"gzip -dc {path} | cpio -t --quiet"], capture_output=True, text=True,
                             check=False).stdout.split()
    if not listing:
        pytest.skip("cpio is not installed")
    assert listing[listing.index("init"):] == ["init", "lib/modules/00-lz4hc_compress.ko", "lib/modules/01-zram.ko",
                                               "scripts/00000"]


def test_a_result_difference_disagrees_and_names_both_codes():
    run = model_of("mmap P0 0x200000 2M\nmmap P0 0x200000 4K\nwrite P0 0x200000 1\n")
    kernel = guest_script_of(run)
    kernel.results[1] = 22      # EINVAL where the model says EEXIST
    verdict = judge(run, kernel)
    assert (verdict.status, verdict.line, verdict.ops_compared) == (DISAGREE, 2, 2)
    assert (verdict.difference["field"], verdict.difference["model"], verdict.difference["kernel"]) == \
        ("result", "EEXIST", "EINVAL")
    kernel.results[1] = 17      # EEXIST: the run agrees to its end
    assert judge(run, kernel).status == AGREE


def test_saved_kernel_reproducers_are_the_current_export():
    """corpus/kernel/*/reproducer.c is what `rmapfuzz export` makes of its reproducer.ops today."""
    root = os.path.join(os.path.dirname(__file__), "..", "corpus", "kernel")
    directories = sorted(os.listdir(root)) if os.path.isdir(root) else []
    for name in directories:
        directory = os.path.join(root, name)
        with open(os.path.join(directory, "reproducer.c"), encoding="utf-8") as stream:
            saved = stream.read()
        script = parse_file(os.path.join(directory, "reproducer.ops"))
        assert saved == export_script(script), (
            f"{directory}/reproducer.c is stale: rmapfuzz export {directory}/reproducer.ops > "
            f"{directory}/reproducer.c")


def test_model_swaps_a_shared_entry_in_through_the_swap_cache():
    """What deviation:swap-cache used to explain is the model's own now: a read swap-in of an
    entry fork shares maps the swap-cache folio read-only, not exclusive, clean, with the
    cache's reference; nothing explains a difference there any more."""
    run = model_of("mmap P0 0x200000 2M\nwrite P0 0x200000 1\nreclaim P0 0x200000\nfork P0\nread P0 0x200000\n")
    view = run.steps[4].after[(0, 0x200000)]
    assert (view.exclusive, view.writable, view.refcount, view.folio_dirty) == (False, False, 2, False)
    kernel = dict(run.steps[4].after)
    kernel[(0, 0x200000)] = view._replace(exclusive=True, writable=True, refcount=1)
    context = context_of(run, 4, kernel)
    assert {explain(d, context) for d in compare_observations(run.steps[4].after, kernel)} == {None}


def test_a_shared_run_swapped_in_whole_is_the_models_own():
    """What deviation:large-swapin used to explain is the model's own now (#100): a `fault`
    on a run another process shares brings it back whole into the swap cache, the faulting
    page copied; no deviation names it any more."""
    run = model_of("mmap P0 0x200000 64K\nfault P0 0x200000 order=4\nwrite P0 0x201000 2\n"
                   "reclaim P0 0x200000\nfork P0\nfault P0 0x201000 order=4\n")
    after = run.steps[5].after
    view = after[(0, 0x200000)]
    assert (view.state, view.order, view.exclusive, view.writable) == (PRESENT, 4, False, False)
    assert not view.folio_dirty
    assert view.refcount == 15 + 16  # fifteen mappings and the swap cache's sixteen
    assert after[(0, 0x201000)].order == 0 and after[(1, 0x201000)].state == SWAP
    assert "large-swapin" not in {deviation.id for deviation in DEVIATIONS}


def test_swap_slot_placement_explains_only_a_run_the_models_slots_misalign():
    run = model_of("mmap P0 0x200000 32K rw\nfault P0 0x200000 order=2\nreclaim P0 0x200000\n"
                   "fault P0 0x204000 order=2\nreclaim P0 0x204000\nfault P0 0x200000 order=3\n")
    before, after = run.steps[5].before, run.steps[5].after
    assert after[(0, 0x200000)].order == 2 and before[(0, 0x200000)].slot % 8 != 0   # model: misaligned
    kernel_before = {key: view._replace(slot=view.slot - before[(0, 0x200000)].slot + 512)
                     for key, view in before.items()}
    kernel = {(0, 0x200000 + i * 0x1000): PageView(PRESENT, pfn=0x100 + i, head=0x100, order=3, refcount=16)
              for i in range(8)}
    context = OpContext(run.steps[5].op, before, after, kernel_before, kernel, run.steps[5].vmas)
    differences = compare_observations(after, kernel)
    assert differences and {explain(d, context) for d in differences} == {"swap-slot-placement"}
    misaligned_too = OpContext(run.steps[5].op, before, after, {key: view._replace(slot=view.slot + 4)
                                                                for key, view in kernel_before.items()}, kernel, ())
    assert {explain(d, misaligned_too) for d in differences} == {None}
    aligned = {key: view._replace(slot=view.slot - before[(0, 0x200000)].slot + 8) for key, view in before.items()}
    model_aligned = OpContext(run.steps[5].op, aligned, after, kernel_before, kernel, ())
    assert {explain(d, model_aligned) for d in differences} == {None}


def test_vma_merge_explains_a_larger_fault_across_a_model_vma_edge_only():
    run = model_of("mmap P0 0x200000 1M\nmmap P0 0x300000 1M\nfault P0 0x200000 order=9\n")
    assert run.steps[2].after[(0, 0x200000)].order == 8
    kernel = {(0, 0x200000 + index * 0x1000): PageView(PRESENT, pfn=0x200 + index, head=0x200, order=9,
                                                       level="pmd", refcount=1, mapcount=1, exclusive=True)
              for index in range(512)}
    context = context_of(run, 2, kernel)
    assert {explain(d, context) for d in compare_observations(run.steps[2].after, kernel)} == {"vma-merge"}
    one_vma = model_of("mmap P0 0x200000 1M\nfault P0 0x200000 order=9\n")
    assert explain(Difference(0, 0x200000, "order", 8, 9), context_of(one_vma, 1, kernel)) is None


def test_vma_merge_explains_a_forked_entry_of_a_model_vma_without_anon_vma_beside_one_with():
    script = "mmap P0 0x200000 4M\nfault P0 0x200000 order=0\nmmap P0 0x600000 4K\nread P0 0x600000\nfork P0\n"
    run = model_of(script)
    assert (1, 0x600000) not in run.steps[4].after
    kernel = dict(run.steps[4].after)
    kernel[(1, 0x600000)] = PageView(ZERO, level="pte")
    context = context_of(run, 4, kernel)
    assert {explain(d, context) for d in compare_observations(run.steps[4].after, kernel)} == {"vma-merge"}
    apart = model_of(script.replace("0x600000 4K", "0x700000 4K").replace("read P0 0x600000", "read P0 0x700000"))
    kernel = dict(apart.steps[4].after)
    kernel[(1, 0x700000)] = PageView(ZERO, level="pte")
    assert {explain(d, context_of(apart, 4, kernel))
            for d in compare_observations(apart.steps[4].after, kernel)} == {None}


def test_pmd_fault_needs_pmd_none_explains_the_faulting_range_only():
    run = model_of("mmap P0 0x200000 2M\nwrite P0 0x200000 1\ndontneed P0 0x200000 2M\nfault P0 0x200000 order=9\n")
    assert run.steps[3].after[(0, 0x200000)].level == "pmd"
    kernel = {(0, 0x200000 + index * 0x1000): PageView(PRESENT, pfn=0x300 + index, head=0x300, order=8,
                                                       refcount=256, mapcount=1, exclusive=True)
              for index in range(256)}
    context = context_of(run, 3, kernel)
    assert {explain(d, context) for d in compare_observations(run.steps[3].after, kernel)} == {
        "pmd-fault-needs-pmd-none"}
    assert explain(Difference(1, 0x200000, "order", 9, 8), context) is None
    assert explain(Difference(0, 0x400000, "order", 9, 8), context) is None


def test_pmd_fault_needs_pmd_none_explains_a_huge_zero_read_where_a_pte_table_is_left():
    """`rmapfuzz kernel --fuzz 300 --seed 18`: a read of order 9 over the empty PTE table a
    dontneed left maps the huge zero folio on the model, the zero page on the kernel."""
    run = model_of("mmap P0 0x200000 2M\nwrite P0 0x200000 1\ndontneed P0 0x200000 4K\nread P0 0x200000 order=9\n")
    assert run.steps[3].after[(0, 0x200000)].level == "pmd"
    kernel = {(0, 0x200000): PageView(ZERO, pfn=0x900, head=0x900, level="pte", young=True)}
    context = context_of(run, 3, kernel)
    assert {explain(d, context) for d in compare_observations(run.steps[3].after, kernel)} == {
        "pmd-fault-needs-pmd-none"}
    assert explain(Difference(1, 0x200000, "level", "pmd", "pte"), context) is None
