"""The assignment rules, stated as properties over random fleets, models and backlogs."""

from __future__ import annotations

import math
from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from services.lanes import Lane, LaneLayout
from services.routing import ModelPartition, RequestLayout
from services.scheduler.assignment import Assignment, assign
from services.scheduler.handover import publishable, to_resend
from services.scheduler.inputs import PartitionView, Pool, WorkerView

LAYOUT = RequestLayout("t", LaneLayout(high=2, normal=3, low=2))
MODELS = ("a", "b", "c")
EVERY = LAYOUT.all_partitions(MODELS)
WORKER_IDS = [f"w{i}" for i in range(8)]

workers_st = st.lists(
    st.builds(
        WorkerView,
        worker_id=st.sampled_from(WORKER_IDS),
        pool=st.sampled_from(list(Pool)),
        capacity=st.integers(0, 6),
        models=st.frozensets(st.sampled_from(MODELS), min_size=1),
        healthy=st.booleans(),
        draining=st.booleans(),
    ),
    max_size=6,
    unique_by=lambda w: w.worker_id,
)
backlogs_st = st.lists(st.integers(0, 1000), min_size=len(EVERY), max_size=len(EVERY))


def views_of(backlogs: list[int]) -> list[PartitionView]:
    return [PartitionView(w, LAYOUT.lane_of(w), b) for w, b in zip(EVERY, backlogs, strict=True)]


@st.composite
def current_st(draw: st.DrawFn) -> dict[str, list[ModelPartition]]:
    """Any earlier assignment, however stale (gone workers, overfull, foreign models)."""
    owners = draw(
        st.lists(st.sampled_from([*WORKER_IDS, None]), min_size=len(EVERY), max_size=len(EVERY))
    )
    current: dict[str, list[ModelPartition]] = {}
    for where, owner in zip(EVERY, owners, strict=True):
        if owner is not None:
            current.setdefault(owner, []).append(where)
    return current


def single(model: str, backlogs: list[int]) -> list[PartitionView]:
    """One model's partitions with these backlogs."""
    return [
        PartitionView(w, LAYOUT.lane_of(w), b)
        for w, b in zip(LAYOUT.partitions(model), backlogs, strict=True)
    ]


@given(workers_st, backlogs_st, current_st())
def test_only_serving_eligible_workers_within_capacity_exactly_once(
    workers: list[WorkerView], backlogs: list[int], current: dict[str, list[ModelPartition]]
) -> None:
    result = assign(workers, views_of(backlogs), current)
    fleet = {w.worker_id: w for w in workers}
    placed = [p for ps in result.by_worker.values() for p in ps]
    assert sorted(placed + list(result.waiting)) == sorted(EVERY)
    for worker_id, partitions in result.by_worker.items():
        assert fleet[worker_id].eligible
        assert len(partitions) <= fleet[worker_id].capacity
        assert all(p.model in fleet[worker_id].models for p in partitions)


@given(workers_st, backlogs_st, current_st())
def test_nothing_waits_while_a_worker_serving_it_has_room(
    workers: list[WorkerView], backlogs: list[int], current: dict[str, list[ModelPartition]]
) -> None:
    result = assign(workers, views_of(backlogs), current)
    for worker in workers:
        if worker.eligible and len(result.by_worker[worker.worker_id]) < worker.capacity:
            assert not [p for p in result.waiting if p.model in worker.models]


@given(workers_st, backlogs_st, current_st())
def test_priority_holds_within_each_model_and_no_model_starves(
    workers: list[WorkerView], backlogs: list[int], current: dict[str, list[ModelPartition]]
) -> None:
    """A waiting partition with work outranks nothing placed where it could go, and on
    each worker serving its model, its model holds no fewer than one less of its tier
    than any other model there."""
    views = {v.where: v for v in views_of(backlogs)}
    result = assign(workers, views.values(), current)
    fleet = {w.worker_id: w for w in workers}
    for waiting in (views[p] for p in result.waiting if views[p].backlog > 0):
        for worker_id, partitions in result.by_worker.items():
            if waiting.model not in fleet[worker_id].models:
                continue
            held = Counter((views[p].model, views[p].tier) for p in partitions)
            for placed in (views[p] for p in partitions):
                assert not waiting.outranks(placed), (waiting, placed)
                if placed.tier == waiting.tier and placed.model != waiting.model:
                    mine = held[(waiting.model, waiting.tier)]
                    assert held[(placed.model, placed.tier)] <= mine + 1


@given(workers_st, backlogs_st, current_st())
def test_a_decision_is_stable_when_nothing_changes(
    workers: list[WorkerView], backlogs: list[int], current: dict[str, list[ModelPartition]]
) -> None:
    views = views_of(backlogs)
    first = assign(workers, views, current)
    again = assign(workers, views, first.by_worker)
    assert again.by_worker == first.by_worker
    assert again.moved == frozenset()


@settings(max_examples=300)
@given(
    workers_st,
    backlogs_st,
    st.builds(
        WorkerView,
        worker_id=st.just("joiner"),
        pool=st.sampled_from(list(Pool)),
        capacity=st.integers(1, 6),
        models=st.frozensets(st.sampled_from(MODELS), min_size=1),
    ),
)
def test_a_join_or_a_leave_moves_a_bounded_share(
    workers: list[WorkerView], backlogs: list[int], joiner: WorkerView
) -> None:
    """From a settled fleet, a worker joining moves at most ceil(P/N) + 1 partitions (P
    partitions, N eligible workers after the join); the same worker leaving moves its
    own and at most ceil(P/N) + 1 more."""
    views = views_of(backlogs)
    settled = assign(workers, views, {})
    settled = assign(workers, views, settled.by_worker)
    fleet = [*workers, joiner]
    eligible = sum(1 for w in fleet if w.eligible)
    bound = math.ceil(len(EVERY) / eligible) + 1
    joined = assign(fleet, views, settled.by_worker)
    assert len(joined.moved) <= bound
    joined = assign(fleet, views, joined.by_worker)
    left = assign(workers, views, joined.by_worker)
    own = joined.by_worker["joiner"]
    assert len(left.moved - own) <= bound


@given(backlogs_st)
def test_high_lane_prefers_dedicated_and_low_prefers_spot(backlogs: list[int]) -> None:
    workers = [
        WorkerView("d1", Pool.DEDICATED, 3, frozenset(MODELS)),
        WorkerView("s1", Pool.SPOT, 3, frozenset(MODELS)),
    ]
    views = [v for v in views_of(backlogs) if v.backlog > 0]
    result = assign(workers, views, {})
    lane = {v.where: v.lane for v in views}
    dedicated, spot = result.by_worker["d1"], result.by_worker["s1"]
    if [p for p in spot if lane[p] is Lane.HIGH]:
        assert len(dedicated) == 3 and all(lane[p] is Lane.HIGH for p in dedicated)
    if [p for p in dedicated if lane[p] is Lane.LOW]:
        assert len(spot) == 3


def test_a_model_reaches_only_the_workers_serving_it() -> None:
    fleet = [
        WorkerView("for-a", Pool.DEDICATED, 10, frozenset({"a"})),
        WorkerView("for-b", Pool.DEDICATED, 10, frozenset({"b"})),
    ]
    views = single("a", [3] * 7) + single("b", [3] * 7) + single("c", [3] * 7)
    result = assign(fleet, views, {})
    assert result.by_worker["for-a"] == frozenset(LAYOUT.partitions("a"))
    assert result.by_worker["for-b"] == frozenset(LAYOUT.partitions("b"))
    assert set(result.waiting) == set(LAYOUT.partitions("c"))  # known, no worker: waits


def test_a_shared_worker_splits_its_capacity_between_busy_models() -> None:
    fleet = [WorkerView("both", Pool.DEDICATED, 6, frozenset({"a", "b"}))]
    # a's backlog is far larger; b still gets half of the normal lane's slots.
    views = single("a", [0, 0, 900, 900, 900, 0, 0]) + single("b", [0, 0, 5, 5, 5, 0, 0])
    result = assign(fleet, views, {})
    held = Counter(p.model for p in result.by_worker["both"])
    assert held == {"a": 3, "b": 3}


def test_a_model_with_new_backlog_takes_slots_from_one_that_holds_them_all() -> None:
    fleet = [WorkerView("both", Pool.DEDICATED, 4, frozenset({"a", "b"}))]
    only_a = single("a", [0, 0, 9, 9, 9, 9, 0][:7]) + single("b", [0] * 7)
    first = assign(fleet, only_a, {})
    assert {p.model for p in first.by_worker["both"]} == {"a"}
    both = single("a", [0, 0, 9, 9, 9, 9, 0]) + single("b", [0, 0, 4, 4, 4, 0, 0])
    after = assign(fleet, both, first.by_worker)
    held = Counter(p.model for p in after.by_worker["both"])
    assert held["b"] >= 1 and held["a"] - held["b"] <= 1
    assert len(after.moved) == 0  # displaced to waiting, not moved between workers


def test_a_joining_worker_takes_a_share_of_the_busy_partitions() -> None:
    views = single("a", [5] * 7)
    first = assign([WorkerView("old", Pool.DEDICATED, 8, frozenset({"a"}))], views, {})
    assert len(first.by_worker["old"]) == 7
    fleet = [
        WorkerView("old", Pool.DEDICATED, 8, frozenset({"a"})),
        WorkerView("new", Pool.DEDICATED, 8, frozenset({"a"})),
    ]
    after = assign(fleet, views, first.by_worker)
    assert len(after.by_worker["new"]) == 3 and len(after.by_worker["old"]) == 4
    assert after.moved == after.by_worker["new"]


def test_a_dead_workers_partitions_go_to_the_survivor() -> None:
    views = single("a", [1] * 7)
    fleet = [
        WorkerView("a", Pool.DEDICATED, 10, frozenset({"a"})),
        WorkerView("b", Pool.DEDICATED, 10, frozenset({"a"})),
    ]
    first = assign(fleet, views, {})
    after = assign(fleet[1:], views, first.by_worker)
    assert after.by_worker["b"] == frozenset(LAYOUT.partitions("a"))
    assert after.moved == first.by_worker["a"]


def test_a_drained_lane_gives_its_slots_to_waiting_work() -> None:
    fleet = [WorkerView("d1", Pool.DEDICATED, 2, frozenset({"a"}))]
    first = assign(fleet, single("a", [9, 9, 0, 0, 0, 7, 7]), {})
    assert first.by_worker["d1"] == frozenset(
        LAYOUT.cell_partitions(LAYOUT.cell_of(ModelPartition("a", 0)))
    )
    after = assign(fleet, single("a", [0, 0, 0, 0, 0, 7, 7]), first.by_worker)
    assert after.by_worker["d1"] == frozenset({ModelPartition("a", 5), ModelPartition("a", 6)})


def test_unhealthy_draining_and_modelless_workers_get_nothing() -> None:
    views = single("a", [1] * 7)
    fleet = [
        WorkerView("sick", Pool.DEDICATED, 10, frozenset({"a"}), healthy=False),
        WorkerView("leaving", Pool.DEDICATED, 10, frozenset({"a"}), draining=True),
        WorkerView("serves-nothing", Pool.DEDICATED, 10),
    ]
    taken = [ModelPartition("a", 0), ModelPartition("a", 1)]
    result = assign(fleet, views, {"sick": taken, "leaving": [ModelPartition("a", 2)]})
    assert result.by_worker == {}
    assert result.waiting == tuple(LAYOUT.partitions("a"))


def test_drained_partitions_never_trade_places() -> None:
    fleet = [WorkerView("d1", Pool.DEDICATED, 2, frozenset({"a"}))]
    first = assign(fleet, single("a", [0, 0, 0, 0, 0, 5, 5]), {})
    after = assign(fleet, single("a", [0] * 7), first.by_worker)
    assert after.by_worker == first.by_worker and after.moved == frozenset()


def test_a_moved_partition_waits_for_its_old_owner_to_let_go() -> None:
    one, two = ModelPartition("a", 1), ModelPartition("a", 2)
    decided = Assignment({"a": frozenset(), "b": frozenset({one, two})}).by_worker
    still_on_a = publishable(decided, {"a": frozenset({one}), "b": frozenset()})
    assert still_on_a == {"a": frozenset(), "b": frozenset({two})}
    released = publishable(decided, {"a": frozenset(), "b": frozenset()})
    assert released == decided


def test_a_published_partition_left_untaken_is_sent_again_after_the_wait() -> None:
    one, two, three = (ModelPartition("a", p) for p in (1, 2, 3))
    published = {"w1": frozenset({one, two}), "w2": frozenset({three})}
    reported = {"w1": frozenset({one}), "w2": frozenset({three})}  # w1 dropped 2 (a fence)
    resend, clock = to_resend(published, reported, {}, now_ms=0, after_ms=1000)
    assert resend == set() and clock == {("w1", two): 0}
    resend, clock = to_resend(published, reported, clock, now_ms=999, after_ms=1000)
    assert resend == set() and clock == {("w1", two): 0}
    resend, clock = to_resend(published, reported, clock, now_ms=1000, after_ms=1000)
    assert resend == {"w1"} and clock == {("w1", two): 1000}  # reminded again 1000 ms on
    resend, clock = to_resend(published, published, clock, now_ms=5000, after_ms=1000)
    assert resend == set() and clock == {}
