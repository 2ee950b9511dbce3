"""Taking, releasing, losing and forgetting partitions, through Ownership's own steps
with a recording consumer and committers passed in."""

from __future__ import annotations

import asyncio

from confluent_kafka import OFFSET_BEGINNING

from services.errors import KafkaUnavailableError
from services.inference.in_flight import InFlight
from services.inference.outputs import Origin
from services.inference.ownership import OwnedPartition
from tests.unit.ownership_fakes import REQUESTS, Committers, FakeConsumer, key, out, ownership_of


async def no_commit(part: OwnedPartition) -> None:
    raise AssertionError(f"nothing to release, yet partition {part.key} was committed")


async def test_taking_fences_first_then_assigns_at_the_committed_offset() -> None:
    log: list[str] = []
    consumer = FakeConsumer(log, committed={key(0): 42}, low=7)
    committers = Committers(log)
    ownership = ownership_of(consumer, committers, {key(0), key(1), key(2)})

    assert await ownership.reconcile(no_commit)

    assert ownership.settled and set(ownership.owned) == {key(0), key(1), key(2)}
    # Committed offset where there is one, the log start otherwise; 0 is the beginning.
    assert consumer.assigned == {key(0): 42, key(1): 7, key(2): 7}
    assert log.index("open 0") < log.index("assign 0@42")
    assert [ownership.owned[k].lane_rank for k in (key(0), key(1), key(2))] == [0, 1, 2]
    assert ownership.owned[key(0)].progress.committed_offset == 42
    assert not await ownership.reconcile(no_commit)  # nothing changed
    assert len(committers.made) == 3


async def test_a_partition_at_offset_zero_is_assigned_from_the_beginning() -> None:
    consumer = FakeConsumer([], low=0)
    ownership = ownership_of(consumer, Committers([]), {key(2)})
    await ownership.reconcile(no_commit)
    assert consumer.assigned == {key(2): OFFSET_BEGINNING}


async def test_a_retryable_take_failure_backs_off_then_resumes_the_same_producer() -> None:
    log: list[str] = []
    consumer = FakeConsumer(log)
    committers = Committers(log)
    committers.of(key(1)).open_errors.append(KafkaUnavailableError("no transaction coordinator"))
    ownership = ownership_of(consumer, committers, {key(0), key(1)})

    assert await ownership.reconcile(no_commit)  # 0 taken, 1 not yet
    assert set(ownership.owned) == {key(0)}
    assert "not taken yet" in ownership.degraded[f"partition {key(1)}"]
    assert key(1) not in consumer.assigned

    await ownership.reconcile(no_commit)  # within the back-off: not tried again
    assert committers.latest(key(1)).opens == 1

    await asyncio.sleep(0.55)  # the first back-off is 0.25 to 0.5 s
    assert await ownership.reconcile(no_commit)
    assert set(ownership.owned) == {key(0), key(1)} and ownership.settled
    retried = committers.latest(key(1))
    assert retried.opens == 2 and len([c for c in committers.made if c.key == key(1)]) == 1
    assert ownership.degraded == {}


async def test_a_partition_no_longer_desired_while_being_taken_closes_its_producer() -> None:
    committers = Committers([])
    committers.of(key(1)).open_errors.append(KafkaUnavailableError("slow cluster"))
    ownership = ownership_of(FakeConsumer([]), committers, {key(1)})
    await ownership.reconcile(no_commit)
    ownership.assignment.keys = set()

    assert not await ownership.reconcile(no_commit)
    assert committers.latest(key(1)).closed
    await asyncio.sleep(0.55)
    await ownership.reconcile(no_commit)
    assert committers.latest(key(1)).opens == 1  # never tried again
    assert ownership.owned == {}


async def test_release_commits_finished_work_then_unassigns_and_closes() -> None:
    log: list[str] = []
    consumer = FakeConsumer(log, committed={key(0): 10, key(1): 5})
    committers = Committers(log)
    ownership = ownership_of(consumer, committers, {key(0), key(1)})
    await ownership.reconcile(no_commit)
    part = ownership.owned[key(0)]
    part.progress.started(10)
    part.progress.finished(10, [out("r10")])
    committed: list[int] = []

    async def commit(released: OwnedPartition) -> None:
        assert released.releasing and key(0) in consumer.paused and key(0) in consumer.assigned
        plan = released.progress.plan()
        assert plan is not None
        committed.append(plan.next_offset)
        log.append(f"commit {released.key.partition}@{plan.next_offset}")

    ownership.assignment.keys = {key(1)}
    assert await ownership.reconcile(commit)

    assert committed == [11]
    assert log[-3:] == ["commit 0@11", "unassign 0", "close 0"]
    assert set(ownership.owned) == {key(1)} and set(consumer.assigned) == {key(1)}


async def test_release_waits_for_its_requests_then_cancels_those_past_the_grace() -> None:
    in_flight = InFlight()
    ownership = ownership_of(
        FakeConsumer([]), Committers([]), {key(0), key(1)}, in_flight, grace_s=0.3
    )
    await ownership.reconcile(no_commit)
    quick_done, slow_cancelled, other_cancelled = asyncio.Event(), asyncio.Event(), asyncio.Event()

    async def request(seconds: float, done: asyncio.Event, cancelled: asyncio.Event) -> None:
        try:
            await asyncio.sleep(seconds)
            done.set()
        except asyncio.CancelledError:
            cancelled.set()
            raise
        finally:
            in_flight.ended()

    in_flight.start(key(0), "job", request(0.05, quick_done, asyncio.Event()))
    in_flight.start(key(0), "job", request(60, asyncio.Event(), slow_cancelled))
    in_flight.start(key(1), "job", request(60, asyncio.Event(), other_cancelled))
    await asyncio.sleep(0)
    started = asyncio.get_running_loop().time()

    await ownership.release(ownership.owned[key(0)], no_commit_needed)

    waited = asyncio.get_running_loop().time() - started
    assert quick_done.is_set() and slow_cancelled.is_set()
    assert 0.25 <= waited < 5
    assert not other_cancelled.is_set() and in_flight.running_of(key(1)) == 1
    assert set(ownership.owned) == {key(1)}
    await in_flight.cancel()


async def no_commit_needed(part: OwnedPartition) -> None:
    """Release's commit step, where the commit is not what the test looks at."""


async def test_held_records_are_counted_and_left_to_the_next_owner() -> None:
    ownership = ownership_of(FakeConsumer([]), Committers([]), {key(2)})
    await ownership.reconcile(no_commit)
    part = ownership.owned[key(2)]
    for offset in (0, 1, 2):
        part.progress.started(offset)
        ownership.hold(part, Origin(REQUESTS.topic_of(key(2)), 2, offset, None, b"{}"))
    assert ownership.held == 3
    assert ownership.unhold(part).offset == 0 and ownership.held == 2

    await ownership.forget(part)
    assert ownership.held == 0 and not part.held
    assert ownership.owned == {} and not ownership.settled  # still desired


async def test_a_lost_partition_is_no_longer_desired() -> None:
    log: list[str] = []
    committers = Committers(log)
    ownership = ownership_of(FakeConsumer(log), committers, {key(0), key(1)})
    await ownership.reconcile(no_commit)

    await ownership.lose(ownership.owned[key(0)])

    assert ownership.desired == {key(1)} and ownership.settled
    assert committers.latest(key(0)).closed and "unassign 0" in log
    assert not await ownership.reconcile(no_commit)  # not taken back


async def test_forgetting_twice_is_harmless_and_close_false_keeps_the_producer() -> None:
    log: list[str] = []
    committers = Committers(log)
    ownership = ownership_of(FakeConsumer(log), committers, {key(0)})
    await ownership.reconcile(no_commit)
    part = ownership.owned[key(0)]

    await ownership.forget(part, close=False)
    await ownership.forget(part)

    assert log.count("unassign 0") == 1
    assert not committers.latest(key(0)).closed


async def test_pausing_resumes_owned_partitions_only() -> None:
    consumer = FakeConsumer([])
    ownership = ownership_of(consumer, Committers([]), {key(0), key(1)})
    await ownership.reconcile(no_commit)

    ownership.set_paused({key(0), key(1)})
    assert consumer.paused == {key(0), key(1)}
    ownership.set_paused({key(1)})
    assert consumer.paused == {key(1)}
    await ownership.forget(ownership.owned[key(1)])
    ownership.set_paused(set())
    assert consumer.paused == {key(1)}  # not resumed once forgotten: a retake resumes it
    ownership.assignment.keys = {key(0), key(1)}
    await ownership.reconcile(no_commit)
    assert consumer.paused == set()


async def test_closing_closes_owned_producers_and_those_being_taken() -> None:
    committers = Committers([])
    committers.of(key(1)).open_errors.append(KafkaUnavailableError("slow cluster"))
    ownership = ownership_of(FakeConsumer([]), committers, {key(0), key(1)})
    await ownership.reconcile(no_commit)

    await ownership.close()

    assert committers.latest(key(0)).closed and committers.latest(key(1)).closed
