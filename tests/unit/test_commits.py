"""Committing owned partitions, through Commits' own steps, with a recording consumer
and committers passed in: what a commit covers, and what a fenced, failed or hung
commit does to ownership."""

from __future__ import annotations

import asyncio
import threading

from prometheus_client import REGISTRY

from services.errors import FencedError, KafkaUnavailableError, ProducerFatalError
from services.inference.commits import Commits
from services.inference.hung_calls import HungCalls
from services.inference.in_flight import InFlight
from services.inference.ownership import OwnedPartition, Ownership
from services.inference.request_partitions import PartitionKey
from services.inference.settings import InferenceOptions
from tests.unit.ownership_fakes import MODEL, Committers, FakeConsumer, key, out, ownership_of

OPTIONS = InferenceOptions(commit_interval_s=0.05, commit_stall_s=0.3, max_hung_commits=5)


def commits_of(
    ownership: Ownership, in_flight: InFlight | None = None, hung: HungCalls | None = None
) -> Commits:
    in_flight = InFlight() if in_flight is None else in_flight
    hung = HungCalls() if hung is None else hung  # an empty HungCalls is falsy
    return Commits(ownership, in_flight, hung, None, OPTIONS, "results", "fake")


def counted(name: str, labels: dict[str, str] | None = None) -> float:
    return REGISTRY.get_sample_value(name, labels or {}) or 0.0


def aborts(cause: str) -> float:
    return counted("kbatch_inference_transaction_aborts_total", {"cause": cause})


async def owning(
    keys: set[PartitionKey], log: list[str], committed: dict[PartitionKey, int] | None = None
) -> tuple[Ownership, Committers, FakeConsumer]:
    consumer = FakeConsumer(log, committed=committed)
    committers = Committers(log)
    ownership = ownership_of(consumer, committers, keys)

    async def no_commit(part: OwnedPartition) -> None:
        raise AssertionError("nothing is released here")

    await ownership.reconcile(no_commit)
    return ownership, committers, consumer


def started(part: OwnedPartition, *offsets: int) -> None:
    for offset in offsets:
        part.progress.started(offset)


async def test_a_commit_covers_finished_offsets_below_the_first_in_flight() -> None:
    ownership, committers, _ = await owning({key(0)}, [], committed={key(0): 10})
    commits = commits_of(ownership)
    part = ownership.owned[key(0)]
    started(part, 10, 11, 12)
    part.progress.finished(10, [out("r10")])
    part.progress.finished(12, [out("r12")])
    results_before = counted("kbatch_inference_results_total", {"engine": "fake", "model": MODEL})

    await commits.commit_all()

    [(offset, outputs)] = committers.latest(key(0)).commits
    assert offset == 11 and outputs == [out("r10")]
    assert part.progress.committed_offset == 11
    assert (
        counted("kbatch_inference_results_total", {"engine": "fake", "model": MODEL})
        - results_before
        == 1
    )

    await commits.commit_all()  # nothing moved: no transaction
    assert len(committers.latest(key(0)).commits) == 1

    part.progress.finished(11, [out("r11")])
    await commits.commit(part)
    assert committers.latest(key(0)).commits[-1] == (13, [out("r11"), out("r12")])


async def test_a_fenced_commit_loses_the_partition_for_good() -> None:
    log: list[str] = []
    ownership, committers, consumer = await owning({key(0), key(1)}, log)
    commits = commits_of(ownership)
    part = ownership.owned[key(0)]
    started(part, 0)
    part.progress.finished(0, [out("r0")])
    committers.latest(key(0)).commit_errors.append(FencedError("a new owner took it"))
    fenced_before = aborts("fenced")

    await commits.commit(part)

    assert key(0) not in ownership.owned and key(0) not in ownership.desired
    assert key(0) not in consumer.assigned and committers.latest(key(0)).closed
    assert aborts("fenced") - fenced_before == 1
    assert ownership.settled  # the main loop does not take it back


async def test_a_retryable_commit_failure_keeps_the_partition_and_retries_the_same_plan() -> None:
    ownership, committers, _ = await owning({key(0)}, [], committed={key(0): 3})
    commits = commits_of(ownership)
    part = ownership.owned[key(0)]
    started(part, 3, 4)
    part.progress.finished(3, [out("r3")])
    part.progress.finished(4, [out("r4")])
    committer = committers.latest(key(0))
    committer.commit_errors.append(KafkaUnavailableError("coordinator moving"))
    broker_before = aborts("broker")

    await commits.commit(part)

    assert ownership.owns(part) and part.progress.committed_offset == 3
    assert committer.commits == [] and aborts("broker") - broker_before == 1
    await commits.commit(part)
    assert committer.commits == [(5, [out("r3"), out("r4")])]
    assert part.progress.committed_offset == 5


async def test_a_producer_failed_for_good_is_forgotten_and_taken_afresh() -> None:
    log: list[str] = []
    ownership, committers, consumer = await owning({key(0)}, log)
    commits = commits_of(ownership)
    part = ownership.owned[key(0)]
    started(part, 0)
    part.progress.finished(0, [out("r0")])
    failed = committers.latest(key(0))
    failed.commit_errors.append(ProducerFatalError("fatal"))

    await commits.commit(part)

    assert ownership.owned == {} and ownership.desired == {key(0)}
    assert failed.closed and key(0) not in consumer.assigned

    async def no_commit(part: OwnedPartition) -> None:
        raise AssertionError("nothing is released here")

    assert await ownership.reconcile(no_commit)
    assert committers.latest(key(0)) is not failed and consumer.assigned == {key(0): -2}


async def test_a_hung_commit_is_abandoned_and_its_requests_cancelled() -> None:
    log: list[str] = []
    in_flight, hung = InFlight(), HungCalls()
    ownership, committers, consumer = await owning({key(0), key(1)}, log)
    commits = commits_of(ownership, in_flight, hung)
    part = ownership.owned[key(0)]
    started(part, 0, 1)
    part.progress.finished(0, [out("r0")])
    committer = committers.latest(key(0))
    committer.block = threading.Event()
    cancelled = asyncio.Event()

    async def request() -> None:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        finally:
            in_flight.ended()

    in_flight.start(key(0), "job", request())
    hung_before = aborts("hung")

    try:
        await commits.commit(part)  # returns after commit_stall_s, the call still blocked

        assert len(hung) == 1 and aborts("hung") - hung_before == 1
        assert key(0) not in ownership.owned and ownership.desired == {
            key(0),
            key(1),
        }  # to be taken afresh
        assert key(0) not in consumer.assigned
        assert not committer.closed  # its call still uses it
        assert cancelled.is_set() and in_flight.count == 0
    finally:
        committer.block.set()  # else the blocked thread outlives the test run
    for _ in range(100):
        if committer.discarded:
            break
        await asyncio.sleep(0.02)
    assert committer.discarded and len(hung) == 0


async def test_the_loop_commits_on_its_interval_and_when_enough_is_ready() -> None:
    ownership, committers, _ = await owning({key(0)}, [])
    commits = commits_of(ownership)
    part = ownership.owned[key(0)]
    started(part, 0, 1)
    part.progress.finished(0, [out("r0")])

    commits.note_finished(size_bound=2)
    assert not commits.wanted.is_set()
    part.progress.finished(1, [out("r1")])
    commits.note_finished(size_bound=2)
    assert commits.wanted.is_set()

    stop = asyncio.Event()
    loop = asyncio.create_task(commits.run(stop))
    for _ in range(100):
        if committers.latest(key(0)).commits:
            break
        await asyncio.sleep(0.01)
    stop.set()
    commits.wanted.set()
    await asyncio.wait_for(loop, 5)
    assert committers.latest(key(0)).commits == [(2, [out("r0"), out("r1")])]


async def test_a_partition_forgotten_before_its_commit_is_not_committed() -> None:
    ownership, committers, _ = await owning({key(0)}, [])
    commits = commits_of(ownership)
    part = ownership.owned[key(0)]
    started(part, 0)
    part.progress.finished(0, [out("r0")])
    await ownership.forget(part)

    await commits.commit(part)

    assert committers.latest(key(0)).commits == []
