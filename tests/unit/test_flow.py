"""Flow control inside one worker (pure): room, pausing and the lane gate."""

from __future__ import annotations

import math
from dataclasses import dataclass

from hypothesis import example, given, settings
from hypothesis import strategies as st

from services.inference.flow import (
    FlowState,
    LaneGate,
    LaneRound,
    lane_credit,
    lane_gate,
    paused_partitions,
    room,
    starts_now,
)
from services.lanes import Lane
from services.routing import ModelPartition
from services.scheduler.fleet import WorkerState

LANES = {0: Lane.HIGH, 1: Lane.NORMAL, 2: Lane.LOW, 3: Lane.LOW}


def test_lower_lanes_are_held_while_a_higher_lane_has_backlog() -> None:
    assert lane_gate(LANES, {0: 5, 1: 9, 2: 9, 3: 0}, held=0, hold_window=10) == LaneGate(0)
    assert lane_gate(LANES, {0: 5, 1: 9, 2: 9, 3: 0}, held=10, hold_window=10) == LaneGate(
        0, frozenset({1, 2, 3})
    )
    assert lane_gate(LANES, {0: 0, 1: 9, 2: 9, 3: 0}, held=3, hold_window=1).paused == {2, 3}
    assert lane_gate(LANES, {0: 0, 1: 0, 2: 4, 3: None}, held=0, hold_window=1).paused == set()
    assert lane_gate(LANES, {0: None, 1: None}, held=9, hold_window=1) == LaneGate()
    # Strict priority: nothing is held, lower lanes pause.
    assert lane_gate(LANES, {0: 5}, held=0, hold_window=0).paused == {1, 2, 3}


def test_a_record_runs_now_unless_a_higher_lane_is_busy_and_nothing_is_owed() -> None:
    assert starts_now(2, None, 0) and starts_now(0, 0, 0) and starts_now(1, 1, 0)
    assert not starts_now(2, 0, 0) and starts_now(2, 0, 1)
    round_ = LaneRound(busy_rank=0, owed=2)
    assert round_.take(0) is None and round_.take(2) == "high" and round_.take(1) == "high"
    assert round_.owed == 0 and round_.started == {0: 1, 1: 1, 2: 1}
    assert LaneRound(None, 0).take(2) is None


def test_strict_priority_owes_nothing() -> None:
    assert lane_credit(0.0, 0.0, 0, {0: 1000}, burst=50) == 0.0
    assert lane_credit(3.0, 0.0, 0, {0: 1}, burst=50) == 0.0


@dataclass
class Saturated:
    """Two lanes that never empty (high, low) on a worker: what ran, what was held."""

    high: int = 0
    low: int = 0
    most_held: int = 0
    owed: float = 0.0


def _saturated_rounds(
    share: float, burst: int, window: int, arrivals: list[tuple[int, int]]
) -> Saturated:
    """Each round the consumer hands over (high, low) records, low ones only while
    their partition is not paused; the worker runs held records first, as it does."""
    lanes = {0: Lane.HIGH, 1: Lane.LOW}
    state, held = Saturated(), 0
    for high_n, low_n in arrivals:
        gate = lane_gate(lanes, {0: 1, 1: 1}, held, window)
        round_ = LaneRound(gate.busy_rank, int(state.owed))
        while held and starts_now(2, gate.busy_rank, round_.owed):
            held -= 1
            round_.take(2)
        for _ in range(high_n):
            round_.take(0)
        for _ in range(0 if 1 in gate.paused else low_n):
            if starts_now(2, gate.busy_rank, round_.owed):
                round_.take(2)
            else:
                held += 1
        state.high += round_.started[0]
        state.low += round_.started[2]
        state.most_held = max(state.most_held, held)
        state.owed = lane_credit(state.owed, share, gate.busy_rank, round_.started, burst)
    return state


SHARES = st.sampled_from([0.01, 0.05, 0.1, 0.25, 0.5])
ARRIVALS = st.lists(st.tuples(st.integers(0, 500), st.integers(0, 500)), min_size=1, max_size=200)


@settings(max_examples=500)
@given(share=SHARES, burst=st.integers(1, 64), window=st.integers(0, 2000), arrivals=ARRIVALS)
def test_lower_lanes_never_run_more_than_their_share_and_holding_is_bounded(
    share: float, burst: int, window: int, arrivals: list[tuple[int, int]]
) -> None:
    ran = _saturated_rounds(share, burst, window, arrivals)
    assert ran.low <= share * (ran.high + ran.low) + 1e-6
    assert ran.most_held < window + 500


@settings(max_examples=500)
@example(share=0.25, extra=0, arrivals=[(5, 1), (8, 1)])  # owed once capped before spending
@given(
    share=SHARES,
    extra=st.integers(0, 64),
    # "There": each round brings at least what one round can earn them (8 high records
    # at share 0.5 earn 8); sparser arrivals leave credit unspent, rightly (hypothesis
    # found share=0.5 with one low record a round).
    arrivals=st.lists(st.tuples(st.integers(0, 8), st.integers(9, 500)), min_size=1),
)
def test_lower_lanes_get_their_share_when_their_records_are_there(
    share: float, extra: int, arrivals: list[tuple[int, int]]
) -> None:
    """With low records arriving, a cap on what is owed above one round's earnings (8
    high records here; the worker's in-flight cap) and a window as large, the low lane
    runs its share, short only of what it is owed now, which the next round runs:
    never more than one record plus one round's earnings."""
    burst = math.ceil(8 * share / (1 - share)) + 1 + extra
    ran = _saturated_rounds(share, burst, burst, arrivals)
    assert abs(ran.low - (share * (ran.high + ran.low) - (1 - share) * ran.owed)) < 1e-6
    assert ran.owed < 1 + 8 * share / (1 - share) + 1e-6


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
        "owned": [],
        "owned_partitions": [{"model": "m", "partition": 1}],
        "served_models": ["m"],
    }
    state = WorkerState(beat, received_at_ms=1_000)
    assert state.alive(now_ms=5_000, timeout_ms=4_000)
    assert not state.alive(now_ms=5_001, timeout_ms=4_000)
    assert not WorkerState({**beat, "leaving": True}, 1_000).alive(1_000, 4_000)
    assert state.view().capacity == 3 and state.owned == frozenset({ModelPartition("m", 1)})
    assert state.view().models == frozenset({"m"})
