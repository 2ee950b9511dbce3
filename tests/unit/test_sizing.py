"""The worker's intake bounds, from its settings and its engine's concurrency."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from services.inference.settings import (
    MIN_DEFAULT_IN_FLIGHT,
    MIN_DEFAULT_UNCOMMITTED,
    InferenceOptions,
)
from services.inference.sizing import Sizing


def test_defaults_follow_the_engine_above_their_floors() -> None:
    narrow = Sizing(InferenceOptions(), engine_concurrency=1)
    assert narrow.in_flight_cap == MIN_DEFAULT_IN_FLIGHT
    assert narrow.max_uncommitted == MIN_DEFAULT_UNCOMMITTED
    wide = Sizing(InferenceOptions(), engine_concurrency=4096)
    assert wide.in_flight_cap == 8192 and wide.max_uncommitted == 4 * 8192
    set_ = Sizing(InferenceOptions(in_flight_cap=3, max_uncommitted=40), engine_concurrency=64)
    assert (set_.in_flight_cap, set_.max_uncommitted) == (3, 40)


def test_strict_priority_holds_nothing() -> None:
    assert Sizing(InferenceOptions(lower_lane_share=0), 8).hold_window == 0
    assert Sizing(InferenceOptions(lower_lane_share=0.05), 8).hold_window == 8192 // 8


@given(
    cap=st.integers(1, 10_000),
    share=st.floats(0, 0.5),
    uncommitted=st.integers(1, 100_000),
    max_records=st.integers(1, 100_000),
)
def test_bounds_leave_room_for_a_round_and_commit_before_intake_stalls(
    cap: int, share: float, uncommitted: int, max_records: int
) -> None:
    options = InferenceOptions(
        in_flight_cap=cap,
        lower_lane_share=share,
        max_uncommitted=uncommitted,
        commit_max_records=max_records,
    )
    sizing = Sizing(options, engine_concurrency=1)
    # What one round (at most the in-flight cap) earns the lower lanes, and one more.
    assert sizing.lower_lane_burst >= cap * share / (1 - share) + 1
    assert sizing.commit_size_bound <= uncommitted // 2  # fires before intake stalls
    assert sizing.commit_size_bound <= max_records
    assert sizing.hold_window <= uncommitted // 8
