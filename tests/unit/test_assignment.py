"""The assignment rules, stated as properties over random fleets and backlogs."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from services.lanes import Lane, LaneLayout
from services.scheduler.assignment import (
    Assignment,
    PartitionView,
    Pool,
    WorkerView,
    assign,
    publishable,
    to_resend,
)

LAYOUT = LaneLayout(high=3, normal=4, low=3)

workers_st = st.lists(
    st.builds(
        WorkerView,
        worker_id=st.sampled_from([f"w{i}" for i in range(8)]),
        pool=st.sampled_from(list(Pool)),
        capacity=st.integers(0, 5),
        healthy=st.booleans(),
        draining=st.booleans(),
    ),
    max_size=6,
    unique_by=lambda w: w.worker_id,
)
backlogs_st = st.lists(st.integers(0, 1000), min_size=LAYOUT.total, max_size=LAYOUT.total)


def partitions_of(backlogs: list[int]) -> list[PartitionView]:
    return [PartitionView(p, LAYOUT.lane_of(p), b) for p, b in enumerate(backlogs)]


@st.composite
def current_st(draw: st.DrawFn) -> dict[str, list[int]]:
    """Any earlier assignment, however stale (it may name gone workers or overfill)."""
    owners = draw(
        st.lists(st.sampled_from([f"w{i}" for i in range(8)] + [None]), min_size=10, max_size=10)
    )
    current: dict[str, list[int]] = {}
    for partition, owner in enumerate(owners):
        if owner is not None:
            current.setdefault(owner, []).append(partition)
    return current


def rank_of(views: list[PartitionView]) -> dict[int, tuple[int, int]]:
    return {v.partition: v.rank()[:2] for v in views}


@given(workers_st, backlogs_st, current_st())
def test_capacity_eligibility_and_exactly_one_place(
    workers: list[WorkerView], backlogs: list[int], current: dict[str, list[int]]
) -> None:
    views = partitions_of(backlogs)
    result = assign(workers, views, current)
    fleet = {w.worker_id: w for w in workers}
    placed = [p for ps in result.by_worker.values() for p in ps]
    assert sorted(placed + list(result.waiting)) == list(range(LAYOUT.total))
    for worker_id, partitions in result.by_worker.items():
        assert fleet[worker_id].eligible
        assert len(partitions) <= fleet[worker_id].capacity


@given(workers_st, backlogs_st, current_st())
def test_nothing_waits_while_room_is_free(
    workers: list[WorkerView], backlogs: list[int], current: dict[str, list[int]]
) -> None:
    result = assign(workers, partitions_of(backlogs), current)
    free = sum(w.capacity - len(result.by_worker[w.worker_id]) for w in workers if w.eligible)
    assert not (result.waiting and free > 0)


@given(workers_st, backlogs_st, current_st())
def test_no_waiting_partition_outranks_a_placed_one(
    workers: list[WorkerView], backlogs: list[int], current: dict[str, list[int]]
) -> None:
    views = partitions_of(backlogs)
    ranks = rank_of(views)
    result = assign(workers, views, current)
    placed = [p for ps in result.by_worker.values() for p in ps]
    for waiting in result.waiting:
        if backlogs[waiting] > 0:  # drained partitions wait without displacing anyone
            assert all(ranks[waiting] >= ranks[p] for p in placed)


@given(workers_st, backlogs_st, current_st())
def test_a_decision_is_stable_when_nothing_changes(
    workers: list[WorkerView], backlogs: list[int], current: dict[str, list[int]]
) -> None:
    views = partitions_of(backlogs)
    first = assign(workers, views, current)
    again = assign(workers, views, first.by_worker)
    assert again.by_worker == first.by_worker
    assert again.moved == frozenset()


@given(workers_st, backlogs_st, current_st())
def test_moves_only_when_a_rule_forces_them(
    workers: list[WorkerView], backlogs: list[int], current: dict[str, list[int]]
) -> None:
    """A partition on an eligible worker within capacity moves only if displaced."""
    views = partitions_of(backlogs)
    result = assign(workers, views, current)
    fleet = {w.worker_id: w for w in workers}
    for partition in result.moved:
        old = next(w for w, ps in current.items() if partition in ps)
        worker = fleet.get(old)
        forced = worker is None or not worker.eligible or len(current[old]) > worker.capacity
        assert forced, f"partition {partition} moved off {old} without a reason"


@given(backlogs_st)
def test_high_lane_prefers_dedicated_and_low_prefers_spot(backlogs: list[int]) -> None:
    workers = [
        WorkerView("d1", Pool.DEDICATED, 3),
        WorkerView("s1", Pool.SPOT, 3),
    ]
    views = [v for v in partitions_of(backlogs) if v.backlog > 0]
    result = assign(workers, views, {})
    by_lane = {v.partition: v.lane for v in views}
    dedicated, spot = result.by_worker["d1"], result.by_worker["s1"]
    high_on_spot = [p for p in spot if by_lane[p] is Lane.HIGH]
    low_on_dedicated = [p for p in dedicated if by_lane[p] is Lane.LOW]
    if high_on_spot:
        assert len(dedicated) == 3 and all(by_lane[p] is Lane.HIGH for p in dedicated)
    if low_on_dedicated:
        assert len(spot) == 3


def test_waiting_low_partition_is_placed_when_a_worker_joins() -> None:
    views = partitions_of([5] * LAYOUT.total)
    small = [WorkerView("d1", Pool.DEDICATED, 7)]
    before = assign(small, views, {})
    assert set(before.waiting) == set(LAYOUT.partitions(Lane.LOW))
    joined = [*small, WorkerView("s1", Pool.SPOT, 3)]
    after = assign(joined, views, before.by_worker)
    assert after.waiting == ()
    assert after.by_worker["s1"] == frozenset(LAYOUT.partitions(Lane.LOW))
    assert after.moved == frozenset()


def test_a_dead_workers_partitions_go_to_the_survivor() -> None:
    views = partitions_of([1] * LAYOUT.total)
    fleet = [WorkerView("a", Pool.DEDICATED, 10), WorkerView("b", Pool.DEDICATED, 10)]
    first = assign(fleet, views, {})
    after = assign(fleet[1:], views, first.by_worker)
    assert after.by_worker["b"] == frozenset(range(LAYOUT.total))
    assert after.moved == first.by_worker["a"]


def test_a_drained_lane_gives_its_slots_to_waiting_work() -> None:
    fleet = [WorkerView("d1", Pool.DEDICATED, 3)]
    busy_high = partitions_of([9, 9, 9] + [0] * 4 + [7, 7, 7])
    first = assign(fleet, busy_high, {})
    assert first.by_worker["d1"] == frozenset(LAYOUT.partitions(Lane.HIGH))
    drained_high = partitions_of([0, 0, 0] + [0] * 4 + [7, 7, 7])
    after = assign(fleet, drained_high, first.by_worker)
    assert after.by_worker["d1"] == frozenset(LAYOUT.partitions(Lane.LOW))


def test_unhealthy_and_draining_workers_get_nothing() -> None:
    views = partitions_of([1] * LAYOUT.total)
    fleet = [
        WorkerView("sick", Pool.DEDICATED, 10, healthy=False),
        WorkerView("leaving", Pool.DEDICATED, 10, draining=True),
    ]
    result = assign(fleet, views, {"sick": [0, 1], "leaving": [2]})
    assert result.by_worker == {}
    assert result.waiting == tuple(range(LAYOUT.total))


def test_a_moved_partition_waits_for_its_old_owner_to_let_go() -> None:
    decided = Assignment({"a": frozenset(), "b": frozenset({1, 2})}).by_worker
    still_on_a = publishable(decided, {"a": frozenset({1}), "b": frozenset()})
    assert still_on_a == {"a": frozenset(), "b": frozenset({2})}
    released = publishable(decided, {"a": frozenset(), "b": frozenset()})
    assert released == decided


def test_drained_partitions_never_trade_places() -> None:
    fleet = [WorkerView("d1", Pool.DEDICATED, 3)]
    low_busy = partitions_of([0, 0, 0] + [0] * 4 + [5, 5, 5])
    first = assign(fleet, low_busy, {})
    assert first.by_worker["d1"] == frozenset(LAYOUT.partitions(Lane.LOW))
    all_drained = partitions_of([0] * LAYOUT.total)
    after = assign(fleet, all_drained, first.by_worker)
    assert after.by_worker == first.by_worker and after.moved == frozenset()


def test_a_published_partition_left_untaken_is_sent_again_after_the_wait() -> None:
    published = {"w1": frozenset({1, 2}), "w2": frozenset({3})}
    reported = {"w1": frozenset({1}), "w2": frozenset({3})}  # w1 dropped 2 (a fence)
    resend, clock = to_resend(published, reported, {}, now_ms=0, after_ms=1000)
    assert resend == set() and clock == {("w1", 2): 0}
    resend, clock = to_resend(published, reported, clock, now_ms=999, after_ms=1000)
    assert resend == set() and clock == {("w1", 2): 0}
    resend, clock = to_resend(published, reported, clock, now_ms=1000, after_ms=1000)
    assert resend == {"w1"} and clock == {("w1", 2): 1000}  # reminded again 1000 ms on
    taken = {"w1": frozenset({1, 2}), "w2": frozenset({3})}
    resend, clock = to_resend(published, taken, clock, now_ms=5000, after_ms=1000)
    assert resend == set() and clock == {}
