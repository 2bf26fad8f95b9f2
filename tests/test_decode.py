"""Raw fuzzer inputs: a total decoder over atheris' FuzzedDataProvider, and its encoder."""

from __future__ import annotations

import glob
import random
from dataclasses import replace
from pathlib import Path

import pytest

from fuzz.engine.decode import (
    MAX_OPS,
    NAMING_OPS,
    RAW_FRAMES,
    ByteChoices,
    EncodeError,
    RecordedChoices,
    decode,
    decode_input,
    encode,
)
from fuzz.front.cli import main
from fuzz.judge.runner import run_script
from fuzz.script.ops import Op, ScriptError, format_script, parse_file, parse_script
from machine.pgtable import CONT_PTE_SIZE, PMD_SIZE

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = sorted(glob.glob(str(ROOT / "tests/scenarios/*.ops")))


def random_bytes(seed: int) -> bytes:
    rng = random.Random(seed)
    return bytes(rng.randrange(256) for _ in range(rng.randrange(0, 300)))


@pytest.mark.parametrize("seed", range(100))
def test_any_bytes_decode_to_a_valid_script_that_encodes_back(seed):
    script = decode(random_bytes(seed))
    assert len(script.steps) <= MAX_OPS
    assert parse_script(format_script(script)).steps == script.steps  # valid op-script text
    again = decode(encode(script))
    assert (again.frames, again.steps) == (script.frames, script.steps)


@pytest.mark.parametrize("seed", range(20))
def test_decoded_inputs_run_on_both_implementations(seed):
    try:
        result = run_script(decode(random_bytes(1000 + seed)), "batched", "reference")
    except ScriptError:
        return  # a fork failed: the parser's static numbering (model.md #8)
    assert result.findings == [], result.findings[0].report()


@pytest.mark.parametrize("path", SCENARIOS, ids=lambda path: Path(path).name)
def test_every_scenario_encodes_and_decodes_to_its_ops(path):
    script = parse_file(path)
    assert decode(encode(script)).steps == [step for step in script.steps if isinstance(step, Op)]


def test_choices_are_written_as_fuzzed_data_provider_reads_them():
    recorded = RecordedChoices()
    for value, count in ((1, 256), (700, 1001), (5, 10), (0, 1)):
        recorded.choose(count, value)
    assert recorded.to_bytes() == bytes([5]) + (700).to_bytes(2, "little") + bytes([1])


def test_scripts_the_grammar_cannot_draw_are_refused():
    too_long = parse_script("mmap P0 0x200000 2M\n" + "read P0 0x200000\n" * MAX_OPS)
    with pytest.raises(EncodeError):
        encode(too_long)
    with pytest.raises(EncodeError):
        encode(parse_script("mmap P0 0x200000 2M\nunpin 5\n"))  # never issued, not the next id


def test_cli_encode_decode_and_replay_a_raw_input(tmp_path, capsys):
    raw = tmp_path / "input"
    source = str(ROOT / "tests/scenarios/64-ttu-mixed-exclusive-batch.ops")
    assert main(["encode", source, "-o", str(raw)]) == 0
    assert main(["decode", str(raw)]) == 0
    decoded = capsys.readouterr().out
    assert parse_script(decoded).steps == [s for s in parse_file(source).steps if isinstance(s, Op)]
    assert main(["replay", str(raw)]) == 0
    assert main(["replay", "--impl", "fuzz.canaries.unmap_batch_mixed_exclusive", str(raw)]) == 1
    assert main(["encode", str(raw), "-o", str(tmp_path / "x")]) == 2


@pytest.mark.parametrize("seed", range(20))
def test_the_decoding_stream_draws_what_decode_draws(seed):
    from fuzz.engine.decode import OpStream
    from fuzz.judge.runner import run_stream

    data = random_bytes(2000 + seed)
    stream = OpStream(data)
    result = run_stream(stream.script, stream.next_op, "batched")
    assert (stream.script.frames, stream.script.steps) == (decode(data).frames, decode(data).steps)
    assert result.findings == []
    assert stream.decoded().names == decode_input(data).names


def test_choices_are_read_as_fuzzed_data_provider_reads_them():
    import atheris

    counts = (1, 2, 4, 7, 8, 26, 256, 257, 1025, RAW_FRAMES + 1, 1 << 36, (1 << 64) - 1, 1 << 64)
    rng = random.Random(5)
    for _ in range(2000):
        data = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 40)))
        provider, choices = atheris.FuzzedDataProvider(data), ByteChoices(data)
        for count in (rng.choice(counts) for _ in range(rng.randrange(1, 30))):
            assert choices.choose(count) == provider.ConsumeIntInRange(0, count - 1)
            assert choices.remaining == provider.remaining_bytes()


@pytest.mark.parametrize("seed", range(40))
def test_only_forks_exits_and_pins_change_what_later_ops_may_name(seed):
    decoded = decode_input(random_bytes(3000 + seed))
    for op, before, after in zip(decoded.script.steps, decoded.names, decoded.names[1:], strict=False):
        assert op.name in NAMING_OPS or after == before, op


@pytest.mark.parametrize("seed", range(40))
def test_encoding_with_a_decoded_input_gives_the_bytes_encoding_alone_gives(seed):
    from fuzz.engine.mutator import mutate_ops

    decoded = decode_input(random_bytes(4000 + seed))
    for mutation in range(4):
        ops = mutate_ops(decoded.script.steps, random.Random(mutation))
        script = type(decoded.script)(path="<mutated>", frames=decoded.script.frames, steps=ops)
        try:
            alone = encode(script)
        except EncodeError:
            with pytest.raises(EncodeError):
                encode(script, decoded)
        else:
            assert encode(script, decoded) == alone


def test_the_encoder_runs_nothing_when_what_ops_may_name_is_known(monkeypatch):
    import fuzz.engine.decode

    decoded = decode_input(encode(parse_script(
        "mmap P0 0x200000 2M\nfork P0\nfault P1 0x200000\npin P0 0x200000 1 rw\nwrite P0 0x200000 7\n")))
    ops = decoded.script.steps
    changes = (ops[:3] + ops[4:], ops + [ops[2]], ops[:4] + [ops[-1]] * 2)  # after the pin: no fork, exit, pin
    with monkeypatch.context() as patch:
        patch.setattr(fuzz.engine.decode, "reference_kernel", None)   # any run would fail
        encoded = [encode(type(decoded.script)("<changed>", decoded.script.frames, changed), decoded)
                   for changed in changes]
    assert [decode(data).steps for data in encoded] == list(changes)


def test_folio_addresses_of_note_are_the_large_folios_worth_acting_on():
    """Pinned, shared by fork, of mixed exclusivity, PMD-mapped: their pages are offered to
    the ops that act on folios; small folios and plain exclusive mTHPs are not."""
    from fuzz.engine.decode import folio_addresses_of_note
    from fuzz.implementation import OP_DISPATCH, reference_kernel

    machine, kernel = reference_kernel(4096)
    script = parse_script("""
mmap P0 0x200000 8M
fault P0 0x200000 order=2
fault P0 0x210000 order=2
pin P0 0x210000 1 ro
fault P0 0x220000 order=2
write P0 0x240000 1
fault P0 0x400000 order=9
fork P0
fault P0 0x260000 order=2
mprotect P0 0x220000 16K rw
""")
    for op in script.steps:
        OP_DISPATCH[op.name](kernel, op)
    noted = folio_addresses_of_note(machine, 0)
    pinned = [0x210000 + i * 0x1000 for i in range(4)]
    shared = [0x200000 + i * 0x1000 for i in range(4)] + [0x220000 + i * 0x1000 for i in range(4)]
    assert noted == sorted(shared + pinned + [0x400000])
    assert 0x240000 not in noted and 0x260000 not in noted   # order 0; exclusive to P0 alone
    assert folio_addresses_of_note(machine, 1) == sorted(shared + [0x400000])   # fork copied the pinned one

    machine, kernel = reference_kernel(4096)
    for op in parse_script("""
mmap P0 0x200000 64K
fault P0 0x200000 order=4
fork P0
exit P1
write P0 0x203000 9
""").steps:
        OP_DISPATCH[op.name](kernel, op)
    assert folio_addresses_of_note(machine, 0) == [0x200000 + i * 0x1000 for i in range(16)]   # page 3 alone exclusive


def test_an_op_may_act_on_a_folio_of_note_and_the_encoder_never_draws_one():
    """The first choice of an op sends it, ACT_SHARE times in ACT_CHANCE, to an ACT_KINDS op on a page
    of a folio of note in the process drawn; with none there, to one that makes a large folio."""
    from fuzz.engine.decode import (
        ACT_CHANCE,
        ACT_KINDS,
        ByteChoices,
        OpGrammar,
        RecordedChoices,
        folio_addresses_of_note,
        names_of,
    )
    from fuzz.implementation import OP_DISPATCH, reference_kernel

    machine, kernel = reference_kernel(4096)
    for op in parse_script("mmap P0 0x200000 64K\nfault P0 0x200000 order=4\nfork P0\n").steps:
        OP_DISPATCH[op.name](kernel, op)
    noted = folio_addresses_of_note(machine, 1)
    assert noted == [0x200000 + i * 0x1000 for i in range(16)]
    choices = RecordedChoices()
    for wanted, count in ((0, ACT_CHANCE), (1, 2), (ACT_KINDS.index("reclaim"), len(ACT_KINDS)), (5, len(noted))):
        choices.choose(count, wanted)
    drawn = OpGrammar(ByteChoices(choices.to_bytes())).op(names_of(machine), machine)
    assert drawn == Op("reclaim", process=1, addr=0x205000)

    machine, kernel = reference_kernel(4096)   # no large folio: the same choices make one
    for op in parse_script("mmap P0 0x200000 64K\nfork P0\n").steps:
        OP_DISPATCH[op.name](kernel, op)
    drawn = OpGrammar(ByteChoices(choices.to_bytes())).op(names_of(machine), machine)
    assert drawn.name in ("mmap", "fault", "file")

    recorded = RecordedChoices()
    OpGrammar(recorded).op(names_of(machine), target=Op("reclaim", process=0, addr=0x205000))
    assert recorded.choices[0] == (ACT_CHANCE - 1, ACT_CHANCE)   # the encoder's way: never acting


def _machine_after(text, frames=4096):
    from fuzz.implementation import OP_DISPATCH, reference_kernel

    machine, kernel = reference_kernel(frames)
    for op in parse_script(text).steps:
        OP_DISPATCH[op.name](kernel, op)
    return machine


def _act(machine, wanted_choices):
    """The op an act draws on machine from the given (value, count) choices after the first."""
    from fuzz.engine.decode import ACT_CHANCE, OpGrammar, names_of

    choices = RecordedChoices()
    choices.choose(ACT_CHANCE, 0)
    for wanted, count in wanted_choices:
        choices.choose(count, wanted)
    grammar = OpGrammar(ByteChoices(choices.to_bytes()))
    return grammar, grammar.op(names_of(machine), machine)


def test_lazyfree_mixed_dirty_page_cache_and_cowed_file_pages_are_of_note():
    """MADV_FREEd large folios, folios whose PTEs differ in the dirty bit, large page-cache
    folios and the pages a private file mapping COWed are worth acting on; an mTHP written
    whole and exclusive is not, but it is among the large folios."""
    from fuzz.engine.notes import folio_addresses_of_note, folio_span, large_folio_addresses

    machine = _machine_after("""
mmap P0 0x200000 2M
fault P0 0x200000 order=2
free P0 0x200000 16K
fault P0 0x210000 order=2
write P0 0x210000 1
write P0 0x211000 1
write P0 0x212000 1
write P0 0x213000 1
file F0 64K shmem
mmap P0 0x400000 64K rw file=F0
fault P0 0x400000 order=4
""")
    lazyfree = [0x200000 + i * 0x1000 for i in range(4)]
    assert folio_addresses_of_note(machine, 0) == lazyfree + [0x400000]   # the COWed page
    assert large_folio_addresses(machine, 0) == lazyfree + [0x210000 + i * 0x1000 for i in range(4)]
    span = folio_span(machine, 0, 0x400000)   # the page-cache folio it was COWed from
    assert (span.start, span.nr_pages, span.file, span.file_index) == (0x400000, 16, 0, 0)
    assert folio_span(machine, 0, 0x212000)[:2] == (0x210000, 4)

    machine = _machine_after("""
file F0 64K shmem
mmap P0 0x200000 64K rw file=F0 shared
fault P0 0x200000 order=4
""")
    assert folio_addresses_of_note(machine, 0) == [0x200000 + i * 0x1000 for i in range(16)]


def test_an_act_where_no_large_folio_is_mapped_makes_one():
    """Three times in four (always without a VMA) an act faults a folio of the drawn order at
    an address aligned to it inside a VMA; else it maps memory at a free PMD-aligned place,
    anonymous or a file (made first), and faults there: the ops after the first come next."""
    from fuzz.engine.decode import MAKE_FILE_LENGTHS, MAKE_LENGTHS, MAKE_ORDERS, names_of

    machine = _machine_after("mmap P0 0x200000 2M\nmmap P0 0x600000 64K\n")
    order4 = (MAKE_ORDERS.index(4), len(MAKE_ORDERS))
    _, op = _act(machine, [order4, (1, 4), (0, 2), (5, 32)])
    assert op == Op("fault", process=0, addr=0x250000, order=4)

    grammar, op = _act(machine, [order4, (0, 4), (MAKE_LENGTHS.index(PMD_SIZE), len(MAKE_LENGTHS)), (0, 3)])
    assert op == Op("mmap", process=0, addr=0x400000, length=PMD_SIZE, prot="rw")
    assert grammar.op(names_of(machine), machine) == Op("fault", process=0, addr=0x400000, order=4)

    grammar, op = _act(machine, [order4, (0, 4), (MAKE_LENGTHS.index(PMD_SIZE), len(MAKE_LENGTHS)), (2, 3), (1, 2),
                                 (MAKE_FILE_LENGTHS.index(CONT_PTE_SIZE), len(MAKE_FILE_LENGTHS)), (1, 2)])
    assert op == Op("file", file=0, length=CONT_PTE_SIZE, shmem=True)   # no file yet: made, mapped, faulted
    assert [grammar.op(names_of(machine), machine) for _ in range(2)] == [
        Op("mmap", process=0, addr=0x400000, length=CONT_PTE_SIZE, prot="rw", file=0, shared=True),
        Op("fault", process=0, addr=0x400000, order=4)]

    machine.processes[0].vmas.clear()   # no VMA: always mapped first
    _, op = _act(machine, [order4, (MAKE_LENGTHS.index(PMD_SIZE), len(MAKE_LENGTHS)), (0, 3)])
    assert op == Op("mmap", process=0, addr=0x200000, length=PMD_SIZE, prot="rw")


def test_wp_on_an_unregistered_folio_registers_its_vma_first_and_map_again_reads():
    """An act of two ops draws its second op next, without a choice: uffd on the VMA before
    wp on a part of the folio; mmap of a page-cache folio's file elsewhere before a read of it."""
    from fuzz.engine.decode import ACT_KINDS, WP_PARTS, names_of

    machine = _machine_after("mmap P0 0x200000 64K\nfault P0 0x200000 order=4\nfork P0\n")
    grammar, op = _act(machine, [(0, 2), (ACT_KINDS.index("wp"), len(ACT_KINDS)), (3, 16),
                                 (WP_PARTS.index("block"), len(WP_PARTS)), (0, 4)])
    assert op == Op("uffd", process=0, addr=0x200000, length=CONT_PTE_SIZE)
    assert grammar.op(names_of(machine), machine) == Op("wp", process=0, addr=0x200000, length=CONT_PTE_SIZE,
                                                        mode="on")

    machine = _machine_after("file F0 64K shmem\nmmap P0 0x200000 64K rw file=F0\nfault P0 0x200000 order=4\n")
    grammar, op = _act(machine, [(ACT_KINDS.index("mmap"), len(ACT_KINDS)), (0, 1), (1, 2)])
    assert op == Op("mmap", process=0, addr=0x400000, length=CONT_PTE_SIZE, prot="rw", file=0, shared=True)
    assert grammar.op(names_of(machine), machine) == Op("read", process=0, addr=0x400000)


def test_acts_cover_parts_of_the_folio_and_split_below_its_order():
    from fuzz.engine.decode import ACT_KINDS, FOLIO_PARTS

    machine = _machine_after("mmap P0 0x200000 64K\nfault P0 0x200000 order=4\nfork P0\n")
    kinds = len(ACT_KINDS)
    for part, (start, length) in (("folio", (0x200000, CONT_PTE_SIZE)), ("to_end", (0x205000, 11 * 4096)),
                                  ("from_start", (0x200000, 6 * 4096)), ("pages", (0x205000, 2 * 4096))):
        _, op = _act(machine, [(0, 2), (ACT_KINDS.index("free"), kinds), (5, 16),
                               (FOLIO_PARTS.index(part), len(FOLIO_PARTS))])
        assert op == Op("free", process=0, addr=start, length=length)
    _, op = _act(machine, [(0, 2), (ACT_KINDS.index("mprotect"), kinds), (5, 16), (0, len(FOLIO_PARTS)), (0, 4)])
    assert op == Op("mprotect", process=0, addr=0x200000, length=CONT_PTE_SIZE, prot="ro")
    _, op = _act(machine, [(0, 2), (ACT_KINDS.index("split"), kinds), (5, 16), (1, 2), (7, 16), (1, 2), (3, 4)])
    assert op == Op("split", process=0, addr=0x207000, order=3)
    _, op = _act(machine, [(1, 2), (ACT_KINDS.index("exit"), kinds), (5, 16)])
    assert op == Op("exit", process=0)   # another process than the one whose folio was drawn


def test_addresses_drawn_inside_vmas_and_lengths_to_their_end():
    from fuzz.engine.decode import (
        ACT_CHANCE,
        BOUNDARY_GRANULES,
        FOLIO_ADDR_CATEGORIES,
        KIND_TABLE,
        LISTED_WEIGHT,
        OpGrammar,
        names_of,
    )

    machine = _machine_after("mmap P0 0x200000 64K\nmmap P0 0x600000 4M\n")
    choices = RecordedChoices()
    for wanted, count in ((ACT_CHANCE - 1, ACT_CHANCE), (KIND_TABLE.index("dontneed"), len(KIND_TABLE)),
                          (FOLIO_ADDR_CATEGORIES.index("inside"), len(FOLIO_ADDR_CATEGORIES)), (1, 2),
                          (BOUNDARY_GRANULES.index(PMD_SIZE), len(BOUNDARY_GRANULES)), (1, 2),
                          (LISTED_WEIGHT, LISTED_WEIGHT + 2)):
        choices.choose(count, wanted)
    op = OpGrammar(ByteChoices(choices.to_bytes())).op(names_of(machine), machine)
    assert op == Op("dontneed", process=0, addr=0x800000, length=PMD_SIZE)


def test_grown_inputs_keep_their_ops_or_a_prefix_of_them_and_draw_more():
    from fuzz.engine.mutator import grow_input

    data = encode(parse_script("mmap P0 0x200000 64K\nfault P0 0x200000 order=4\nfork P0\nwrite P1 0x203000 5\n"))
    decoded = decode_input(data)
    ops = decoded.script.steps
    grown = [grow_input(data, 4096, random.Random(seed), decoded, kind) for seed in range(20)
             for kind in ("grow", "regrow")]
    scripts = [decode(raw).steps for raw in grown if raw is not None]
    assert len(scripts) == 40
    assert all(script[:len(ops)] == ops for script in scripts[0::2])
    assert any(len(script) > len(ops) for script in scripts[0::2])
    assert all(any(script[:cut] == ops[:cut] for cut in range(len(ops) + 1)) for script in scripts[1::2])
    assert grow_input(data, len(data), random.Random(0), decoded, "grow") is None   # no room


def test_argument_mutations_reach_every_argument_an_op_has():
    """Besides the address, any argument an op has may change: prot and wp mode flip, a file
    mapping's sharing flips; an op with none but its process comes back unchanged."""
    from fuzz.engine.mutator import mutate_argument

    mmap = Op("mmap", process=0, addr=0x200000, length=CONT_PTE_SIZE, prot="rw", file=0, shared=False)
    changed = {mutate_argument(mmap, random.Random(seed)) for seed in range(60)}
    assert replace(mmap, prot="ro") in changed and replace(mmap, shared=True) in changed
    assert any(op.addr != mmap.addr for op in changed) and any(op.length != mmap.length for op in changed)
    wp = Op("wp", process=0, addr=0x200000, length=CONT_PTE_SIZE, mode="on")
    assert replace(wp, mode="off") in {mutate_argument(wp, random.Random(seed)) for seed in range(30)}
    assert mutate_argument(Op("fork", process=1), random.Random(0)) == Op("fork", process=1)


def test_acts_that_do_not_apply_to_a_page_cache_folio_map_it_again_and_acts_keep_their_focus():
    """free, split and split_pmd of a page-cache folio map it again (then read it there); the
    next act aims at the page the last one did when its first choice says so."""
    from fuzz.engine.decode import ACT_KINDS, names_of

    machine = _machine_after("file F0 64K shmem\nmmap P0 0x200000 64K rw file=F0\nfault P0 0x200000 order=4\n")
    for kind in ("free", "split", "split_pmd"):
        grammar, op = _act(machine, [(ACT_KINDS.index(kind), len(ACT_KINDS)), (0, 1), (0, 2)])
        assert op == Op("mmap", process=0, addr=0x400000, length=CONT_PTE_SIZE, prot="rw", file=0)
        assert grammar.op(names_of(machine), machine) == Op("read", process=0, addr=0x400000)

    machine = _machine_after("mmap P0 0x200000 64K\nfault P0 0x200000 order=4\nfork P0\n")
    grammar, op = _act(machine, [(0, 2), (ACT_KINDS.index("reclaim"), len(ACT_KINDS)), (9, 16), (0, 2)])
    assert op == Op("reclaim", process=0, addr=0x209000)
    choices = RecordedChoices()
    for wanted, count in ((0, 4), (0, 2), (ACT_KINDS.index("try_to_unmap"), len(ACT_KINDS)), (2, 16), (0, 2), (0, 2)):
        choices.choose(count, wanted)
    grammar.choices = ByteChoices(choices.to_bytes())
    assert grammar.op(names_of(machine), machine) == Op("try_to_unmap", process=0, addr=0x209000)


def _hazards(*names):
    from fuzz.engine.notes import HAZARDS

    return sum(1 << HAZARDS.index(name) for name in names)


def test_folio_hazards_name_what_makes_a_folio_hazardous_to_batch_over():
    """A large folio written whole and exclusive has none but its folded contpte block; a write
    to one page, a protection or an unmap of part of it, a pin, a fork, a PMD mapping, the page
    cache, a VMA edge inside it, read-only entries of mixed exclusivity and a clean page-cache
    folio mapped writable each add theirs."""
    from fuzz.engine.notes import folio_hazards

    assert folio_hazards(_machine_after("mmap P0 0x200000 4M\nfault P0 0x200000 order=3\n"), 0, 0x205000) == 0
    text = "mmap P0 0x200000 4M\nfault P0 0x200000 order=4\n"
    assert folio_hazards(_machine_after(text), 0, 0x205000) == _hazards("cont")
    assert folio_hazards(_machine_after(text + "write P0 0x203000 5\n"), 0, 0x205000) \
        == _hazards("mixed_zero", "cont")
    assert folio_hazards(_machine_after(text + "mprotect P0 0x200000 16K ro\n"), 0, 0x20f000) \
        == _hazards("mixed_write", "vmas")   # unfolded, and its VMA split
    assert folio_hazards(_machine_after(text + "uffd P0 0x208000 4K\n"), 0, 0x200000) \
        == _hazards("vmas", "cont")   # registration splits the VMA and leaves the block folded
    assert folio_hazards(_machine_after(text + "munmap P0 0x20f000 4K\n"), 0, 0x200000) == _hazards("part_mapped")
    assert folio_hazards(_machine_after(text + "pin P0 0x200000 1 ro\n"), 0, 0x200000) == _hazards("pinned", "cont")
    forked = _machine_after(text + "fork P0\nwrite P1 0x203000 5\n")
    assert folio_hazards(forked, 0, 0x200000) == _hazards("shared", "cont")
    assert folio_hazards(forked, 1, 0x200000) == _hazards("shared", "part_mapped")
    assert folio_hazards(forked, 1, 0x203000) == 0   # its own copy of the page
    reused = _machine_after(text + "fork P0\nexit P1\nwrite P0 0x203000 5\n")   # page 3 alone exclusive again
    assert folio_hazards(reused, 0, 0x200000) == _hazards("mixed_exclusive", "mixed_zero", "mixed_write")
    unshared = _machine_after(text + "fork P0\nexit P1\npin P0 0x203000 1 ro\n")   # page 3 exclusive, read-only
    assert folio_hazards(unshared, 0, 0x200000) == _hazards("pinned", "mixed_exclusive", "mixed_read_only", "cont")
    assert folio_hazards(_machine_after("mmap P0 0x200000 2M\nfault P0 0x200000 order=9\n"), 0, 0x200000) \
        == _hazards("pmd")
    shmem = _machine_after("file F0 64K shmem\nmmap P0 0x200000 64K rw file=F0 shared\nfault P0 0x200000 order=4\n")
    assert folio_hazards(shmem, 0, 0x204000) == _hazards("cache", "cont")
    assert folio_hazards(shmem, 0, 0x300000) == 0   # nothing mapped
    clean = _machine_after("file F0 64K shmem\nmmap P0 0x200000 64K rw file=F0\nfault P0 0x200000 order=4\n"
                           "mmap P0 0x400000 64K rw file=F0 shared\nread P0 0x400000\n")   # read in by a COW
    assert folio_hazards(clean, 0, 0x404000) == _hazards("cache", "cont", "clean_writable")


def test_an_act_that_gives_its_folio_a_new_hazard_is_followed_by_a_walker_over_it():
    """After a write to one page of an mTHP (its pages no longer all zero) the next act, when
    its choice says so, is one of that hazard's HAZARD_WALKERS on the page the write aimed at."""
    from fuzz.engine.decode import ACT_CHANCE, HAZARD_WALKERS, NOTE_KINDS, WALKER_CHANCE, OpGrammar, names_of
    from fuzz.implementation import OP_DISPATCH, reference_kernel

    machine, kernel = reference_kernel(4096)
    for op in parse_script("mmap P0 0x200000 64K\nfault P0 0x200000 order=4\n").steps:
        OP_DISPATCH[op.name](kernel, op)
    choices = RecordedChoices()
    for wanted, count in ((0, ACT_CHANCE), (NOTE_KINDS.index("write"), len(NOTE_KINDS)), (3, 16), (0, 2),
                          (0, 4), (0, 5),   # the value: a listed one, 1
                          (0, ACT_CHANCE), (0, WALKER_CHANCE),   # a walker of the one new hazard, mixed_zero
                          (HAZARD_WALKERS["mixed_zero"].index("reclaim"), len(HAZARD_WALKERS["mixed_zero"])),
                          (0, 2)):   # at the page itself
        choices.choose(count, wanted)
    grammar = OpGrammar(ByteChoices(choices.to_bytes()))
    write = grammar.op(names_of(machine), machine)
    assert write == Op("write", process=0, addr=0x203000, value=1)
    OP_DISPATCH[write.name](kernel, write)
    assert grammar.op(names_of(machine), machine) == Op("reclaim", process=0, addr=0x203000)


def test_a_private_file_fault_may_be_followed_by_mapping_the_clean_folio_it_read_in():
    """make_folio's private file mapping: after the fault (a COW: the page-cache folio stays
    clean), half the time the folio is mapped again at a free place and read there."""
    from fuzz.engine.decode import MAKE_FILE_LENGTHS, MAKE_LENGTHS, MAKE_ORDERS, names_of
    from fuzz.implementation import OP_DISPATCH, reference_kernel

    machine, kernel = reference_kernel(4096)
    OP_DISPATCH["mmap"](kernel, Op("mmap", process=0, addr=0x200000, length=PMD_SIZE, prot="rw"))
    grammar, op = _act(machine, [(MAKE_ORDERS.index(4), len(MAKE_ORDERS)), (0, 4),
                                 (MAKE_LENGTHS.index(PMD_SIZE), len(MAKE_LENGTHS)), (2, 3), (0, 2),
                                 (MAKE_FILE_LENGTHS.index(CONT_PTE_SIZE), len(MAKE_FILE_LENGTHS)), (1, 2), (0, 2),
                                 (1, 2)])   # map it again shared
    ops = [op]
    for _ in range(4):
        OP_DISPATCH[ops[-1].name](kernel, ops[-1])
        ops.append(grammar.op(names_of(machine), machine))
    assert ops == [Op("file", file=0, length=CONT_PTE_SIZE, shmem=True),
                   Op("mmap", process=0, addr=0x400000, length=CONT_PTE_SIZE, prot="rw", file=0),
                   Op("fault", process=0, addr=0x400000, order=4),
                   Op("mmap", process=0, addr=0x600000, length=CONT_PTE_SIZE, prot="rw", file=0, shared=True),
                   Op("read", process=0, addr=0x600000)]
    OP_DISPATCH["read"](kernel, ops[-1])
    folio = machine.files[0].cache[0]
    assert machine.frames.folio_order[folio] == 4 and not machine.frames.folio_dirty[folio]


def test_a_folded_block_is_acted_on_in_part_and_a_folio_across_a_vma_edge_is_of_note():
    """A fault of a whole contpte block gives its folio the new hazard of a folded block: its
    walker acts on a part of it (uffd registers that part, splitting the VMA inside the block);
    a folio whose pages then lie in two VMAs is of note, and its walker may be fork."""
    from fuzz.engine.decode import ACT_CHANCE, HAZARD_WALKERS, IN_PART, WALKER_CHANCE, OpGrammar, names_of
    from fuzz.engine.notes import folio_addresses_of_note
    from fuzz.implementation import OP_DISPATCH, reference_kernel

    machine, kernel = reference_kernel(4096)
    for op in parse_script("mmap P0 0x200000 64K\nfault P0 0x200000 order=4\n").steps:
        OP_DISPATCH[op.name](kernel, op)
    assert folio_addresses_of_note(machine, 0) == []
    cont, vmas = HAZARD_WALKERS["cont"], HAZARD_WALKERS["vmas"]
    choices = RecordedChoices()
    for wanted, count in ((0, ACT_CHANCE), (0, WALKER_CHANCE), (cont.index("uffd"), len(cont)), (8, 16),
                          (IN_PART.index("page"), len(IN_PART)),
                          (0, ACT_CHANCE), (0, WALKER_CHANCE), (vmas.index("fork"), len(vmas)), (0, 2)):
        choices.choose(count, wanted)
    grammar = OpGrammar(ByteChoices(choices.to_bytes()))
    grammar.focus = (0, 0x200000, 0)   # as make_folio leaves it: the folio it faulted, no hazard before
    uffd = grammar.op(names_of(machine), machine)
    assert uffd == Op("uffd", process=0, addr=0x208000, length=4096)
    OP_DISPATCH[uffd.name](kernel, uffd)
    assert folio_addresses_of_note(machine, 0) == [0x200000 + i * 0x1000 for i in range(16)]
    assert grammar.op(names_of(machine), machine) == Op("fork", process=0)


def test_a_walker_after_entries_differ_in_the_write_bit_makes_the_whole_folio_read_only():
    """mprotect of part of an mTHP leaves its entries differing in the write bit (and across a
    VMA edge): mixed_write's walker makes them agree, read-only over the whole folio, so only
    the other bits can split a batch over it."""
    from fuzz.engine.decode import ACT_CHANCE, WALKER_CHANCE, OpGrammar, names_of
    from fuzz.engine.notes import HAZARDS

    machine = _machine_after("mmap P0 0x200000 64K\nfault P0 0x200000 order=4\nmprotect P0 0x200000 16K ro\n")
    choices = RecordedChoices()
    for wanted, count in ((0, ACT_CHANCE), (0, WALKER_CHANCE), (0, 2), (0, 2)):   # mixed_write, then vmas
        choices.choose(count, wanted)
    grammar = OpGrammar(ByteChoices(choices.to_bytes()))
    grammar.focus = (0, 0x20f000, 1 << HAZARDS.index("cont"))   # as the mprotect act left it
    assert grammar.op(names_of(machine), machine) == Op("mprotect", process=0, addr=0x200000, length=CONT_PTE_SIZE,
                                                        prot="ro")
