"""Nothing lost, nothing left behind (issue 17): a campaign killed with SIGKILL leaves every
finding it reported whole on disk and no fuzzing worker alive; a finding half-saved when its
process died never shows; campaigns sharing a crash directory keep each other's findings; a
corrupt corpus file is named and skipped; libFuzzer's own artifacts are kept, fork mode goes
on past crashes and hangs, and replay reads the artifacts."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fuzz.engine import findings
from fuzz.engine.campaign import (
    artifacts_in,
    default_artifact_dir,
    finding_event,
    read_seeds,
    sweep_work_directories,
    work_directory,
)
from fuzz.engine.findings import (
    INPUT_FILE,
    REPRODUCER_FILE,
    abandoned,
    hold_lock,
    reproducer_test_name,
    save_finding,
    sweep_staging,
)
from fuzz.engine.lifeline import CAMPAIGN_PID_ENV
from fuzz.engine.session import SUMMARY_DIR_ENV, read_summaries
from fuzz.front.cli import main
from fuzz.script.ops import parse_file

ROOT = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent
CANARY = "fuzz.canaries.share_nr_pages_zero"   # three signatures within seconds from the seeds
FINDING_FILES = [INPUT_FILE, REPRODUCER_FILE]   # and the finding's own pytest file (reproducer_test_name)


def campaign_env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), str(TESTS),
                                                                     os.environ.get("PYTHONPATH")])))


def workers_of(campaign_pid: int) -> list[int]:
    """The processes started for a campaign (the harness and its workers), by their environment."""
    marker = f"{CAMPAIGN_PID_ENV}={campaign_pid}".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker in (entry / "environ").read_bytes().split(b"\0"):
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def assert_whole(directory: Path, signature: str) -> None:
    test_file = reproducer_test_name(signature)
    assert sorted(path.name for path in directory.iterdir()) == sorted([*FINDING_FILES, test_file]), directory
    script = parse_file(str(directory / REPRODUCER_FILE))
    assert script.steps and f"# signature: {signature}" in (directory / REPRODUCER_FILE).read_text()
    assert "def test_reproducer_stays_fixed" in (directory / test_file).read_text()
    assert main(["replay", "--impl", CANARY, str(directory / REPRODUCER_FILE)]) == 1


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs Linux's /proc")
def test_a_campaign_killed_with_sigkill_leaves_each_reported_finding_whole_and_no_worker(tmp_path):
    crashes = tmp_path / "crashes"
    campaign = subprocess.Popen(
        [sys.executable, "-m", "fuzz", "fuzz", "--impl", CANARY, "--time", "120", "--crashes", str(crashes),
         str(ROOT / "corpus/seeds")], cwd=tmp_path, env=campaign_env(), text=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert campaign.stderr is not None
    reported: list[tuple[str, Path]] = []
    deadline = time.monotonic() + 100
    try:
        for line in campaign.stderr:   # "\r" ends a line too: the progress line is rewritten in place
            if line.startswith("finding "):
                signature, _, rest = line[len("finding "):].partition(": ")
                reported.append((signature, Path(rest.rsplit(", ", 1)[1].strip())))
                break   # the worker goes on minimising and saving the next one: kill it there
            assert time.monotonic() < deadline, "no finding reported"
        workers = workers_of(campaign.pid)
        assert workers, "the campaign's fuzzing process was not found"
    finally:
        campaign.send_signal(signal.SIGKILL)
        campaign.wait()
    gone_by = time.monotonic() + 5
    while any(alive(pid) for pid in workers) and time.monotonic() < gone_by:
        time.sleep(0.1)
    assert not any(alive(pid) for pid in workers), "a fuzzing worker outlived its campaign"
    assert reported
    for signature, path in reported:
        assert_whole(path, signature)
    for directory in crashes.iterdir():   # whatever else shows is whole too
        if not directory.name.startswith("."):
            names = sorted(path.name for path in directory.iterdir())
            assert [name for name in names if not name.startswith("test_")] == sorted(FINDING_FILES)
            assert len(names) == len(FINDING_FILES) + 1
    for staging in crashes.glob(".staging-*"):   # a finding the worker was writing when it died
        age(staging)
    sweep_staging(crashes)
    assert not list(crashes.glob(".staging-*"))


def executions_reported(pids: list[int]) -> int:
    """The executions the summary files of these fuzzing processes count so far."""
    directories = set()
    for pid in pids:
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        prefix = f"{SUMMARY_DIR_ENV}=".encode()
        directories |= {Path(entry[len(prefix):].decode()) for entry in environ if entry.startswith(prefix)}
    try:
        return sum(summary.executions for directory in directories for summary in read_summaries(directory))
    except (OSError, ValueError):   # a summary being replaced, or the campaign ending
        return 0


def fuzzing_workers(campaign_pid: int) -> list[int]:
    """The campaign's processes that are fuzzing: the harness and its workers, not their shells."""
    def harness(pid: int) -> bool:
        try:
            return b"fuzz.engine.harness" in Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return False

    return [pid for pid in workers_of(campaign_pid) if harness(pid)]


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs Linux's /proc")
def test_the_jobs_workers_under_their_shells_die_with_a_killed_campaign(tmp_path):
    campaign = subprocess.Popen(
        [sys.executable, "-m", "fuzz", "fuzz", "--jobs", "2", "--time", "120", "--crashes", str(tmp_path / "c"),
         str(ROOT / "corpus/seeds/06-fault-pmd.ops")], cwd=tmp_path, env=campaign_env(),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while len(fuzzing_workers(campaign.pid)) < 3 and time.monotonic() < deadline:   # the master, two workers
            time.sleep(0.2)
        time.sleep(3)   # the workers past their start-up, fuzzing
        workers = workers_of(campaign.pid)   # their shells included
        assert len(fuzzing_workers(campaign.pid)) >= 3, workers
    finally:
        campaign.send_signal(signal.SIGKILL)
        campaign.wait()
    gone_by = time.monotonic() + 5
    while any(alive(pid) for pid in workers) and time.monotonic() < gone_by:
        time.sleep(0.1)
    assert not [pid for pid in workers if alive(pid)], "a worker outlived its campaign"


def test_a_finding_whose_process_dies_while_saving_it_never_shows_half_written(tmp_path):
    real_write = findings.write_synced
    child = os.fork()
    if child == 0:   # the process saving the finding, killed after its second file
        def write_then_die(path: Path, data: bytes) -> None:
            real_write(path, data)
            if path.name == REPRODUCER_FILE:
                os.kill(os.getpid(), signal.SIGKILL)

        findings.write_synced = write_then_die
        save_finding(tmp_path, "divergence:fork:pte", "batched", b"\x02\x01", "fork P0\n")
        os._exit(0)
    _, status = os.waitpid(child, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    assert not (tmp_path / "divergence-fork-pte").exists()
    staging = list(tmp_path.glob(".staging-*"))
    assert len(staging) == 1 and staging[0].name.startswith(f".staging-{child}-")
    assert sweep_staging(tmp_path) == []   # just written: it could be a live one not locked yet
    age(staging[0])
    assert sweep_staging(tmp_path) == staging
    assert list(tmp_path.iterdir()) == []


def age(path: Path, seconds: float = 3600) -> None:
    """Make path look untouched for seconds."""
    then = time.time() - seconds
    os.utime(path, (then, then))


def test_a_live_campaigns_staging_is_not_swept_however_old(tmp_path):
    live = tmp_path / ".staging-1-abc"   # a pid this namespace may not see: the lock decides
    live.mkdir()
    lock = hold_lock(live)
    try:
        age(live)
        assert sweep_staging(tmp_path) == [] and live.exists()
    finally:
        os.close(lock)
    assert sweep_staging(tmp_path) == [live]


def test_a_dead_campaigns_work_directory_is_swept_and_a_live_ones_is_not(tmp_path, monkeypatch):
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    dead, live = tmp_path / "rmapfuzz-4000001-dead", tmp_path / "rmapfuzz-4000002-live"
    other = tmp_path / "rmapfuzz-crashes-xyz"   # a directory of another kind
    for directory in (dead, live, other):
        directory.mkdir()
        age(directory)
    lock = hold_lock(live)
    try:
        assert sweep_work_directories() == [dead]
    finally:
        os.close(lock)
    assert live.exists() and other.exists()
    with work_directory() as work:
        assert work.parent == tmp_path and abandoned(work, min_age_s=0) is False
    assert not work.exists()


def test_a_finding_saved_by_another_campaign_is_never_overwritten(tmp_path):
    first = save_finding(tmp_path, "oracle:fork:mapcount", "batched", b"\x02\x01", "fork P0\n")
    assert first is not None
    child = os.fork()
    if child == 0:   # the other campaign, same signature, other bytes
        saved = save_finding(tmp_path, "oracle:fork:mapcount", "batched", b"\x02\x09", "exit P0\n")
        os._exit(0 if saved is None else 1)
    assert os.waitpid(child, 0)[1] == 0
    assert (first / INPUT_FILE).read_bytes() == b"\x02\x01"
    assert (first / REPRODUCER_FILE).read_text() == "fork P0\n"
    assert [path.name for path in tmp_path.iterdir()] == [first.name]


def test_two_campaigns_sharing_a_crash_directory_keep_each_others_findings(tmp_path):
    crashes = tmp_path / "crashes"
    command = [sys.executable, "-m", "fuzz", "fuzz", "--impl", CANARY, "--runs", "150", "--crashes", str(crashes),
               "--json", str(ROOT / "corpus/seeds")]
    campaigns = [subprocess.Popen([*command[:4], "--seed", str(seed), *command[4:]], cwd=tmp_path, env=campaign_env(),
                                  stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
                 for seed in (1, 2)]
    outputs = [campaign.communicate(timeout=240)[0] for campaign in campaigns]
    saved = [finding for output in outputs for finding in json.loads(output)["findings"]]
    signatures = [finding["signature"] for finding in saved]
    assert signatures and len(signatures) == len(set(signatures))   # each signature saved by one of them
    for finding in saved:
        assert_whole(Path(finding["path"]), finding["signature"])
    assert sorted(path.name for path in crashes.iterdir()) == sorted(Path(finding["path"]).name for finding in saved)


def test_a_corrupt_or_unreadable_corpus_file_is_named_and_skipped(tmp_path, capsys):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "good.ops").write_text("mmap P0 0x200000 2M\nfault P0 0x200000 order=9\n")
    (corpus / "bad.ops").write_text("mmap P0 0x200000 2M\nfrobnicate P0\n")
    (corpus / "latin1.ops").write_bytes(b"mmap P0 0x200000 2M # caf\xe9\n")
    (corpus / "raw-input").write_bytes(b"\x02\x00\x05")
    seeds, skipped = read_seeds([str(corpus)])
    assert sorted(seed.path.name for seed in seeds) == ["good.ops", "raw-input"]
    assert sorted(Path(skip.path).name for skip in skipped) == ["bad.ops", "latin1.ops"]
    assert main(["fuzz", "--runs", "20", "--seed", "1", "--crashes", str(tmp_path / "crashes"), str(corpus)]) == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if "bad.ops" in line or "latin1.ops" in line]
    err = [line for line in lines if line.startswith("rmapfuzz: ")]
    assert len(err) == 2 and len(lines) == 2   # one line each, nothing else naming them
    assert any("bad.ops: line 2:" in line and line.endswith("(skipped)") for line in err)
    assert any("latin1.ops" in line for line in err)


def test_libfuzzer_artifacts_go_beside_the_crash_directory_and_are_kept():
    assert default_artifact_dir("corpus/crashes") == Path("corpus/artifacts").resolve()


def test_fork_mode_keeps_a_crashing_input_as_an_artifact_and_goes_on(tmp_path, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(TESTS))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")])))
    artifacts = tmp_path / "artifacts"
    started = time.monotonic()
    status = main(["fuzz", "--impl", "crashing_impl", "--fork", "1", "--time", "6", "--crashes", str(tmp_path / "c"),
                   "--artifacts", str(artifacts), str(ROOT / "corpus/seeds/14-cow-fork-base.ops"),
                   str(ROOT / "corpus/seeds/06-fault-pmd.ops")])
    assert status == 1 and time.monotonic() - started >= 5   # it went on until its time was up
    crashes = [path for path in artifacts_in(artifacts) if path.name.startswith("crash-")]
    assert crashes
    assert "libFuzzer artifact: " + str(crashes[0]) in capsys.readouterr().out
    # replay and minimize read libFuzzer's files whatever their version byte (the last one)
    assert main(["replay", str(crashes[0])]) in (0, 1)
    assert main(["minimize", "--max-runs", "5", str(crashes[0])]) in (0, 1)


def test_fork_mode_keeps_a_hanging_input_as_a_timeout_artifact_and_goes_on(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(TESTS))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv("RMAPFUZZ_TEST_FORK", "hang")
    artifacts = tmp_path / "artifacts"
    status = main(["fuzz", "--impl", "crashing_impl", "--fork", "1", "--time", "8", "--crashes", str(tmp_path / "c"),
                   "--artifacts", str(artifacts), str(ROOT / "corpus/seeds/14-cow-fork-base.ops"), "--",
                   "-timeout=2"])
    assert status == 1
    assert [path for path in artifacts_in(artifacts) if path.name.startswith("timeout-")]


def test_a_crash_outside_fork_mode_names_its_kept_artifact(tmp_path, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(TESTS))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")])))
    artifacts = tmp_path / "artifacts"
    assert main(["fuzz", "--impl", "crashing_impl", "--runs", "10", "--crashes", str(tmp_path / "c"),
                 "--artifacts", str(artifacts), str(ROOT / "corpus/seeds/14-cow-fork-base.ops")]) == 2
    kept = artifacts_in(artifacts)
    assert len(kept) == 1 and kept[0].name.startswith("crash-")
    assert f"(its input: {kept[0]})" in capsys.readouterr().err


def test_a_stored_input_of_another_version_is_refused_but_a_libfuzzer_artifact_is_read(tmp_path):
    data = bytes([0, 0, 0, 5, 0, 200])   # the last byte is the encoding version: 200, not this rmapfuzz's
    (tmp_path / "input.bin").write_bytes(data)
    (tmp_path / "crash-0123abcd").write_bytes(data)
    assert main(["replay", str(tmp_path / "input.bin")]) == 2
    assert main(["replay", str(tmp_path / "crash-0123abcd")]) == 0


def test_the_jobs_workers_run_through_the_launcher(tmp_path):
    assert main(["fuzz", "--runs", "40", "--jobs", "2", "--seed", "1", "--crashes", str(tmp_path / "c"),
                 str(ROOT / "corpus/seeds/06-fault-pmd.ops")]) == 0


def test_a_finding_event_is_read_from_the_harness_json_log_line():
    line = '{"signature": "oracle:fork:mapcount", "ops": 3, "path": "/c/x", "event": "finding", "level": "warning"}'
    assert finding_event(line) == ("oracle:fork:mapcount", 3, "/c/x")
    assert finding_event('{"event": "other"}') is None
    assert finding_event("#1024 pulse cov: 3") is None
    assert finding_event("{not json") is None


def test_the_gate_names_a_corrupt_corpus_file_as_failing_and_replays_the_rest(tmp_path):
    from fuzz.front.cli import replay_corpus

    bad, stale = tmp_path / "bad.ops", tmp_path / "input.bin"
    bad.write_text("fork P7\n")
    stale.write_bytes(bytes([0, 0, 200]))   # a stored input of encoding version 200, not this rmapfuzz's
    good = str(ROOT / "corpus/seeds/06-fault-pmd.ops")
    replayed, failures = replay_corpus([str(bad), good, str(stale)], "batched")
    assert replayed == 1
    assert len(failures) == 2 and failures[0].startswith(f"{bad}:1: ") and failures[1].startswith(f"{stale}: ")
    assert all(line.endswith("(not replayed)") for line in failures)


def test_ctrl_c_stops_a_campaign_with_its_summary(tmp_path):
    campaign = subprocess.Popen(
        [sys.executable, "-m", "fuzz", "fuzz", "--time", "120", "--crashes", str(tmp_path / "c"), "--json",
         str(ROOT / "corpus/seeds/06-fault-pmd.ops")], cwd=tmp_path, env=campaign_env(), text=True,
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, preexec_fn=lambda: signal.signal(signal.SIGINT,
                                                                                            signal.SIG_DFL))
    deadline = time.monotonic() + 60   # start-up (instrumenting batched) is slow on a loaded machine
    while not executions_reported(fuzzing_workers(campaign.pid)) and time.monotonic() < deadline:
        time.sleep(0.2)
    workers = workers_of(campaign.pid)
    started = time.monotonic()
    campaign.send_signal(signal.SIGINT)
    out, _ = campaign.communicate(timeout=30)
    assert campaign.returncode == 0 and time.monotonic() - started < 20
    assert json.loads(out)["executions"] > 0
    assert not [pid for pid in workers if alive(pid)]


def test_the_gate_prints_each_finding_with_its_saved_reproducer(tmp_path, capsys):
    from fuzz.engine.findings import SavedFinding
    from fuzz.front.cli import print_saved_finding

    saved = tmp_path / "oracle-fork-mapcount"
    saved.mkdir()
    (saved / "reproducer.ops").write_text("mmap P0 0x200000 64K\nfork P0\n")
    print_saved_finding(SavedFinding("oracle:fork:mapcount", 2, str(saved), 1.5, 40))
    assert capsys.readouterr().out.splitlines() == [
        f"  oracle:fork:mapcount (2 ops): {saved}", "    mmap P0 0x200000 64K", "    fork P0"]
