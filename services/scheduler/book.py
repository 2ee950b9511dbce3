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

log = get_logger("book")


def read_published(
    kafka_config: dict[str, Any], topic: str
) -> dict[str, tuple[int, frozenset[int]]]:
    """Every worker's latest (generation, partitions) on the assignments topic."""

    def decode(value: bytes) -> tuple[int, frozenset[int]]:
        record = codec(ASSIGNMENT).decode(value)
        return record["generation"], frozenset(record["partitions"])

    return read_latest(kafka_config, topic, decode)


class AssignmentBook:
    """The lists last published per worker, and the next generation number."""

    def __init__(self, producer: AsyncProducer, topic: str) -> None:
        self._producer = producer
        self._topic = topic
        self.published: dict[str, frozenset[int]] = {}
        self.generation = 0

    def load(self, latest: Mapping[str, tuple[int, frozenset[int]]]) -> None:
        self.published = {w: ps for w, (_, ps) in latest.items()}
        self.generation = max((g for g, _ in latest.values()), default=0)

    async def publish(
        self, lists: Mapping[str, frozenset[int]], resend: Set[str] = frozenset()
    ) -> int:
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
                "partitions": sorted(partitions),
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
            lists={w: sorted(ps) for w, ps in changed.items()},
        )
        return len(changed)
