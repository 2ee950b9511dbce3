"""Flow control inside one worker (pure): room, pausing and the lane gate."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from services.inference.flow import (
    FlowState,
    LaneGate,
    lane_credit,
    lane_gate,
    paused_partitions,
    room,
)
from services.lanes import Lane
from services.scheduler.fleet import WorkerState

LANES = {0: Lane.HIGH, 1: Lane.NORMAL, 2: Lane.LOW, 3: Lane.LOW}


def test_lower_lanes_wait_while_a_higher_lane_has_backlog() -> None:
    assert lane_gate(LANES, {0: 5, 1: 9, 2: 9, 3: 0}).held == {1, 2, 3}
    assert lane_gate(LANES, {0: 0, 1: 9, 2: 9, 3: 0}).held == {2, 3}
    assert lane_gate(LANES, {0: 0, 1: 0, 2: 4, 3: None}).held == set()
    assert lane_gate(LANES, {0: None, 1: None}) == LaneGate()


def test_an_owed_share_turns_the_gate_round_for_the_records_owed() -> None:
    gate = lane_gate(LANES, {0: 5, 1: 0, 2: 9, 3: 0}, credit=2.7)
    assert gate == LaneGate(frozenset({0}), budget=2, busy_rank=0)
    gate = lane_gate(LANES, {0: 0, 1: 5, 2: 9, 3: 0}, credit=1)
    assert gate == LaneGate(frozenset({0, 1}), budget=1, busy_rank=1)
    # Owed, but no lower lane has anything waiting: they stay held, nothing is capped.
    assert lane_gate(LANES, {0: 5, 1: 0, 2: 0, 3: 0}, credit=3).held == {1, 2, 3}
    assert lane_gate(LANES, {0: 5, 1: 0, 2: 9, 3: 0}, credit=0.99).held == {1, 2, 3}


def test_strict_priority_owes_nothing() -> None:
    assert lane_credit(0.0, 0.0, 0, {0: 1000}, burst=50) == 0.0
    assert lane_credit(3.0, 0.0, 0, {0: 1}, burst=50) == 0.0


def _saturated_rounds(
    share: float, burst: int, rounds: list[int], prompt: bool
) -> tuple[int, int, int, float]:
    """Two lanes that never empty (high rank 0, low rank 2); each round takes up to the
    drawn count, from the lanes the gate lets in, within its budget. In the low lanes'
    turn their records come at once when `prompt`, else a drawn count of them, none
    included (a fetch round trip after a resume).
    Returns (high taken, low taken, the most low records owed at once, owed at the end)."""
    credit, high, low, most = 0.0, 0, 0, 0
    lanes = {0: Lane.HIGH, 1: Lane.LOW}
    for drawn in rounds:
        gate = lane_gate(lanes, {0: 1, 1: 1}, credit)
        most = max(most, int(credit))
        if gate.budget is None:
            assert gate.held == {1}
            taken = {0: drawn}
        else:
            assert gate.held == {0}
            taken = {2: gate.budget if prompt else min(drawn - 1, gate.budget)}
        high += taken.get(0, 0)
        low += taken.get(2, 0)
        credit = lane_credit(credit, share, gate.busy_rank, taken, burst)
    return high, low, most, credit


@given(
    share=st.sampled_from([0.01, 0.05, 0.1, 0.25, 0.5]),
    burst=st.integers(1, 64),
    rounds=st.lists(st.integers(1, 500), min_size=1, max_size=300),
    prompt=st.booleans(),
)
def test_lower_lanes_never_take_more_than_their_share(
    share: float, burst: int, rounds: list[int], prompt: bool
) -> None:
    high, low, most, _ = _saturated_rounds(share, burst, rounds, prompt)
    assert low <= share * (high + low) + 1e-6
    assert most <= burst


@given(
    share=st.sampled_from([0.01, 0.05, 0.1, 0.25, 0.5]),
    rounds=st.lists(st.integers(1, 8), min_size=50, max_size=400),
)
def test_lower_lanes_get_their_share_when_their_records_are_there(
    share: float, rounds: list[int]
) -> None:
    """Taking a few records per round (a full engine frees slots one by one), the low
    lane gets its share, short only of what it is owed now, which the next round lets
    in: never more than one record plus one round's earnings."""
    high, low, _, owed = _saturated_rounds(share, 64, rounds, prompt=True)
    assert abs(low - (share * (high + low) - (1 - share) * owed)) < 1e-6
    assert owed < 1 + max(rounds) * share / (1 - share) + 1e-6


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
