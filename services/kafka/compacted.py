"""Read a compacted topic to its end: the latest value of every key."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

from services.errors import KafkaUnavailableError

Value = TypeVar("Value")


def read_latest(
    kafka_config: dict[str, Any], topic: str, decode: Callable[[bytes], Value]
) -> dict[str, Value]:
    """Every key's latest value on the topic (tombstones remove the key), read to the end."""
    consumer = Consumer(
        {
            **kafka_config,
            "group.id": "kbatch-compacted-reader",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
            # The end is known by EOF, not by offsets: a transactional topic ends in a
            # commit marker that no message carries.
            "enable.partition.eof": True,
        }
    )
    try:
        partitions = consumer.list_topics(topic, timeout=30).topics[topic].partitions
        ends = {}
        for partition in partitions:
            _, end = consumer.get_watermark_offsets(TopicPartition(topic, partition), 30, False)
            if end > 0:
                ends[partition] = end
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in ends])
        latest: dict[str, Value] = {}
        while ends:
            message = consumer.poll(1.0)
            if message is None:
                continue
            error = message.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    ends.pop(message.partition() or 0, None)
                    continue
                raise KafkaUnavailableError(f"reading {topic}: {error}")
            key = (message.key() or b"").decode()
            value = message.value()
            if value is None:
                latest.pop(key, None)
            else:
                latest[key] = decode(value)
        return latest
    finally:
        consumer.close()
