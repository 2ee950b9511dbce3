"""Which partitions this worker owns, and the named steps that change that: take
(fencing the previous owner), release (finish, commit, hand over), lose (fenced by a
new owner) and forget.

Assignment is external (`assign()`): the worker never joins a consumer group, so
ownership and fencing come from per-partition transactional ids.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

from confluent_kafka import OFFSET_BEGINNING, KafkaException, TopicPartition

from services.errors import KafkaUnavailableError, ProducerFatalError
from services.inference import metrics
from services.inference.committers import Committer
from services.inference.in_flight import InFlight
from services.inference.outputs import Origin
from services.inference.progress import PartitionProgress
from services.inference.request_partitions import PartitionKey, RequestPartitions
from services.kafka.retries import KAFKA_RETRIES, jittered_backoff_s
from services.kafka.transactions import OutRecord
from services.logs import get_logger

log = get_logger("worker")


class PartitionConsumer(Protocol):
    """What ownership asks of the worker's consumer (a confluent_kafka Consumer)."""

    def committed(
        self, partitions: list[TopicPartition], timeout: float = -1
    ) -> list[TopicPartition]: ...

    def get_watermark_offsets(
        self, partition: TopicPartition, timeout: float = -1, cached: bool = False
    ) -> tuple[int, int]: ...

    def incremental_assign(self, partitions: list[TopicPartition]) -> None: ...

    def incremental_unassign(self, partitions: list[TopicPartition]) -> None: ...

    def pause(self, partitions: list[TopicPartition]) -> None: ...

    def resume(self, partitions: list[TopicPartition]) -> None: ...


@dataclass(eq=False)
class OwnedPartition:
    key: PartitionKey
    txn: Committer
    progress: PartitionProgress[OutRecord]
    lane_rank: int  # its lane's index in LANE_ORDER
    # Taken (started in progress) but not run yet: lower-lane records waiting for their
    # lane's share while a higher lane is busy. A new owner runs them if released.
    held: deque[Origin] = field(default_factory=deque)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    releasing: bool = False


@dataclass
class Assignment:
    """The partitions this worker should own, and the scheduler's generation of them."""

    keys: set[PartitionKey] = field(default_factory=set)
    generation: int = 0


# Commits a partition's finished work (see commits.Commits.commit).
CommitStep = Callable[[OwnedPartition], Awaitable[None]]


class Ownership:
    """The owned partitions, those being taken, and the steps between them."""

    def __init__(
        self,
        consumer: PartitionConsumer,
        requests: RequestPartitions,
        assignment: Assignment,
        make_committer: Callable[[PartitionKey], Committer],
        in_flight: InFlight,
        drain_grace_s: float,
    ) -> None:
        self.requests = requests
        self.assignment = assignment
        self.owned: dict[PartitionKey, OwnedPartition] = {}
        self.degraded: dict[str, str] = {}  # what is being retried, for /healthz
        self.held = 0  # records held over all owned partitions
        self._consumer = consumer
        self._make_committer = make_committer
        self._in_flight = in_flight
        self._drain_grace_s = drain_grace_s
        self._paused: set[PartitionKey] = set()
        # Partitions being taken (their producers kept for a retry to resume) and the
        # failures in a row of each with the loop time of its next try.
        self._taking: dict[PartitionKey, Committer] = {}
        self._take_failures: dict[PartitionKey, tuple[int, float]] = {}

    @property
    def desired(self) -> set[PartitionKey]:
        return self.assignment.keys

    @property
    def settled(self) -> bool:
        """Whether the owned partitions are the desired ones."""
        return self.desired == set(self.owned)

    def owns(self, part: OwnedPartition) -> bool:
        """Whether `part` is still owned: not released, lost or taken afresh meanwhile."""
        return self.owned.get(part.key) is part

    def releasing(self) -> set[PartitionKey]:
        return {key for key, owned in self.owned.items() if owned.releasing}

    def uncommitted(self) -> int:
        return sum(p.progress.uncommitted for p in self.owned.values())

    # -- taking and releasing -------------------------------------------------
    async def reconcile(self, commit: CommitStep) -> bool:
        """Release what is no longer desired, take what is newly desired; whether the
        owned set changed. A take that fails retryably is tried again after a back-off."""
        before = set(self.owned)
        for key in sorted(set(self.owned) - self.desired):
            part = self.owned.get(key)
            if part is not None:  # a concurrent commit may have lost it to fencing meanwhile
                await self.release(part, commit)
        for key in sorted(set(self._taking) - self.desired):
            await asyncio.to_thread(self._taking.pop(key).close)
            self._take_failures.pop(key, None)
        now = asyncio.get_running_loop().time()
        due = [
            k
            for k in sorted(self.desired - set(self.owned))
            if self._take_failures.get(k, (0, 0.0))[1] <= now
        ]
        # Taking a partition waits on init_transactions (the fence): do them together.
        await asyncio.gather(*(self._take_or_retry(k) for k in due))
        metrics.OWNED_PARTITIONS.set(len(self.owned))
        return set(self.owned) != before

    async def _take_or_retry(self, key: PartitionKey) -> None:
        try:
            await self._take(key)
        except (KafkaUnavailableError, ProducerFatalError, KafkaException) as exc:
            failures = self._take_failures.get(key, (0, 0.0))[0] + 1
            delay = jittered_backoff_s(failures)
            retry_at = asyncio.get_running_loop().time() + delay
            self._take_failures[key] = (failures, retry_at)
            KAFKA_RETRIES.labels("inference", "take_partition").inc()
            self.degraded[f"partition {key}"] = f"not taken yet: {exc}"
            log.warning(
                "partition not taken; retrying",
                partition=key,
                failures=failures,
                retry_in_s=round(delay, 2),
                error=str(exc),
            )
        else:
            self._take_failures.pop(key, None)
            self.degraded.pop(f"partition {key}", None)

    async def _take(self, key: PartitionKey) -> None:
        """Fence the previous owner, read the committed offset, start consuming. A
        failure keeps the producer being initialised, for the retry to resume."""
        consumer = self._consumer
        txn = self._taking.get(key) or self._make_committer(key)
        self._taking[key] = txn
        await asyncio.to_thread(txn.open)  # fences the previous owner first
        tp = self.requests.topic_partition(key)
        [committed] = await asyncio.to_thread(consumer.committed, [tp], 30)
        start = committed.offset
        if start < 0:
            low, _ = await asyncio.to_thread(consumer.get_watermark_offsets, tp, 30, False)
            start = low
        del self._taking[key]
        lane_rank = self.requests.lane_rank(key)
        self.owned[key] = OwnedPartition(key, txn, PartitionProgress(start), lane_rank)
        consumer.incremental_assign([self.requests.topic_partition(key, start or OFFSET_BEGINNING)])
        # librdkafka keeps a partition's pause flag across unassign and assign: one this
        # worker paused while releasing it earlier would stay silent when taken back.
        consumer.resume([self.requests.topic_partition(key)])
        log.info("partition taken", partition=key, offset=start)

    async def release(self, part: OwnedPartition, commit: CommitStep) -> None:
        """Stop taking records, let in-flight ones finish (bounded), commit, hand over."""
        part.releasing = True
        self.set_paused(self._paused | {part.key})
        self._drop_held(part)
        await self._in_flight.finish(part.key, self._drain_grace_s)
        # Left past the grace period: the engine stops them; the new owner redoes them.
        await self._in_flight.cancel(part.key)
        await commit(part)
        await self.forget(part)
        log.info("partition released", partition=part.key)

    async def lose(self, part: OwnedPartition) -> None:
        """Fenced by a new owner. Lost, not released: only a new assignment may give it
        back, or two owners would fence each other in turn."""
        self.desired.discard(part.key)
        await self.forget(part)

    async def forget(self, part: OwnedPartition, close: bool = True) -> None:
        """Stop owning `part` without committing; `close=False` leaves its producer to a
        call still using it."""
        if not self.owns(part):
            return  # forgotten already: fenced while it was being released
        self._drop_held(part)
        del self.owned[part.key]
        self._paused.discard(part.key)
        self._consumer.incremental_unassign([self.requests.topic_partition(part.key)])
        if close:
            await asyncio.to_thread(part.txn.close)
        metrics.OWNED_PARTITIONS.set(len(self.owned))

    async def close(self) -> None:
        """Producers of partitions still owned (an exit past drain) or still being taken."""
        for txn in [*(part.txn for part in self.owned.values()), *self._taking.values()]:
            await asyncio.to_thread(txn.close)
        self._taking.clear()

    # -- held records ---------------------------------------------------------
    def hold(self, part: OwnedPartition, origin: Origin) -> None:
        """Keep a taken record for its lane's share."""
        part.held.append(origin)
        self.held += 1

    def unhold(self, part: OwnedPartition) -> Origin:
        """The oldest held record of `part`, to run now."""
        self.held -= 1
        return part.held.popleft()

    def _drop_held(self, part: OwnedPartition) -> None:
        """Held records are left to the next owner: the commit stops below them."""
        self.held -= len(part.held)
        part.held.clear()

    # -- fetching -------------------------------------------------------------
    def set_paused(self, wanted: set[PartitionKey]) -> None:
        """Pause the owned partitions in `wanted`, resume the others."""
        to_pause = wanted - self._paused
        to_resume = (self._paused - wanted) & set(self.owned)
        if to_pause:
            self._consumer.pause([self.requests.topic_partition(k) for k in to_pause])
        if to_resume:
            self._consumer.resume([self.requests.topic_partition(k) for k in to_resume])
        self._paused = wanted & set(self.owned)
