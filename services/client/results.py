"""`kbatch results JOB`: a job's output straight from the results topic (read_committed)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

from services.codec import RESULT, codec
from services.collector.openai_format import result_line
from services.errors import KafkaUnavailableError


def job_result_lines(kafka_config: dict[str, Any], topic: str, job_id: str) -> Iterator[str]:
    """OpenAI batch output lines of one job's committed results, in topic order."""
    consumer = Consumer(
        {
            **kafka_config,
            "group.id": "kbatch-results-cli",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
            "enable.partition.eof": True,
        }
    )
    try:
        partitions = consumer.list_topics(topic, timeout=30).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        remaining = set(partitions)
        wanted = job_id.encode()
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
            if message.key() == wanted:  # results are keyed by job
                _, line = result_line(codec(RESULT).decode(message.value()))
                yield json.dumps(line, separators=(",", ":"))
    finally:
        consumer.close()
