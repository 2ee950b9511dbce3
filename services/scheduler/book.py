"""The published assignment: read back from the compacted topic, and republished.

The assignments topic is the scheduler's memory of its decisions: a restarted
scheduler reads it to the end and carries on from the same lists and generation,
so a restart moves nothing.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Set
from typing import Any

from services.codec import ASSIGNMENT, codec
from services.kafka.compacted import read_latest
from services.kafka.producer import AsyncProducer, DeliveryBatch
from services.logs import get_logger
from services.routing import ModelPartition, decode_partitions, encode_partitions

log = get_logger("book")


Lists = Mapping[str, frozenset[ModelPartition]]


def read_published(
    kafka_config: dict[str, Any], topic: str
) -> dict[str, tuple[int, frozenset[ModelPartition]]]:
    """Every worker's latest (generation, partitions) on the assignments topic. A v1
    record (partitions of the one requests topic before topics per model) reads as an
    empty list: its worker reports what it holds and the next pass decides afresh."""

    def decode(value: bytes) -> tuple[int, frozenset[ModelPartition]]:
        record = codec(ASSIGNMENT).decode(value)
        return record["generation"], decode_partitions(record["model_partitions"])

    return read_latest(kafka_config, topic, decode)


class AssignmentBook:
    """The lists last published per worker, and the next generation number."""

    def __init__(self, producer: AsyncProducer, topic: str) -> None:
        self._producer = producer
        self._topic = topic
        self.published: dict[str, frozenset[ModelPartition]] = {}
        self.generation = 0

    def load(self, latest: Mapping[str, tuple[int, frozenset[ModelPartition]]]) -> None:
        self.published = {w: ps for w, (_, ps) in latest.items()}
        self.generation = max((g for g, _ in latest.values()), default=0)

    async def publish(self, lists: Lists, resend: Set[str] = frozenset()) -> int:
        """Publish the lists that changed, and those of `resend` as they are, under one new
        generation; returns how many."""
        changed = {w: ps for w, ps in lists.items() if self.published.get(w) != ps or w in resend}
        if not changed:
            return 0
        generation = self.generation + 1
        batch = DeliveryBatch(asyncio.get_running_loop())
        now_ms = int(time.time() * 1000)
        for worker_id, partitions in sorted(changed.items()):
            record = {
                "worker_id": worker_id,
                "generation": generation,
                "partitions": [],
                "model_partitions": encode_partitions(partitions),
                "assigned_at_ms": now_ms,
            }
            await self._producer.produce(
                batch, self._topic, codec(ASSIGNMENT).encode(record), key=worker_id.encode()
            )
        await batch.wait()
        batch.raise_for_errors()
        self.generation = generation
        self.published.update(changed)
        log.info(
            "assignment published",
            generation=generation,
            lists={w: [f"{m}/{p}" for m, p in sorted(ps)] for w, ps in changed.items()},
        )
        return len(changed)
