"""The atheris harness and the campaign commands: findings saved atomically and once,
campaigns summarised, bad flags refused."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from fuzz.canaries import CANARIES
from fuzz.engine.campaign import (
    libfuzzer_flags,
    merge_summaries,
    ms_per_execution,
    prepare_seeds,
)
from fuzz.engine.decode import encode
from fuzz.engine.findings import save_finding, signature_dir_name
from fuzz.engine.mutator import StructuralMutator
from fuzz.engine.session import Session
from fuzz.front.cli import main
from fuzz.script.ops import parse_file

ROOT = Path(__file__).resolve().parent.parent
SCENARIO = str(ROOT / "tests/scenarios/64-ttu-mixed-exclusive-batch.ops")


def test_a_finding_is_saved_as_three_files_once(tmp_path):
    saved = save_finding(tmp_path, "divergence:fork:pte", "batched", b"\x01\x02", "fork P0\n")
    assert saved == tmp_path / "divergence-fork-pte"
    assert sorted(path.name for path in saved.iterdir()) == ["input.bin", "reproducer.ops",
                                                             "test_divergence_fork_pte.py"]
    assert save_finding(tmp_path, "divergence:fork:pte", "batched", b"\x03", "exit P0\n") is None
    assert (saved / "input.bin").read_bytes() == b"\x01\x02"
    assert not [path for path in tmp_path.iterdir() if path.name.startswith(".staging")]


def test_the_harness_minimises_and_saves_a_canary_finding(tmp_path):
    campaign = Session("fuzz.canaries.unmap_batch_mixed_exclusive", tmp_path / "crashes", tmp_path)
    campaign.test_one_input(encode(parse_file(SCENARIO)))
    assert [finding.signature for finding in campaign.findings] == ["divergence:try_to_unmap:pte"]
    directory = tmp_path / "crashes" / signature_dir_name("divergence:try_to_unmap:pte")
    reproducer = parse_file(str(directory / "reproducer.ops"))
    assert len(reproducer.steps) <= 8
    assert main(["replay", "--impl", "fuzz.canaries.unmap_batch_mixed_exclusive", str(directory / "input.bin")]) == 1
    summary = merge_summaries(tmp_path, 1.0)
    assert summary.executions == 1 and len(summary.findings) == 1


def test_the_real_batched_gives_no_finding_on_the_seeds(tmp_path):
    campaign = Session("batched", tmp_path / "crashes", None)
    seeds = sorted((ROOT / "corpus/seeds").glob("*.ops"))
    for path in seeds:
        campaign.test_one_input(encode(parse_file(str(path))))
    assert campaign.findings == [] and campaign.executions == len(seeds) >= 64


def test_a_campaign_summary_times_the_parts_of_its_loop(tmp_path):
    campaign = Session("batched", tmp_path / "crashes", tmp_path)
    for path in sorted((ROOT / "corpus/seeds").glob("*.ops"))[:8]:
        campaign.test_one_input(encode(parse_file(str(path))))
    campaign.write_summary()
    summary = merge_summaries(tmp_path, 1.0)
    parts = summary.seconds_by_part
    assert sorted(parts) == ["checks", "decoder", "implementation", "reference"]
    assert all(seconds > 0 for seconds in parts.values())
    assert sum(parts.values()) <= summary.fuzzing_seconds + 0.01


def test_fuzzing_processes_summaries_add_up_to_ms_per_execution(tmp_path):
    for pid, (executions, seconds, parts) in enumerate([(100, 2.0, {"reference": 0.5, "mutator": 0.25}),
                                                          (300, 2.0, {"reference": 1.5, "checks": 0.25})]):
        (tmp_path / f"summary-{pid}.json").write_text(json.dumps(
            {"executions": executions, "seconds": seconds, "findings": [], "seconds_by_part": parts}))
    summary = merge_summaries(tmp_path, 4.0)
    assert summary.executions == 400 and summary.exec_per_s == 100.0
    assert summary.fuzzing_seconds == 4.0
    assert summary.seconds_by_part == {"checks": 0.25, "mutator": 0.25, "reference": 2.0}
    assert ms_per_execution(summary) == {"checks": 0.625, "mutator": 0.625, "reference": 5.0, "rest": 3.75}
    assert ms_per_execution(replace(summary, executions=0)) == {}


def test_seeds_are_encoded_for_libfuzzer(tmp_path):
    seeds = list((ROOT / "corpus/seeds").glob("*.ops"))
    assert prepare_seeds([str(ROOT / "corpus/seeds")], tmp_path) == (len(seeds), [])
    assert len(seeds) >= 64
    assert sorted(path.name for path in tmp_path.iterdir()) == [f"seed-{i:05d}" for i in range(len(seeds))]
    assert libfuzzer_flags(30, None, 2, 7)[1:] == ["-max_total_time=30", "-seed=7", "-jobs=2", "-workers=2",
                                                   "-reload=1"]
    assert libfuzzer_flags(None, 10, 1, None, fork=2)[1:] == ["-runs=10", "-fork=2", "-ignore_crashes=1",
                                                             "-ignore_timeouts=1", "-ignore_ooms=1"]


@pytest.mark.parametrize("argv", [
    ["fuzz", "--time", "0"],
    ["fuzz", "--jobs", "-1"],
    ["fuzz", "--fork", "-1"],
    ["merge", "only-one-dir"],
    ["target"],
    ["fuzz", "--", "max_len=10"],
    ["fuzz", "no/such/corpus", "--time", "1"],
    ["selftest", "--budget", "0"],
    ["selftest", "--canary", "no_such_bug"],
    ["gate", "--fuzz-time", "0"],
])
def test_bad_campaign_flags_are_exit_2_with_one_line(argv, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("rmapfuzz: ")


def test_a_short_campaign_runs_and_summarises(tmp_path, capsys):
    assert main(["fuzz", "--runs", "200", "--seed", "3", "--crashes", str(tmp_path), "--json",
                 str(ROOT / "corpus/seeds/01-mmap-overlap.ops")]) == 0
    out = capsys.readouterr().out
    assert '"executions"' in out and '"findings": []' in out


def test_structural_mutations_stay_decodable_and_change_the_ops():
    import random

    from fuzz.engine.decode import decode, decode_input
    from fuzz.engine.mutator import mutate_input

    data = encode(parse_file(SCENARIO))
    decoded = decode_input(data)
    mutated = [mutate_input(data, 4096, random.Random(seed), decoded) for seed in range(60)]
    encodable = [raw for raw in mutated if raw is not None]
    assert len(encodable) > 30
    assert any(decode(raw).steps != decoded.script.steps for raw in encodable)


def test_the_mutator_encodes_the_mutated_ops_as_the_encoder_does_from_scratch():
    import random

    from fuzz.engine.decode import EncodeError, decode_input
    from fuzz.engine.mutator import mutate_input, mutate_ops
    from fuzz.script.ops import Op, Script

    for path in sorted((ROOT / "corpus/seeds").glob("*.ops"))[:16]:
        data = encode(parse_file(str(path)))
        decoded = decode_input(data)
        ops = [step for step in decoded.script.steps if isinstance(step, Op)]
        for seed in range(8):
            mutated = Script(path=decoded.script.path, frames=decoded.script.frames,
                             steps=mutate_ops(ops, random.Random(seed)))
            try:
                expected = encode(mutated)   # no names known: the reference runs every op
            except EncodeError:
                expected = None
            assert mutate_input(data, 4096, random.Random(seed), decoded) == expected


def test_the_campaign_remembers_what_each_input_run_to_its_end_decodes_to(tmp_path, monkeypatch):
    from fuzz.engine.decode import decode_input

    mutator = StructuralMutator(limit=3)
    recent = mutator.ran
    campaign = Session("batched", tmp_path / "crashes", None, mutator)
    inputs = [encode(parse_file(str(path))) for path in sorted((ROOT / "corpus/seeds").glob("*.ops"))[:4]]
    for data in inputs:
        campaign.test_one_input(data)
    assert recent.get(inputs[0]) is None                       # the least recently used went first
    for data in inputs[1:]:
        assert recent.get(data).script.steps == decode_input(data).script.steps
        assert recent.get(data).script.frames == decode_input(data).script.frames
        assert recent.get(data).names == decode_input(data).names


def test_the_mutator_decodes_an_input_it_did_not_see_run_only_once(monkeypatch):
    from fuzz.engine import decode

    real_decode_input = decode.decode_input
    decodes = []

    def counting_decode_input(data):
        decodes.append(data)
        return real_decode_input(data)

    monkeypatch.setattr(decode, "decode_input", counting_decode_input)
    mutator = StructuralMutator(limit=2)
    corpus_entry = encode(parse_file(SCENARIO))
    decoded = mutator.decoded_input(corpus_entry)
    assert decoded.script.steps == real_decode_input(corpus_entry).script.steps
    for execution in range(3):   # later executions push everything out of the runs' cache
        mutator.remember_run(bytes([execution]), decoded)
    assert mutator.decoded_input(corpus_entry) is decoded
    assert mutator.decoded_input(bytes([2])) is decoded     # run lately: never decoded
    assert decodes == [corpus_entry]


def test_an_input_stopped_by_a_finding_is_not_remembered(tmp_path, monkeypatch):
    monkeypatch.setattr(Session, "record", lambda self, script, signature: None)
    campaign = Session("batched", tmp_path / "crashes", None)
    recent = campaign.mutator.ran

    class RaisingKernel:
        def __init__(self, machine):
            pass

        def __getattr__(self, name):
            raise RuntimeError("planted")

    campaign.impl = type("raising", (), {"Kernel": RaisingKernel})
    data = encode(parse_file(SCENARIO))
    campaign.test_one_input(data)
    assert recent.get(data) is None


def test_the_kernel_under_test_is_instrumented_under_any_name():
    import sys

    from fuzz.canaries import load_batched_copy, unload
    from fuzz.engine.harness import instrument_package, kernel_package
    from fuzz.implementation import load_implementation

    assert kernel_package(load_implementation("batched")) == "batched"
    assert kernel_package(load_implementation("fuzz.canaries.share_nr_pages_zero")) == \
        "fuzz.canaries.share_nr_pages_zero_batched"
    alias = "tests_instrumented_batched_copy"
    copy = load_batched_copy(alias)
    try:
        assert kernel_package(copy) == alias
        function = sys.modules[f"{alias}.rmap"].folios_add_anon_rmap_ptes
        assert "__ATHERIS_INSTRUMENTED__" not in function.__code__.co_consts
        assert instrument_package(alias) > 50
        assert "__ATHERIS_INSTRUMENTED__" in function.__code__.co_consts
        assert instrument_package("tests_no_such_package") == 0
    finally:
        unload(alias)


def test_the_custom_mutator_times_itself_as_the_sessions_mutator_part(tmp_path):
    from fuzz.engine.harness import custom_mutator_for
    from fuzz.engine.session import MUTATOR_PART

    session = Session("batched", tmp_path / "crashes", None)
    byte_mutations = []

    def byte_mutator(data: bytes, max_size: int) -> bytes:
        byte_mutations.append(data)
        return data[::-1]

    mutate = custom_mutator_for(session, byte_mutator)
    data = encode(parse_file(SCENARIO))
    mutated = [mutate(data, 4096, seed) for seed in range(12)]
    assert 0 < len(byte_mutations) < len(mutated)     # some structural, some byte-level
    assert all(raw != data and len(raw) <= 4096 for raw in mutated)
    assert session.seconds_by_part[MUTATOR_PART] > 0


def test_a_campaign_reports_its_progress_lines_to_the_caller(tmp_path):
    from fuzz.engine.campaign import run_campaign

    heard = []
    summary = run_campaign([str(ROOT / "corpus/seeds/06-fault-pmd.ops")], impl="batched", seconds=None, runs=50,
                           jobs=1, seed=3, crash_dir=str(tmp_path), extra_flags=[],
                           progress=lambda executions, rate: heard.append(executions))
    assert heard and heard == sorted(heard)
    assert summary.findings == []


def test_saved_findings_and_summaries_read_back_as_they_were_written(tmp_path):
    from fuzz.engine.findings import SavedFinding
    from fuzz.engine.session import ProcessSummary, read_summaries

    finding = SavedFinding("oracle:fork:mapcount", 4, str(tmp_path / "x"), 1.25, 17)
    written = ProcessSummary(30, 2.5, [finding], {"reference": 0.5})
    (tmp_path / "summary-1.json").write_text(json.dumps(written.to_json()))
    assert read_summaries(tmp_path) == [written]
    assert merge_summaries(tmp_path, 2.0).to_json()["findings"] == [finding.to_json()]


def test_a_selftest_row_passes_only_when_found_in_few_ops():
    from fuzz.engine.campaign import MAX_SELFTEST_OPS, SelftestRow

    assert SelftestRow("bug", True, 1.0, 5, MAX_SELFTEST_OPS, "divergence:fork:pte").passed
    assert not SelftestRow("bug", True, 1.0, 5, MAX_SELFTEST_OPS + 1, "divergence:fork:pte").passed
    assert not SelftestRow("bug", False, 9.0, 500, None, None).passed


@pytest.mark.parametrize("name", CANARIES)
def test_a_canarys_planted_function_is_instrumented_with_its_copy_of_batched(name):
    """The planted variant belongs to the canary's copy of batched (as a patched function would),
    so the campaign is steered by the buggy code's own coverage (issue 16, item 4)."""
    import importlib
    import inspect

    from fuzz.engine.harness import instrument_package, kernel_package

    module = importlib.import_module(f"fuzz.canaries.{name}")
    package = kernel_package(module)
    planted = [value for value in vars(module).values()
               if inspect.isfunction(value) and value.__code__.co_filename == module.__file__]
    assert planted, f"{name} plants no function"
    for function in planted:
        assert function.__module__.startswith(package + "."), (function.__name__, function.__module__)
    instrument_package(package)
    for function in planted:
        assert "__ATHERIS_INSTRUMENTED__" in function.__code__.co_consts, function.__name__


def test_merge_adds_the_inputs_that_add_coverage_and_keeps_op_scripts_readable(tmp_path, capsys):
    import hashlib

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    seeds = [ROOT / "corpus/seeds" / name for name in ("06-fault-pmd.ops", "14-cow-fork-base.ops",
                                                        "64-ttu-mixed-exclusive-batch.ops")]
    for path in seeds:
        (corpus / path.name).write_text(path.read_text())
    raw = encode(parse_file(str(ROOT / "corpus/seeds/45-fork-swap-entries.ops")))
    (corpus / "raw-input").write_bytes(raw)
    (corpus / "same-as-a-seed").write_bytes(encode(parse_file(str(seeds[0]))))   # no coverage of its own
    (corpus / "broken.ops").write_text("fault P0\n")
    out = tmp_path / "out"
    assert main(["merge", str(out), str(corpus)]) == 0
    err = capsys.readouterr().err
    assert "broken.ops" in err and "(skipped)" in err
    added = sorted(path.name for path in out.iterdir())
    assert hashlib.sha1(raw).hexdigest() in added
    assert "same-as-a-seed" not in added and len(added) <= 4
    for path in seeds:
        if path.name in added:
            assert (out / path.name).read_text() == path.read_text()   # the script itself, readable
    assert [name for name in added if name.endswith(".ops")]
    assert main(["merge", str(out), str(corpus), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["added"] == []   # nothing new the second time


def test_mutations_change_late_ops_most_and_any_op_sometimes():
    import random
    from collections import Counter

    from fuzz.engine.mutator import late_index

    rng = random.Random(1)
    drawn = Counter(late_index(10, rng) for _ in range(5000))
    assert set(drawn) == set(range(10))            # every op can change
    assert drawn[9] > drawn[8] > drawn[7] > drawn[0]   # the last the likeliest
    assert late_index(1, rng) == 0


def test_a_byte_mutation_mostly_keeps_the_suffix_a_snapshot_holds(tmp_path):
    """libFuzzer's own byte mutations, three in four on the bytes before a point the cache
    holds for the input only: the mutated input ends with that point's key and resumes there."""
    from fuzz.engine.harness import HEAD_SHARE, custom_mutator_for

    session = Session("batched", tmp_path / "crashes", None, snapshot_budget=64 << 20)
    data = encode(parse_file(SCENARIO))
    session.run_input(data)
    assert session.snapshots is not None
    suffixes = [length for length in session.snapshots.suffixes(data) if length < len(data)]
    assert suffixes
    heads = []

    def byte_mutator(head: bytes, max_size: int) -> bytes:
        heads.append((head, max_size))
        return b"\x01" + head

    mutate = custom_mutator_for(session, byte_mutator)
    mutated = [mutate(data, 4096, seed) for seed in range(200)]
    kept = [head for head, _max_size in heads if len(head) < len(data)]
    assert len(kept) > HEAD_SHARE * len(heads) * 0.7
    assert all(len(data) - len(head) in suffixes and max_size == 4096 - (len(data) - len(head))
               for head, max_size in heads if len(head) < len(data))
    assert all(b"\x01" + head + data[len(head):] in mutated for head, _max_size in heads)
    assert session.snapshots.lookup(b"\x01" + data[1:]) is not None


def test_a_mutated_input_keeps_the_input_s_own_bytes_up_to_a_snapshot(tmp_path):
    """The encoder's bytes for the ops a mutation keeps need not be the input's (here its
    version byte, read and ignored, differs): the mutated input ends with the input's own
    bytes up to the latest snapshot within those ops, so that it resumes there."""
    from fuzz.engine.decode import decode, decode_input
    from fuzz.engine.mutator import with_kept_bytes
    from fuzz.script.ops import Script

    data = encode(parse_file(SCENARIO))
    odd = data[:-1] + bytes([data[-1] ^ 0xFF])
    decoded = decode_input(odd)
    assert decoded.script.steps == decode_input(data).script.steps
    session = Session("batched", tmp_path / "crashes", None, snapshot_budget=64 << 20)
    session.run_input(odd)
    assert session.snapshots is not None
    points = session.snapshots.points_of(odd)
    kept = decoded.script.steps[:-1]
    length = max((point for point in points if point[1] <= len(kept)), key=lambda point: point[1])[0]
    encoded = encode(Script(path="", frames=decoded.script.frames, steps=list(kept)), decoded)
    spliced = with_kept_bytes(encoded, kept, odd, decoded, points)
    assert spliced != encoded and spliced.endswith(odd[len(odd) - length:])
    assert decode(spliced).steps == kept
    assert session.snapshots.lookup(spliced) is not None
    assert with_kept_bytes(encoded, kept, odd, decoded, []) == encoded
