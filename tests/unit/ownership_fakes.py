"""Collaborators the ownership and commit objects take as arguments: a consumer and
committers that record what they were asked, in one shared log."""

from __future__ import annotations

import threading
from typing import Any

from confluent_kafka import OFFSET_INVALID, TopicPartition

from services.inference.in_flight import InFlight
from services.inference.ownership import Assignment, Ownership
from services.inference.request_partitions import PartitionKey, RequestPartitions
from services.kafka.transactions import OutRecord
from services.lanes import LaneLayout
from services.routing import ModelPartition, RequestLayout

MODEL = "m"  # the one model whose requests topic the fakes own partitions of
REQUESTS = RequestPartitions(RequestLayout("test", LaneLayout(high=1, normal=1, low=1)), "test")


def key(partition: int) -> ModelPartition:
    """The ownership key of one partition of MODEL's requests topic."""
    return ModelPartition(MODEL, partition)


def key_at(tp: TopicPartition) -> ModelPartition:
    """The key a TopicPartition addresses; it must name MODEL's requests topic."""
    found = key(tp.partition)
    assert tp.topic == REQUESTS.topic_of(found), f"{tp.topic} is not {MODEL}'s requests topic"
    return found


def out(name: str) -> OutRecord:
    return OutRecord("results", name.encode(), name.encode(), [])


class FakeConsumer:
    """Answers committed offsets and watermarks; records assignment and pausing."""

    def __init__(
        self, log: list[str], committed: dict[PartitionKey, int] | None = None, low: int = 0
    ):
        self.log = log
        self.committed_offsets = committed or {}
        self.low = low
        self.assigned: dict[PartitionKey, int] = {}  # key -> offset it was assigned at
        self.paused: set[PartitionKey] = set()

    def committed(
        self, partitions: list[TopicPartition], timeout: float = -1
    ) -> list[TopicPartition]:
        return [
            TopicPartition(
                tp.topic, tp.partition, self.committed_offsets.get(key_at(tp), OFFSET_INVALID)
            )
            for tp in partitions
        ]

    def get_watermark_offsets(
        self, partition: TopicPartition, timeout: float = -1, cached: bool = False
    ) -> tuple[int, int]:
        key_at(partition)  # only MODEL's requests topic is asked about
        return self.low, self.low + 100

    def incremental_assign(self, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            self.log.append(f"assign {tp.partition}@{tp.offset}")
            self.assigned[key_at(tp)] = tp.offset

    def incremental_unassign(self, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            self.log.append(f"unassign {tp.partition}")
            del self.assigned[key_at(tp)]

    def pause(self, partitions: list[TopicPartition]) -> None:
        self.paused |= {key_at(tp) for tp in partitions}

    def resume(self, partitions: list[TopicPartition]) -> None:
        self.paused -= {key_at(tp) for tp in partitions}


class FakeCommitter:
    """A partition's committer: `open_errors` and `commit_errors` are raised in turn by
    the next calls; `block`, when set, holds every commit until it is set."""

    def __init__(self, key: PartitionKey, log: list[str]) -> None:
        self.key = key
        self.log = log
        self.open_errors: list[Exception] = []
        self.commit_errors: list[Exception] = []
        self.block: threading.Event | None = None
        self.opens = 0
        self.commits: list[tuple[int, list[OutRecord]]] = []  # (offset, outputs)
        self.closed = False
        self.discarded = False

    def open(self) -> None:
        self.opens += 1
        if self.open_errors:
            raise self.open_errors.pop(0)
        self.log.append(f"open {self.key.partition}")

    def commit(self, records: list[OutRecord], offset: TopicPartition, metadata: Any) -> None:
        if self.block is not None:
            self.block.wait()
        if self.commit_errors:
            raise self.commit_errors.pop(0)
        assert key_at(offset) == self.key
        self.commits.append((offset.offset, list(records)))
        self.log.append(f"commit {self.key.partition}@{offset.offset}")

    def close(self) -> None:
        self.closed = True
        self.log.append(f"close {self.key.partition}")

    def discard(self) -> None:
        self.discarded = True


class Committers:
    """The committer factory: a FakeCommitter per call, the newest of each key kept."""

    def __init__(self, log: list[str]) -> None:
        self.log = log
        self.made: list[FakeCommitter] = []
        self.prepared: dict[PartitionKey, FakeCommitter] = {}

    def of(self, key: PartitionKey) -> FakeCommitter:
        """The committer the next take of `key` gets (made now, to be set up)."""
        self.prepared[key] = FakeCommitter(key, self.log)
        return self.prepared[key]

    def latest(self, key: PartitionKey) -> FakeCommitter:
        return [c for c in self.made if c.key == key][-1]

    def __call__(self, key: PartitionKey) -> FakeCommitter:
        made = self.prepared.pop(key, None) or FakeCommitter(key, self.log)
        self.made.append(made)
        return made


def ownership_of(
    consumer: FakeConsumer,
    committers: Committers,
    desired: set[PartitionKey],
    in_flight: InFlight | None = None,
    grace_s: float = 0.2,
) -> Ownership:
    return Ownership(
        consumer,
        REQUESTS,
        Assignment(set(desired)),
        committers,
        InFlight() if in_flight is None else in_flight,
        grace_s,
    )
