"""The real broker for tests and benches: topics per run, reading topics back, waiting."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any, cast

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from services.kafka.consumers import ConsumerRole, make_consumer
from services.kafka.topics import ensure_topics, topic_catalog
from services.settings import TopicSettings


def unique_topics(bootstrap: str, **settings: int) -> TopicSettings:
    """A fresh set of kbatch topics with a unique prefix, created on the broker
    (`settings`: partition counts, replication_factor)."""
    topics = TopicSettings(prefix=f"t{uuid.uuid4().hex[:10]}", **settings)
    admin = AdminClient({"bootstrap.servers": bootstrap})
    ensure_topics(admin, topic_catalog(topics), topics.replication_factor)
    return topics


def read_topic(
    bootstrap: str,
    topic: str,
    expect: int | None = None,
    timeout_s: float = 30,
    committed_only: bool = True,
) -> list[Message]:
    """Every record on `topic` from the start; waits for `expect` records when given.
    A partition is read to where it ended when the read began (its last record then,
    once that is committed when `committed_only`) or to its end, whichever comes
    first; and on, while fewer than `expect` records are read. (Reading on until every
    partition was at its end at once made a read of a topic still being written, one
    that some partition never caught up with, last its whole `timeout_s`.)"""
    role = ConsumerRole.COMMITTED_READER if committed_only else ConsumerRole.READER
    consumer = make_consumer(
        {"bootstrap.servers": bootstrap}, role, **{"enable.partition.eof": True}
    )
    metadata = consumer.list_topics(topic, timeout=10).topics[topic]
    partitions = [TopicPartition(topic, p, 0) for p in metadata.partitions]
    messages: list[Message] = []
    deadline = time.monotonic() + timeout_s
    try:
        # The next offset of each partition as the read begins: its records are those below.
        ends = {tp.partition: _end_offset(consumer, tp, deadline) for tp in partitions}
        unread = {partition for partition, end in ends.items() if end is None or end > 0}
        consumer.assign(partitions)
        while time.monotonic() < deadline:
            msg = consumer.poll(0.2)
            if msg is not None:
                error = msg.error()
                partition = cast(int, msg.partition())
                if error is None:
                    messages.append(msg)
                    # The last record there at the start may be a commit marker, never read.
                    end = ends[partition]
                    if end is not None and cast(int, msg.offset()) >= end - 1:
                        unread.discard(partition)
                elif error.code() == KafkaError._PARTITION_EOF:
                    unread.discard(partition)
                else:
                    raise AssertionError(f"consume error: {error}")
            if not unread and (expect is None or len(messages) >= expect):
                break
    finally:
        consumer.close()
    return messages


def _end_offset(consumer: Consumer, partition: TopicPartition, deadline: float) -> int | None:
    """The partition's high watermark; None when no leader answers now (a broker down):
    the partition is then read to its end."""
    try:
        _, high = consumer.get_watermark_offsets(
            partition, max(0.1, min(5.0, deadline - time.monotonic()))
        )
    except KafkaException:
        return None
    return int(high)


def produce_values(bootstrap: str, topic: str, values: list[bytes], partition: int = 0) -> None:
    """Publish `values` as they are, in order, to one partition; waits for every ack."""
    failures: list[KafkaError] = []

    def delivered(error: KafkaError | None, _: Message) -> None:
        if error is not None:
            failures.append(error)

    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    for value in values:
        producer.produce(topic, value, partition=partition, on_delivery=delivered)
        producer.poll(0)
    unsent = producer.flush(30)
    if unsent or failures:
        raise AssertionError(f"{unsent} record(s) to {topic} unacknowledged in 30 s: {failures}")


def wait_for(
    predicate: Callable[[], Any],
    timeout_s: float = 30,
    what: str = "condition",
    interval_s: float = 0.2,
) -> Any:
    """Poll `predicate` until it returns something truthy, and return that."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval_s)
    raise AssertionError(f"{what} not met within {timeout_s}s")
