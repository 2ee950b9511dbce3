"""Read a topic from its start to its end: every record, or every key's latest value."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from confluent_kafka import OFFSET_BEGINNING, KafkaError, Message, TopicPartition

from services.errors import KafkaUnavailableError
from services.kafka.consumers import ConsumerRole, make_consumer

Value = TypeVar("Value")


def read_to_end(kafka_config: dict[str, Any], topic: str, group: str) -> Iterator[Message]:
    """Every committed record of every partition, up to where each ended when reached.

    The end is known by EOF, not by offsets: a transactional topic ends in a commit
    marker that no message carries. The group id commits nothing; it only names the
    reader to the broker.
    """
    consumer = make_consumer(
        kafka_config, ConsumerRole.COMMITTED_READER, group, **{"enable.partition.eof": True}
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
            if error is None:
                yield message
            elif error.code() == KafkaError._PARTITION_EOF:
                remaining.discard(message.partition())
            else:
                raise KafkaUnavailableError(f"reading {topic}: {error}")
    finally:
        consumer.close()


def read_latest(
    kafka_config: dict[str, Any], topic: str, decode: Callable[[bytes], Value]
) -> dict[str, Value]:
    """Every key's latest value on a compacted topic (tombstones remove the key)."""
    latest: dict[str, Value] = {}
    for message in read_to_end(kafka_config, topic, "kbatch-compacted-reader"):
        key = (message.key() or b"").decode()
        value = message.value()
        if value is None:
            latest.pop(key, None)
        else:
            latest[key] = decode(value)
    return latest
