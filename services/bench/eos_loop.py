"""The pipeline bench's anchor: a plain confluent-kafka exactly-once loop, no kbatch.

What the same machine moves through Kafka with transactions when nothing else happens:
the requests' partitions assigned, each record answered by a fixed 400-byte result,
one transactional producer per partition (as kbatch's workers fence), offsets sent in
each partition's transaction every 0.5 s. The worker's message path is measured
against it.
"""

from __future__ import annotations

import time

from confluent_kafka import Consumer, Producer, TopicPartition

from services.kafka.consumers import ConsumerRole, make_consumer
from services.settings import TopicSettings

RESULT_BYTES = 400
COMMIT_EVERY_S = 0.5
SIM_MODEL = "kbatch-sim"  # the model of the records the pipeline bench publishes


def plain_eos_rate(bootstrap: str, topics: TopicSettings, expect: int) -> float:
    """Records per second, first record fetched to the last transaction committed."""
    base = {"bootstrap.servers": bootstrap}
    partitions = range(topics.lane_layout().total)
    requests = topics.requests_of(SIM_MODEL)
    consumer = make_consumer(base, ConsumerRole.MEMBER, f"{topics.prefix}-anchor")
    producers = {
        p: Producer({**base, "transactional.id": f"{topics.prefix}-anchor-{p}", "linger.ms": 5})
        for p in partitions
    }
    try:
        for producer in producers.values():
            producer.init_transactions(30)
            producer.begin_transaction()
        consumer.assign([TopicPartition(requests, p, 0) for p in partitions])
        result = b"r" * RESULT_BYTES
        next_offsets: dict[int, int] = {}
        committed = pending = 0
        started, last_commit = 0.0, time.monotonic()
        while committed < expect:
            for message in consumer.consume(500, 0.1):
                partition, offset = message.partition(), message.offset()
                if message.error() is not None or partition is None or offset is None:
                    continue  # partition EOF and the like: the count decides when to stop
                started = started or time.monotonic()
                producers[partition].produce(topics.results, result, key=message.key())
                next_offsets[partition] = offset + 1
                pending += 1
            due = time.monotonic() - last_commit >= COMMIT_EVERY_S
            if pending and (due or committed + pending >= expect):
                _commit(producers, consumer, requests, next_offsets)
                committed, pending, last_commit = committed + pending, 0, time.monotonic()
        return expect / (time.monotonic() - started)
    finally:
        consumer.close()
        for producer in producers.values():
            producer.flush(10)


def _commit(
    producers: dict[int, Producer], consumer: Consumer, topic: str, next_offsets: dict[int, int]
) -> None:
    """Commit the open transaction of every partition read since the last commit."""
    metadata = consumer.consumer_group_metadata()
    for partition, offset in next_offsets.items():
        producer = producers[partition]
        producer.send_offsets_to_transaction(
            [TopicPartition(topic, partition, offset)], metadata, 30
        )
        producer.commit_transaction(30)
        producer.begin_transaction()
    next_offsets.clear()
