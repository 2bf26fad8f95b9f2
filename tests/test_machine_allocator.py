"""The frame and swap-slot allocators (SPEC §2.1).

An order-k request takes the lowest naturally aligned run of 2^k free frames
(or slots): the answer depends only on which frames are free, never on the
history that freed them.
"""

from __future__ import annotations

import random

import numpy as np
import pytest

from machine import FREE_FOLIO, FrameTable, Machine, MachineBug, SwapSpace

ORDERS = (0, 2, 3, 4, 5, 6, 7, 8, 9)


def release(frames: FrameTable, folio: int) -> None:
    """Drop the allocation reference and free the folio."""
    frames.folio_refcount[folio] = 0
    frames.folio_free(folio)


def occupy(frames: FrameTable, pfns) -> None:
    """Mark pfns allocated as order-0 folios without going through the allocator's search."""
    pfns = np.array(list(pfns), np.int64)
    frames.folio_set_frames(pfns, 0)
    frames.folio_refcount[pfns] = 1


def free_set(frames: FrameTable) -> frozenset[int]:
    return frozenset(map(int, np.flatnonzero(frames.page_folio[:frames.nr_frames] == FREE_FOLIO)))


def lowest_aligned_free_run(free: set[int], nr_frames: int, order: int) -> int | None:
    """The rule, written plainly."""
    nr_pages = 1 << order
    for start in range(0, nr_frames - nr_pages + 1, nr_pages):
        if all(pfn in free for pfn in range(start, start + nr_pages)):
            return start
    return None


# --- the rule ---------------------------------------------------------------

@pytest.mark.parametrize("order", ORDERS)
def test_first_allocation_of_each_order_takes_pfn_0(order):
    frames = FrameTable(4096)
    assert frames.folio_alloc(order) == 0


def test_order_0_allocations_count_up_from_0():
    frames = FrameTable(64)
    assert [frames.folio_alloc(0) for _ in range(5)] == [0, 1, 2, 3, 4]


def test_order_k_takes_the_lowest_naturally_aligned_run():
    frames = FrameTable(4096)
    occupy(frames, [3])
    assert frames.folio_alloc(2) == 4
    assert frames.folio_alloc(4) == 16
    assert frames.folio_alloc(0) == 0  # lower free frames are still used first
    assert frames.folio_alloc(3) == 8


def test_order_9_is_2mib_aligned():
    frames = FrameTable(4096)
    occupy(frames, [0])
    assert frames.folio_alloc(9) == 512
    occupy(frames, [1024 + 511])
    assert frames.folio_alloc(9) == 1536


def test_unaligned_free_run_of_the_right_length_is_not_used():
    frames = FrameTable(64)
    occupy(frames, range(64))
    for pfn in range(8, 24):  # 16 free frames, but straddling two aligned runs of 16
        release(frames, pfn)
    assert frames.find_free_run(4) is None
    assert frames.folio_alloc(4) is None
    assert frames.folio_alloc(3) == 8


def test_allocation_returns_none_when_no_run_is_free():
    frames = FrameTable(1024)
    assert frames.folio_alloc(9) == 0
    assert frames.folio_alloc(0) == 512
    assert frames.folio_alloc(9) is None
    assert frames.folio_alloc(8) == 768
    before = {name: getattr(frames, name).copy() for name in FrameTable.ARRAYS}
    assert frames.folio_alloc(8) is None
    for name in FrameTable.ARRAYS:  # a failed allocation changes nothing
        assert np.array_equal(getattr(frames, name), before[name]), name


def test_allocation_on_a_full_machine_returns_none_for_every_order():
    frames = FrameTable(16)
    occupy(frames, range(16))
    for order in ORDERS:
        assert frames.folio_alloc(order) is None


@pytest.mark.parametrize("order", [0, 2, 4, 9])
def test_allocated_folio_has_refcount_1_order_and_page_folio_set(order):
    frames = FrameTable(4096)
    occupy(frames, [0])
    folio = frames.folio_alloc(order)
    nr_pages = 1 << order
    assert folio == (1 if order == 0 else nr_pages)  # pfn 0 is taken
    assert frames.folio_refcount[folio] == 1
    assert frames.folio_order[folio] == order
    assert frames.folio_nr_pages(folio) == nr_pages
    assert (frames.page_folio[folio:folio + nr_pages] == folio).all()
    assert frames.page_folio[folio + nr_pages] == FREE_FOLIO
    for page in range(folio, folio + nr_pages):
        assert frames.page_folio_of(page) == folio
        assert not frames.is_free(page)
    # every other field still at its free value
    for name in ("page_mapcount", "page_anon_exclusive", "page_data", "folio_large_mapcount",
                 "folio_entire_mapcount", "folio_pincount", "folio_mm_id", "folio_mm_id_mapcount",
                 "folio_mm_ids_shared", "folio_anon", "folio_index", "folio_lineage"):
        assert not getattr(frames, name).any(), name


@pytest.mark.parametrize("order", [1, -1, 10])
def test_folio_alloc_refuses_orders_outside_0_2_to_9(order):
    with pytest.raises(MachineBug):
        FrameTable(4096).folio_alloc(order)


def test_page_folio_of_a_free_frame_is_a_machine_bug():
    with pytest.raises(MachineBug):
        FrameTable(16).page_folio_of(3)


# --- free ------------------------------------------------------------------

@pytest.mark.parametrize("order", [0, 2, 9])
def test_free_resets_every_field_to_its_free_value(order):
    frames = FrameTable(2048)
    pristine = FrameTable(2048)
    frames.folio_alloc(0)
    folio = frames.folio_alloc(order)
    nr_pages = 1 << order
    span = slice(folio, folio + nr_pages)
    # Dirty every field that may legally be non-zero when the folio is freed.
    frames.page_anon_exclusive[span] = True
    frames.page_data[span] = 0xDEAD
    frames.folio_entire_mapcount[folio] = 0
    frames.folio_mm_id[folio] = (3, 4)
    frames.folio_mm_id_mapcount[folio] = (0, 0)
    frames.folio_mm_ids_shared[folio] = True
    frames.folio_anon[folio] = True
    frames.folio_index[folio] = 0x7777
    frames.folio_lineage[folio] = 5
    release(frames, folio)
    for name in FrameTable.ARRAYS:
        assert np.array_equal(getattr(frames, name)[span], getattr(pristine, name)[span]), name
    assert all(frames.is_free(page) for page in range(folio, folio + nr_pages))
    assert not frames.is_free(0)
    assert frames.folio_alloc(order) == folio


def test_free_refuses_a_folio_with_references():
    frames = FrameTable(64)
    folio = frames.folio_alloc(2)
    with pytest.raises(MachineBug):
        frames.folio_free(folio)


@pytest.mark.parametrize("field, where", [
    ("folio_large_mapcount", "head"),
    ("folio_pincount", "head"),
    ("page_mapcount", "tail"),
])
def test_free_refuses_a_mapped_or_pinned_folio(field, where):
    frames = FrameTable(64)
    folio = frames.folio_alloc(2)
    frames.folio_refcount[folio] = 0
    getattr(frames, field)[folio + (2 if where == "tail" else 0)] = 1
    with pytest.raises(MachineBug):
        frames.folio_free(folio)


def test_free_refuses_a_tail_page_or_a_free_frame():
    frames = FrameTable(64)
    folio = frames.folio_alloc(2)
    frames.folio_refcount[folio] = 0
    with pytest.raises(MachineBug):
        frames.folio_free(folio + 1)
    with pytest.raises(MachineBug):
        frames.folio_free(40)


def test_clear_frames_resets_split_leftovers():
    frames = FrameTable(64)
    folio = frames.folio_alloc(4)
    frames.page_anon_exclusive[folio + 8] = True
    frames.page_data[folio + 9] = 5
    frames.clear_frames(folio + 8, 8)
    assert all(frames.is_free(p) for p in range(8, 16))
    assert not frames.page_anon_exclusive.any() and not frames.page_data.any()
    assert frames.folio_alloc(3) == 8


def test_clone_is_a_deep_copy():
    frames = FrameTable(64)
    folio = frames.folio_alloc(2)
    other = frames.clone()
    frames.page_data[folio] = 9
    frames.folio_mm_id[folio, 1] = 3
    assert other.page_data[folio] == 0 and other.folio_mm_id[folio, 1] == 0
    assert other.nr_frames == 64
    assert other.folio_alloc(0) == 4


# --- history independence ---------------------------------------------------

def random_history(frames: FrameTable, rng: random.Random, steps: int) -> None:
    """Random allocations (all orders) and frees of live folios."""
    live: list[int] = []
    for _ in range(steps):
        if live and rng.random() < 0.4:
            release(frames, live.pop(rng.randrange(len(live))))
        else:
            folio = frames.folio_alloc(rng.choice(ORDERS))
            if folio is not None:
                live.append(folio)


def reach_free_set(frames: FrameTable, target: frozenset[int]) -> None:
    """Drive frames to exactly target's free set through the allocator and free only."""
    # Free every folio touching a frame that must become free.
    heads = {int(frames.page_folio[pfn]) for pfn in target if not frames.is_free(pfn)}
    for head in sorted(heads):
        release(frames, head)
    # Now free ⊇ target: take order-0 frames (lowest first) until no extra frame is free.
    extra = free_set(frames) - target
    taken = []
    while extra and (not taken or taken[-1] < max(extra)):
        taken.append(frames.folio_alloc(0))
    for pfn in taken:
        if pfn in target:
            release(frames, pfn)
    assert free_set(frames) == target


@pytest.mark.parametrize("seed", range(200))
def test_allocator_is_history_independent(seed):
    nr_frames = 1024
    rng = random.Random(seed)
    first = FrameTable(nr_frames)
    random_history(first, rng, rng.randrange(1, 60))
    target = free_set(first)

    second = FrameTable(nr_frames)
    random_history(second, random.Random(seed + 100_000), rng.randrange(1, 60))
    reach_free_set(second, target)

    # The same answers for every order, and the rule's answer.
    for order in ORDERS:
        expected = lowest_aligned_free_run(set(target), nr_frames, order)
        assert first.find_free_run(order) == second.find_free_run(order) == expected, order
    # Free frames are canonical in both.
    free = np.array(sorted(target), dtype=np.int64)
    for name in FrameTable.ARRAYS:
        assert np.array_equal(getattr(first, name)[free], getattr(second, name)[free]), name
    # The same sequence of next allocations.
    for _ in range(12):
        order = rng.choice(ORDERS)
        assert first.folio_alloc(order) == second.folio_alloc(order)


# --- odd machine sizes ------------------------------------------------------

def test_frames_not_a_multiple_of_512_still_serve_small_orders():
    machine = Machine(1000)
    frames = machine.frames
    assert frames.nr_frames == 1000 and machine.swap.nr_slots == 1000
    assert frames.folio_alloc(9) == 0
    assert frames.folio_alloc(9) is None  # 512..999 is only 488 frames
    assert frames.folio_alloc(8) == 512
    assert frames.folio_alloc(8) is None  # 768..999 is 232 frames
    assert frames.folio_alloc(7) == 768
    assert frames.folio_alloc(6) == 896
    assert frames.folio_alloc(5) == 960
    assert frames.folio_alloc(4) is None  # 992..999 is 8 frames
    assert frames.folio_alloc(3) == 992
    assert frames.folio_alloc(0) is None


@pytest.mark.parametrize("nr_frames", [1, 3, 100])
def test_tiny_machines_allocate_what_fits(nr_frames):
    frames = FrameTable(nr_frames)
    for order in ORDERS:
        expected = 0 if 1 << order <= nr_frames else None
        assert frames.find_free_run(order) == expected
    got = [frames.folio_alloc(0) for _ in range(nr_frames)]
    assert got == list(range(nr_frames))
    assert frames.folio_alloc(0) is None


def test_nr_frames_must_be_positive():
    with pytest.raises(MachineBug):
        FrameTable(0)


def test_default_machine_has_4096_frames_and_as_many_slots():
    machine = Machine()
    assert machine.frames.nr_frames == 4096
    assert machine.swap.nr_slots == 4096


# --- swap slots -------------------------------------------------------------
# Slot 0 is never handed out: a non-exclusive swap PTE for slot 0 would be the
# all-zero pte_none (SPEC §2.2 encoding). machine/swap.py treats it as the
# kernel's swap header, permanently in use, so an aligned run containing it is
# never free. Otherwise the frame rule applies.

@pytest.mark.parametrize("order", ORDERS)
def test_swap_slot_0_is_never_handed_out(order):
    swap = SwapSpace(4096)
    assert swap.find_free_slots(order) == (1 if order == 0 else 1 << order)


def test_swap_slots_take_the_lowest_naturally_aligned_free_run():
    swap = SwapSpace(64)
    assert swap.find_free_slots(0) == 1
    swap.swap_count[3] = 1
    assert swap.find_free_slots(0) == 1
    assert swap.find_free_slots(2) == 4
    assert swap.find_free_slots(4) == 16
    swap.swap_count[1] = 2
    assert swap.find_free_slots(0) == 2
    swap.swap_count[4] = 1
    assert swap.find_free_slots(2) == 8


def test_swap_slots_unaligned_run_is_not_used_and_none_when_full():
    swap = SwapSpace(64)
    swap.swap_count[:] = 1
    swap.swap_count[8:24] = 0
    assert swap.find_free_slots(4) is None
    assert swap.find_free_slots(3) == 8
    swap.swap_count[:] = 1
    assert swap.find_free_slots(0) is None


def test_swap_slots_depend_only_on_counts_not_on_data():
    swap = SwapSpace(64)
    swap.swap_data[4:8] = 7  # stale data does not reserve a slot
    assert swap.find_free_slots(2) == 4


def test_swap_slots_with_a_size_not_multiple_of_the_run():
    swap = SwapSpace(1000)
    assert swap.find_free_slots(9) is None  # run 0 holds slot 0; 512..999 is short
    assert swap.find_free_slots(8) == 256
    assert swap.find_free_slots(3) == 8
    swap.swap_count[8] = 1
    assert swap.find_free_slots(3) == 16
    assert SwapSpace(1).find_free_slots(0) is None


@pytest.mark.parametrize("seed", range(200))
def test_swap_slot_allocator_is_history_independent(seed):
    rng = random.Random(seed)
    nr_slots = 512
    counts = np.array([rng.choice((0, 0, 1, 2)) for _ in range(nr_slots)], dtype=np.int32)
    first, second = SwapSpace(nr_slots), SwapSpace(nr_slots)
    first.swap_count[:] = counts
    # Second: a different history reaching the same free set.
    second.swap_count[:] = np.where(counts > 0, 5, rng.randrange(1, 4))
    for slot in map(int, np.flatnonzero(counts == 0)):
        second.swap_count[slot] = 0
        second.swap_free_slot(slot)
    free = set(map(int, np.flatnonzero(counts == 0))) - {0}  # slot 0: the header
    for order in ORDERS:
        expected = lowest_aligned_free_run(free, nr_slots, order)
        assert first.find_free_slots(order) == second.find_free_slots(order) == expected


def test_swap_free_slot_clears_data_and_refuses_a_referenced_slot():
    swap = SwapSpace(8)
    swap.swap_data[2] = 99
    swap.swap_count[2] = 1
    with pytest.raises(MachineBug):
        swap.swap_free_slot(2)
    assert swap.swap_data[2] == 99
    swap.swap_count[2] = 0
    swap.swap_free_slot(2)
    assert swap.swap_data[2] == 0


def test_swap_clone_is_a_deep_copy():
    swap = SwapSpace(8)
    other = swap.clone()
    swap.swap_count[1] = 1
    swap.swap_data[1] = 4
    assert other.swap_count[1] == 0 and other.swap_data[1] == 0 and other.nr_slots == 8


# --- the allocator's index ---------------------------------------------------

def assert_index_matches(frames: FrameTable) -> None:
    free = frames.page_folio[:frames.nr_frames] == FREE_FOLIO
    blocks = -(-frames.nr_frames // 512)
    padded = np.zeros(blocks * 512, bool)
    padded[:frames.nr_frames] = free
    assert np.array_equal(frames.block_nr_free, padded.reshape(blocks, 512).sum(axis=1))
    assert frames.nr_free_frames == int(free.sum())
    assert not frames.block_nr_free[:frames.first_free_block].any()


@pytest.mark.parametrize("seed", range(40))
def test_indexed_search_answers_the_plain_rule_on_several_blocks(seed):
    rng = random.Random(seed)
    nr_frames = rng.choice([1500, 2048, 3000])
    frames = FrameTable(nr_frames)
    live: list[int] = []
    for _ in range(300):
        if live and rng.random() < 0.45:
            victims = [live.pop(rng.randrange(len(live))) for _ in range(min(len(live), rng.randint(1, 3)))]
            for folio in victims:
                frames.folio_refcount[folio] = 0
            frames.folios_free(np.array(victims))
        elif rng.random() < 0.2:
            nr_folios = rng.randint(0, 40)
            expected = sorted(free_set(frames))[:nr_folios]
            got = frames.folios_alloc_order0(nr_folios)
            if len(expected) < nr_folios:
                assert got is None
            else:
                assert list(got) == expected
                live.extend(map(int, got))
        else:
            order = rng.choice(ORDERS)
            expected = lowest_aligned_free_run(set(free_set(frames)), nr_frames, order)
            folio = frames.folio_alloc(order)
            assert folio == expected
            if folio is not None:
                live.append(folio)
        assert_index_matches(frames)


def test_folio_set_frames_refuses_allocated_frames():
    frames = FrameTable(64)
    frames.folio_alloc(2)
    with pytest.raises(MachineBug):
        frames.folio_set_frames(np.array([0]), 0)


def test_swap_search_in_chunks_answers_the_plain_rule():
    rng = random.Random(7)
    swap = SwapSpace(40_000)
    used = rng.sample(range(40_000), 30_000)
    swap.swap_count[used] = 1
    free = set(range(1, 40_000)) - set(used)
    for order in ORDERS:
        expected = lowest_aligned_free_run(free, 40_000, order)
        if expected == 0:  # slot 0 is never handed out; the rule then skips the first run
            expected = lowest_aligned_free_run(free - set(range(1 << order)), 40_000, order)
        assert swap.find_free_slots(order) == expected, order
    assert list(swap.find_free_slots_order0(5)) == sorted(free)[:5]
    assert swap.find_free_slots_order0(len(free) + 1) is None
