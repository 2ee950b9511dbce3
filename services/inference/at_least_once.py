"""The at-least-once committer: what a partition's commit costs without transactions.

Only for measuring transactions (`KBATCH_INFERENCE__TRANSACTIONS=false`): outputs are
produced and acknowledged first, then the offset is committed, so a crash between
the two publishes some results twice. Nothing fences a zombie owner either.
"""

from __future__ import annotations

from typing import Any

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition

from services.errors import DeliveryError, KafkaUnavailableError
from services.kafka.transactions import OutRecord, produce_record


class PartitionAtLeastOnce:
    """Same shape as TransactionalProducer: open, commit, close."""

    def __init__(self, config: dict[str, Any], consumer: Consumer, timeout_s: float = 30) -> None:
        self._config = {**config, "enable.idempotence": True, "acks": "all"}
        self._consumer = consumer
        self._timeout_s = timeout_s
        self._producer: Producer | None = None

    def open(self) -> None:
        if self._producer is None:
            self._producer = Producer(self._config)

    def commit(
        self, records: list[OutRecord], offset: TopicPartition, _group_metadata: Any
    ) -> None:
        producer = self._producer
        if producer is None:
            raise RuntimeError("at-least-once committer used before open()")
        for record in records:
            produce_record(producer, record)
        if producer.flush(self._timeout_s):
            raise DeliveryError("outputs not acknowledged; the offset stays uncommitted")
        try:
            self._consumer.commit(offsets=[offset], asynchronous=False)
        except KafkaException as exc:
            raise KafkaUnavailableError(f"offset commit failed: {exc}") from exc

    def close(self) -> None:
        if self._producer is not None:
            self._producer.flush(self._timeout_s)
            self._producer = None

    def discard(self) -> None:
        """Close without delivering what is queued (its offset will not be committed)."""
        if self._producer is not None:
            self._producer.purge()
            self._producer = None
