"""Dead letters as the tools see them: decoded, with their coordinates, filtered (pure)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

from services.codec import DEAD_LETTER, codec
from services.errors import KafkaUnavailableError


@dataclass(frozen=True)
class DeadLetter:
    topic: str
    partition: int
    offset: int
    record: dict[str, Any]
    headers: dict[str, str]

    @property
    def coordinate(self) -> str:
        return f"{self.topic}:{self.partition}:{self.offset}"

    @property
    def replays(self) -> int:
        return int(self.headers.get("kbatch-replays", "0") or 0)


@dataclass(frozen=True)
class Filters:
    job: str | None = None
    error_class: str | None = None
    since_ms: int | None = None

    def match(self, dead: DeadLetter) -> bool:
        record = dead.record
        return (
            (self.job is None or record["job_id"] == self.job)
            and (self.error_class is None or record["error_class"] == self.error_class)
            and (self.since_ms is None or record["failed_at_ms"] >= self.since_ms)
        )


def read_dead_letters(kafka_config: dict[str, Any], topic: str) -> Iterator[DeadLetter]:
    """Every committed record of the DLQ, up to its end when the read began."""
    consumer = Consumer(
        {
            **kafka_config,
            "group.id": "kbatch-dlq-reader",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
            "enable.partition.eof": True,
        }
    )
    try:
        partitions = consumer.list_topics(topic, timeout=30).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        remaining = set(partitions)
        while remaining:
            message = consumer.poll(1.0)
            if message is None:
                continue
            error = message.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    remaining.discard(message.partition())
                    continue
                raise KafkaUnavailableError(f"reading {topic}: {error}")
            headers = _headers(message.headers() or [])
            yield DeadLetter(
                topic,
                message.partition() or 0,
                message.offset() or 0,
                codec(DEAD_LETTER).decode(message.value()),
                headers,
            )
    finally:
        consumer.close()


def _headers(raw: Any) -> dict[str, str]:
    decoded: dict[str, str] = {}
    for name, value in raw:
        text = value.decode(errors="replace") if isinstance(value, bytes) else str(value or "")
        decoded[str(name)] = text
    return decoded
