"""Prefix keys and placement by prefix with bounded loads (pure)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from services.prefix import (
    DEFAULT_LOAD_FACTOR,
    bounded_partition,
    load_bound,
    prefix_key,
    ring_start,
    spill_bound,
)

keys = st.text("0123456789abcdef", min_size=16, max_size=16)
loads_of = st.lists(st.integers(0, 1000), min_size=1, max_size=24)
factors = st.sampled_from([0.0, 0.1, DEFAULT_LOAD_FACTOR, 1.0])


def chat(system: str | None, question: str) -> dict[str, object]:
    said = [{"role": "user", "content": question, "name": None}]
    lead = [{"role": "system", "content": system, "name": None}] if system is not None else []
    return {"messages": lead + said}


def test_requests_sharing_instructions_share_a_key_whatever_they_ask() -> None:
    one = prefix_key("m", chat("You are terse.", "What is 2+2?"))
    assert one is not None and len(one) == 16
    assert prefix_key("m", chat("You are terse.", "Name a river.")) == one
    assert prefix_key("m", chat("You are verbose.", "What is 2+2?")) != one
    assert prefix_key("other-model", chat("You are terse.", "What is 2+2?")) != one


def test_every_leading_instruction_counts_and_nothing_after_the_first_question() -> None:
    developer = {"role": "developer", "content": "Answer in French.", "name": None}
    base = chat("You are terse.", "Q")
    with_developer = {"messages": [base["messages"][0], developer, base["messages"][1]]}  # type: ignore[index]
    assert prefix_key("m", with_developer) != prefix_key("m", base)
    later_system = {"messages": [*chat(None, "Q")["messages"], developer]}  # type: ignore[misc]
    assert prefix_key("m", later_system) is None


def test_no_key_without_a_shared_part() -> None:
    assert prefix_key("m", chat(None, "just a question")) is None
    assert prefix_key("m", {"input": ["embed me"]}) is None
    assert prefix_key("m", {"prompt": ""}) is None


def test_a_completion_is_keyed_by_its_first_characters() -> None:
    shared = "x" * 50
    assert prefix_key("m", {"prompt": shared + "a"}, 50) == prefix_key(
        "m", {"prompt": shared + "b"}, 50
    )
    assert prefix_key("m", {"prompt": shared + "a"}, 51) != prefix_key(
        "m", {"prompt": shared + "b"}, 51
    )


@settings(max_examples=500)
@given(keys, loads_of, factors)
def test_a_key_stays_on_its_own_partition_while_it_is_under_the_bound(
    key: str, loads: list[int], factor: float
) -> None:
    home = ring_start(key, len(loads))
    chosen = bounded_partition(key, loads, factor)
    if loads[home] + 1 <= load_bound(loads, factor):
        assert chosen == home
    else:
        # The first partition after home on the ring that is at most at the mean.
        assert chosen != home
        assert loads[chosen] + 1 <= spill_bound(loads)
        steps = (chosen - home) % len(loads)
        skipped = [(home + s) % len(loads) for s in range(1, steps)]
        assert all(loads[i] + 1 > spill_bound(loads) for i in skipped)


@settings(max_examples=300)
@given(
    st.lists(keys, min_size=1, max_size=8),
    st.integers(1, 16),
    st.lists(st.integers(0, 7), min_size=1, max_size=400),
    factors,
)
def test_no_partition_ever_holds_more_than_the_bound_plus_one(
    distinct: list[str], partitions: int, picks: list[int], factor: float
) -> None:
    loads = [0] * partitions
    for pick in picks:
        index = bounded_partition(distinct[pick % len(distinct)], loads, factor)
        loads[index] += 1
        mean = sum(loads) / partitions
        assert max(loads) <= (1 + factor) * mean + 1


@settings(max_examples=300)
@given(
    keys, st.integers(1, 32), st.integers(0, 3), st.sampled_from([0.0, 0.1, DEFAULT_LOAD_FACTOR])
)
def test_a_job_sharing_one_prefix_still_reaches_every_partition_of_its_lane(
    key: str, partitions: int, extra: int, factor: float
) -> None:
    """Spilled lines fill the other partitions to the mean, so once the key's own
    partition has its (1 + ε) share every other partition has had some: 2n²/ε lines
    are enough."""
    loads = [0] * partitions
    for _ in range(2 * partitions * partitions * 10 + extra):
        loads[bounded_partition(key, loads, factor)] += 1
    assert min(loads) >= 1, loads


def test_distinct_keys_over_a_busy_lane_each_keep_one_partition() -> None:
    """Four prefixes x 20 lines, interleaved, over eight partitions already holding a
    backlog: each prefix lands on a single partition."""
    found = [f"{i:016x}" for i in range(4)]  # ring starts 0..3 of 8
    loads = [30] * 8
    where: dict[str, set[int]] = {k: set() for k in found}
    for _ in range(20):
        for key in found:
            index = bounded_partition(key, loads, DEFAULT_LOAD_FACTOR)
            loads[index] += 1
            where[key].add(index)
    assert all(len(places) == 1 for places in where.values()), where
    assert len({next(iter(p)) for p in where.values()}) == 4
