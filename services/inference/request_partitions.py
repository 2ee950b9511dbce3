"""What the worker owns, and where it lives: an ownership key and its requests topic,
partition, lane and transactional id. Every TopicPartition of the requests topic the
worker asks Kafka about is built here, from a key."""

from __future__ import annotations

from dataclasses import dataclass

from confluent_kafka import Consumer, Message, TopicPartition

from services.kafka.lag import end_offsets
from services.kafka.transactions import transactional_id
from services.lanes import LANE_ORDER, Lane, LaneLayout
from services.settings import TopicSettings

# What the worker takes, owns, commits and releases: one requests partition.
PartitionKey = int


@dataclass(frozen=True)
class RequestPartitions:
    """The requests topic's partitions, addressed by ownership key."""

    topic: str
    layout: LaneLayout
    prefix: str  # the cluster's topic prefix, part of every transactional id

    @classmethod
    def of(cls, topics: TopicSettings) -> RequestPartitions:
        return cls(topics.requests, topics.lane_layout(), topics.prefix)

    def topic_of(self, key: PartitionKey) -> str:
        return self.topic

    def partition_of(self, key: PartitionKey) -> int:
        return key

    def topic_partition(self, key: PartitionKey, offset: int | None = None) -> TopicPartition:
        """The key's partition of the requests topic, at `offset` when given."""
        if offset is None:
            return TopicPartition(self.topic_of(key), self.partition_of(key))
        return TopicPartition(self.topic_of(key), self.partition_of(key), offset)

    def key_of(self, message: Message) -> PartitionKey:
        """The key of a fetched record or partition event (both name their partition)."""
        partition = message.partition()
        assert partition is not None  # set on every fetched record and EOF event
        return partition

    def lane_of(self, key: PartitionKey) -> Lane:
        return self.layout.lane_of(self.partition_of(key))

    def lane_rank(self, key: PartitionKey) -> int:
        """Its lane's index in LANE_ORDER."""
        return LANE_ORDER.index(self.lane_of(key))

    def transactional_id(self, key: PartitionKey) -> str:
        """The id of its transactions: whoever takes the key next fences the last owner."""
        return transactional_id(self.prefix, self.topic_of(key), self.partition_of(key))

    def end_offsets(
        self, consumer: Consumer, keys: list[PartitionKey], timeout_s: float
    ) -> dict[PartitionKey, int]:
        """Each key's end offset (a read_committed consumer: its last stable offset)."""
        return end_offsets(consumer, self.topic, keys, timeout_s)
