"""The order in which engine slots take ready requests: lanes, prefixes, a bound."""

from __future__ import annotations

from itertools import groupby

from hypothesis import given, settings
from hypothesis import strategies as st

from services.inference.prefix_queue import PrefixQueue

Item = tuple[int, int, str | None]  # (rank, arrival, key)

# Operations: put (rank, key) or take by a slot.
puts = st.tuples(st.just("put"), st.integers(0, 2), st.sampled_from(["a", "b", "c", None]))
takes = st.tuples(st.just("take"), st.integers(0, 2), st.none())


@settings(max_examples=500)
@given(st.lists(st.one_of(puts, takes), max_size=120), st.integers(0, 6))
def test_lanes_first_and_no_request_passed_over_more_than_the_bound(
    operations: list[tuple[str, int, str | None]], max_skips: int
) -> None:
    queue: PrefixQueue[Item] = PrefixQueue(slots=3, max_skips=max_skips)
    queued: list[Item] = []
    passed_over: dict[Item, int] = {}
    for arrival, (operation, number, key) in enumerate(operations):
        if operation == "put":
            item = (number, arrival, key)
            queue.put(item, number, key)
            queued.append(item)
            passed_over[item] = 0
            continue
        taken = queue.take(number)
        if not queued:
            assert taken is None
            continue
        assert taken is not None
        top = min(rank for rank, _, _ in queued)
        assert taken[0] == top, "a lower lane went before a higher one"
        for older in queued:
            if older[0] == top and older[1] < taken[1]:
                passed_over[older] += 1
                assert passed_over[older] <= max_skips, older
        queued.remove(taken)
    assert len(queue) == len(queued)


@given(st.lists(st.sampled_from("abcdef"), min_size=1, max_size=80))
def test_one_slot_runs_each_prefix_back_to_back_when_the_bound_allows(keys: list[str]) -> None:
    queue: PrefixQueue[int] = PrefixQueue(slots=1, max_skips=len(keys))
    for index, key in enumerate(keys):
        queue.put(index, 1, key)
    order = []
    while (item := queue.take(0)) is not None:
        order.append(keys[item])
    runs = [key for key, _ in groupby(order)]
    assert len(runs) == len(set(keys)), order
    assert runs[0] == keys[0]  # the oldest request's prefix first


def test_each_slot_keeps_its_own_prefix() -> None:
    queue: PrefixQueue[str] = PrefixQueue(slots=2, max_skips=100)
    for index in range(10):
        queue.put(f"a{index}", 1, "a")
        queue.put(f"b{index}", 1, "b")
    taken = {0: [], 1: []}  # type: dict[int, list[str]]
    for _ in range(10):
        for slot in (0, 1):
            item = queue.take(slot)
            assert item is not None
            taken[slot].append(item)
    assert {item[0] for item in taken[0]} == {"a"}
    assert {item[0] for item in taken[1]} == {"b"}


def test_an_idle_slot_takes_another_slots_prefix_rather_than_wait() -> None:
    queue: PrefixQueue[str] = PrefixQueue(slots=2, max_skips=100)
    queue.put("a0", 1, "a")
    queue.put("a1", 1, "a")
    assert queue.take(0) == "a0"
    assert queue.take(1) == "a1"
    assert queue.take(1) is None


def test_a_request_without_a_prefix_waits_only_for_the_slots_own_prefix() -> None:
    queue: PrefixQueue[str] = PrefixQueue(slots=1, max_skips=100)
    queue.put("a0", 1, "a")
    queue.put("none", 1, None)
    queue.put("a1", 1, "a")
    assert [queue.take(0), queue.take(0), queue.take(0)] == ["a0", "a1", "none"]
