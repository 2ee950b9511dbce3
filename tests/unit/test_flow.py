"""Flow control inside one worker (pure): room, pausing and the lane gate."""

from __future__ import annotations

from services.inference.flow import FlowState, lane_gate, paused_partitions, room
from services.lanes import Lane
from services.scheduler.fleet import WorkerState

LANES = {0: Lane.HIGH, 1: Lane.NORMAL, 2: Lane.LOW, 3: Lane.LOW}


def test_lower_lanes_wait_while_a_higher_lane_has_backlog() -> None:
    assert lane_gate(LANES, {0: 5, 1: 9, 2: 9, 3: 0}) == {1, 2, 3}
    assert lane_gate(LANES, {0: 0, 1: 9, 2: 9, 3: 0}) == {2, 3}
    assert lane_gate(LANES, {0: 0, 1: 0, 2: 4, 3: None}) == set()
    assert lane_gate(LANES, {0: None, 1: None}) == set()


def test_only_stopping_pauses_everything_else_only_gated_and_releasing() -> None:
    full = FlowState(
        in_flight=8, in_flight_cap=8, uncommitted=8, max_uncommitted=32, accepting=True
    )
    assert room(full) == 0
    assert paused_partitions(full, {0, 1, 2}, set()) == set()  # a full cap only stops taking
    stopping = FlowState(
        in_flight=0, in_flight_cap=8, uncommitted=0, max_uncommitted=32, accepting=False
    )
    assert paused_partitions(stopping, {0, 1, 2}, set()) == {0, 1, 2}
    open_ = FlowState(
        in_flight=2, in_flight_cap=8, uncommitted=2, max_uncommitted=32, accepting=True
    )
    assert room(open_) == 6
    assert paused_partitions(open_, {0, 1, 2}, {1}, gated={2}) == {1, 2}


def test_a_worker_is_gone_after_the_timeout_or_when_leaving() -> None:
    beat = {
        "worker_id": "w",
        "pool": "spot",
        "capacity": 3,
        "healthy": True,
        "draining": False,
        "leaving": False,
        "owned": [1],
    }
    state = WorkerState(beat, received_at_ms=1_000)
    assert state.alive(now_ms=5_000, timeout_ms=4_000)
    assert not state.alive(now_ms=5_001, timeout_ms=4_000)
    assert not WorkerState({**beat, "leaving": True}, 1_000).alive(1_000, 4_000)
    assert state.view().capacity == 3 and state.owned == frozenset({1})
