"""What the worker owns, and where it lives: an ownership key (a model and a partition
of its requests topic) and its topic, partition, lane and transactional id. Every
TopicPartition of a requests topic the worker asks Kafka about is built here, from a key."""

from __future__ import annotations

from dataclasses import dataclass, field

from confluent_kafka import Consumer, Message, TopicPartition

from services.kafka.lag import model_end_offsets
from services.kafka.transactions import transactional_id
from services.lanes import LANE_ORDER, Lane
from services.routing import ModelPartition, RequestLayout
from services.settings import TopicSettings

# What the worker takes, owns, commits and releases: one partition of a model's topic.
PartitionKey = ModelPartition


@dataclass(frozen=True)
class RequestPartitions:
    """The models' requests topics' partitions, addressed by ownership key."""

    layout: RequestLayout
    prefix: str  # the cluster's topic prefix, part of every transactional id
    # Topic names carry a digest, not the model id: the way back, for every key seen.
    _models: dict[str, str] = field(default_factory=dict, compare=False)

    @classmethod
    def of(cls, topics: TopicSettings) -> RequestPartitions:
        return cls(topics.request_layout(), topics.prefix)

    def topic_of(self, key: PartitionKey) -> str:
        topic = self.layout.topic(key.model)
        self._models[topic] = key.model
        return topic

    def partition_of(self, key: PartitionKey) -> int:
        return key.partition

    def topic_partition(self, key: PartitionKey, offset: int | None = None) -> TopicPartition:
        """The key's partition of the requests topic, at `offset` when given."""
        if offset is None:
            return TopicPartition(self.topic_of(key), self.partition_of(key))
        return TopicPartition(self.topic_of(key), self.partition_of(key), offset)

    def key_of(self, message: Message) -> PartitionKey:
        """The key of a fetched record or partition event (both name their topic and
        partition; the topic is one this worker was assigned, through `topic_of`)."""
        topic, partition = message.topic(), message.partition()
        assert topic is not None and partition is not None  # set on records and EOF events
        return ModelPartition(self._models[topic], partition)

    def lane_of(self, key: PartitionKey) -> Lane:
        return self.layout.lane_of(key)

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
        return model_end_offsets(consumer, self.layout, keys, timeout_s)
