from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.lanes import Lane, LaneLayout, unconsumed
from services.routing import Cell, ModelPartition, RequestLayout, cell_backlog

layouts = st.builds(
    LaneLayout,
    st.integers(1, 16),
    st.integers(1, 16),
    st.integers(1, 16),
)


@given(layouts, st.sampled_from(list(Lane)), st.binary(max_size=64))
def test_a_key_lands_in_its_own_lane(layout: LaneLayout, lane: Lane, key: bytes) -> None:
    partition = layout.partition_for(lane, key)
    assert partition in layout.partitions(lane)
    assert layout.lane_of(partition) is lane
    assert layout.partition_for(lane, key) == partition


@given(layouts)
def test_lanes_tile_the_topic_in_priority_order(layout: LaneLayout) -> None:
    ranges = [layout.partitions(lane) for lane in (Lane.HIGH, Lane.NORMAL, Lane.LOW)]
    assert [p for r in ranges for p in r] == list(range(layout.total))


def test_a_lane_without_partitions_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one"):
        LaneLayout(0, 1, 1)


def test_backlog_is_end_minus_committed_per_lane() -> None:
    layout = LaneLayout(1, 2, 1)
    ends, starts = {0: 10, 1: 5, 2: 7, 3: 100}, {0: 0, 1: 2, 2: 0, 3: 90}
    committed: dict[int, int | None] = {0: 4, 1: None, 2: 7, 3: None}
    per_partition = {p: unconsumed(starts[p], ends[p], committed[p]) for p in ends}
    # partition 1 never committed: counts from its start (2); 3 from its start (90).
    assert per_partition == {0: 6, 1: 3, 2: 0, 3: 10}
    requests = RequestLayout("t", layout)
    backlog = cell_backlog(requests, {ModelPartition("m", p): n for p, n in per_partition.items()})
    assert backlog == {Cell("m", Lane.HIGH): 6, Cell("m", Lane.NORMAL): 3, Cell("m", Lane.LOW): 10}


def test_a_commit_below_the_log_start_counts_from_the_start() -> None:
    assert unconsumed(start=50, end=60, committed=10) == 10
