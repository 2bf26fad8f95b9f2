"""The op-level minimiser: repairs deletions, keeps the signature, shrinks canary findings."""

from __future__ import annotations

from pathlib import Path

import pytest

from fuzz.canaries import canary_module
from fuzz.engine.generate import random_script
from fuzz.engine.minimize import Minimizer, lower_candidates, minimize_script, repair
from fuzz.front.cli import main
from fuzz.judge.runner import run_script
from fuzz.script.ops import Op, ScriptError, format_script, parse_file, parse_script

ROOT = Path(__file__).resolve().parent.parent


def test_deleting_a_fork_drops_its_child_and_renumbers_later_processes():
    script = parse_script("""mmap P0 0x200000 2M
fork P0
fork P1
write P2 0x200000 1
fork P0
write P3 0x200000 2
exit P1
""")
    repaired = repair(script, {1})  # the first fork: P1 and its child P2 go
    assert format_script(repaired) == "mmap P0 0x200000 2M rw\nfork P0\nwrite P1 0x200000 2\n"


def test_deleting_a_pin_renumbers_later_unpins_and_drops_its_own():
    script = parse_script("""mmap P0 0x200000 2M
pin P0 0x200000 1 rw
pin P0 0x201000 1 rw
unpin 0
unpin 1
unpin 7
""")
    repaired = repair(script, {1})
    assert format_script(repaired) == ("mmap P0 0x200000 2M rw\npin P0 0x201000 1 rw\n"
                                       "unpin 0\nunpin 6\n")


def test_lowering_tries_smaller_orders_page_counts_values_and_lengths():
    lowered = list(lower_candidates(Op("fault", process=0, addr=0x200000, order=4)))
    assert [op.order for op in lowered] == [0, 2, 3]
    assert [op.nr_pages for op in lower_candidates(Op("pin", process=0, addr=0, nr_pages=17, prot="rw"))] == [1, 8]
    assert [op.length for op in lower_candidates(Op("munmap", process=0, addr=0, length=0x10000))] == [0x8000, 0x1000]


@pytest.mark.parametrize("name", ["dup_clears_first_page_only", "batch_crosses_folio_end",
                                  "fork_swap_exclusive_child_only"])
def test_a_canary_finding_shrinks_to_a_few_ops_with_its_signature(name):
    module = canary_module(name)
    for seed in range(400):
        try:
            found = run_script(random_script(seed), module, "reference", check_every_op=False).findings
        except ScriptError:
            continue
        if found:
            break
    script = random_script(seed)
    small, signature = minimize_script(script, module)
    assert len(small.steps) <= 8
    assert len(small.steps) < len(script.steps)
    replayed = run_script(small, module, "reference")
    assert replayed.findings and replayed.findings[0].signature == signature


def test_every_candidate_is_run_once():
    module = canary_module("unmap_batch_mixed_exclusive")
    script = parse_file(str(ROOT / "tests/scenarios/64-ttu-mixed-exclusive-batch.ops"))
    minimizer = Minimizer(module)
    signature = run_script(script, module, "reference").findings[0].signature
    minimizer.minimize(script, signature)
    runs = minimizer.runs
    minimizer.minimize(script, signature)
    assert minimizer.runs == runs  # the second search is answered from the cache
    assert len(minimizer.cache) == runs


def test_cli_minimize_writes_the_reproducer_atomically(tmp_path, capsys):
    out = tmp_path / "small.ops"
    source = str(ROOT / "tests/scenarios/64-ttu-mixed-exclusive-batch.ops")
    status = main(["minimize", "--impl", "fuzz.canaries.unmap_batch_mixed_exclusive", source, "-o", str(out)])
    assert status == 1
    text = out.read_text()
    assert text.startswith("# signature: divergence:try_to_unmap:pte\n# minimised from")
    assert len(parse_file(str(out)).steps) <= 8
    assert not [path for path in tmp_path.iterdir() if path.name.endswith(".tmp")]
    assert main(["replay", "--impl", "fuzz.canaries.unmap_batch_mixed_exclusive", str(out)]) == 1


def test_cli_minimize_of_a_passing_script_and_bad_input(tmp_path, capsys):
    assert main(["minimize", str(ROOT / "tests/scenarios/01-mmap-overlap.ops")]) == 0
    assert "no finding" in capsys.readouterr().out
    assert main(["minimize", str(tmp_path / "missing.ops")]) == 2
    assert main(["minimize", "--max-runs", "0", str(ROOT / "tests/scenarios/01-mmap-overlap.ops")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("rmapfuzz: ") for line in err)


def test_an_odd_machine_size_is_lowered_to_the_default():
    module = canary_module("dup_clears_first_page_only")
    script = parse_script("frames 65521\nmmap P0 0x200000 2M\nfault P0 0x200000 order=4\nfork P0\n")
    small, signature = minimize_script(script, module)
    assert small.frames is None and signature.startswith("oracle:fork")
