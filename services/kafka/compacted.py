"""Read a compacted topic to its end: the latest value of every key."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from services.errors import KafkaUnavailableError

Value = TypeVar("Value")


def read_latest(
    kafka_config: dict[str, Any], topic: str, decode: Callable[[bytes], Value]
) -> dict[str, Value]:
    """Every key's latest value on the topic (tombstones remove the key), read to the
    end offsets as they were when the read began."""
    consumer = Consumer(
        {
            **kafka_config,
            "group.id": "kbatch-compacted-reader",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
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
                raise KafkaUnavailableError(f"reading {topic}: {error}")
            partition, offset = message.partition(), message.offset()
            assert partition is not None and offset is not None
            if offset + 1 >= ends.get(partition, 0):
                ends.pop(partition, None)
            key = (message.key() or b"").decode()
            value = message.value()
            if value is None:
                latest.pop(key, None)
            else:
                latest[key] = decode(value)
        return latest
    finally:
        consumer.close()
