"""What commits one partition's outputs with its offset: a transaction, or (measuring
only) at-least-once."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from confluent_kafka import Consumer, TopicPartition

from services.inference.at_least_once import PartitionAtLeastOnce
from services.inference.request_partitions import PartitionKey, RequestPartitions
from services.inference.settings import InferenceSettings
from services.kafka.transactions import OutRecord, TransactionalProducer


class Committer(Protocol):
    """Open (fencing the previous owner), commit outputs with an offset, close. Its
    calls block: run them on a thread."""

    def open(self) -> None: ...

    def commit(
        self, records: list[OutRecord], offset: TopicPartition, group_metadata: Any, /
    ) -> None: ...

    def close(self) -> None: ...

    def discard(self) -> None: ...


# A partition's committer, given the worker's consumer (the at-least-once one commits
# offsets through it).
CommitterFactory = Callable[[PartitionKey, Consumer], Committer]


def committer_factory(settings: InferenceSettings) -> CommitterFactory:
    """The committers the settings ask for, one per partition taken."""
    options = settings.inference
    requests = RequestPartitions.of(settings.topics)

    def committer(key: PartitionKey, consumer: Consumer) -> Committer:
        config = settings.kafka_config(
            **{
                "transaction.timeout.ms": options.transaction_timeout_ms,
                "linger.ms": 5,
                "compression.type": "lz4",
                "client.id": f"kbatch-inference-{options.worker_id}",
            }
        )
        if options.transactions:
            return TransactionalProducer(config, requests.transactional_id(key))
        return PartitionAtLeastOnce(config, consumer)

    return committer
