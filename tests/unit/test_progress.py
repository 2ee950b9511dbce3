from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.inference.flow import FlowState, paused_partitions, room
from services.inference.progress import PartitionProgress


@given(st.integers(1, 60), st.randoms(use_true_random=False))
def test_outputs_are_published_once_and_only_behind_the_commit_point(
    count: int, rnd: random.Random
) -> None:
    progress: PartitionProgress[int] = PartitionProgress(committed_offset=100)
    offsets = list(range(100, 100 + count))
    for offset in offsets:
        progress.started(offset)
    published: list[int] = []
    order = offsets[:]
    rnd.shuffle(order)
    for offset in order:
        progress.finished(offset, [offset])
        if rnd.random() < 0.5:
            plan = progress.plan()
            if plan is not None:
                # Nothing at or past the commit point may go out with it.
                assert all(o < plan.next_offset for o in plan.outputs)
                # Everything below the commit point has finished.
                assert set(range(100, plan.next_offset)) <= set(published) | set(plan.outputs)
                published += plan.outputs
                progress.committed(plan)
    final = progress.plan()
    if final is not None:
        published += final.outputs
        progress.committed(final)
    assert sorted(published) == offsets
    assert len(published) == len(set(published))
    assert progress.committed_offset == 100 + count
    assert progress.uncommitted == 0


def test_the_lowest_in_flight_offset_holds_the_commit_back() -> None:
    progress: PartitionProgress[str] = PartitionProgress(0)
    for offset in range(3):
        progress.started(offset)
    progress.finished(2, ["c"])
    progress.finished(1, ["b"])
    assert progress.plan() is None  # offset 0 still running
    progress.finished(0, ["a"])
    plan = progress.plan()
    assert plan is not None
    assert (plan.next_offset, plan.outputs) == (3, ["a", "b", "c"])


def test_a_failed_commit_keeps_the_outputs_for_the_next_try() -> None:
    progress: PartitionProgress[str] = PartitionProgress(0)
    progress.started(0)
    progress.finished(0, ["a"])
    first = progress.plan()
    assert first is not None
    # commit failed: committed() not called
    again = progress.plan()
    assert again == first


@given(
    st.integers(0, 300),
    st.integers(1, 300),
    st.integers(0, 1200),
    st.integers(1, 1200),
    st.booleans(),
)
def test_room_never_lets_a_bound_be_passed(
    in_flight: int, cap: int, uncommitted: int, max_uncommitted: int, accepting: bool
) -> None:
    state = FlowState(in_flight, cap, uncommitted, max_uncommitted, accepting)
    budget = room(state)
    assert budget >= 0
    if budget:
        assert accepting
        assert in_flight + budget <= cap
        assert uncommitted + budget <= max_uncommitted
    owned = {1, 2, 3}
    paused = paused_partitions(state, owned, releasing={3})
    # Only a worker taking no work at all pauses everything; a full cap just stops taking.
    assert paused == (owned if not accepting else {3})


def test_a_reached_end_moves_the_commit_past_markers_once_below_it_finished() -> None:
    """Offsets 12 and 13 are a transaction's commit marker and an aborted record: the
    consumer reports reaching 14 with nothing more delivered."""
    progress: PartitionProgress[str] = PartitionProgress(10)
    progress.started(10)
    progress.started(11)
    progress.reached(14)
    progress.reached(12)  # an older end seen late changes nothing
    assert progress.next_to_consume == 14
    progress.finished(11, ["b"])
    assert progress.plan() is None  # 10 is still in flight
    progress.finished(10, ["a"])
    plan = progress.plan()
    assert plan is not None and (plan.next_offset, plan.outputs) == (14, ["a", "b"])
    progress.committed(plan)
    assert progress.plan() is None
    with pytest.raises(ValueError):
        progress.started(13)
