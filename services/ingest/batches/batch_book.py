"""Batch objects, persisted to the compacted batches topic (JSON) and read back at start."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

from services.kafka.compacted import read_latest
from services.kafka.producer import AsyncProducer, DeliveryBatch


class BatchBook:
    def __init__(self, producer: AsyncProducer, topic: str) -> None:
        self._producer = producer
        self._topic = topic
        self._batches: dict[str, dict[str, Any]] = {}
        self._lock = asyncio.Lock()

    def load(self, kafka_config: dict[str, Any]) -> None:
        self._batches = read_latest(kafka_config, self._topic, json.loads)

    def get(self, batch_id: str) -> dict[str, Any] | None:
        return self._batches.get(batch_id)

    def all(self) -> list[dict[str, Any]]:
        return list(self._batches.values())

    async def put(self, batch: dict[str, Any]) -> None:
        """Publish, wait for the broker's ack, then keep: what a client saw is durable."""
        async with self._lock:
            await self._publish(batch)

    async def update(
        self, batch_id: str, change: Callable[[dict[str, Any]], dict[str, Any] | None]
    ) -> dict[str, Any] | None:
        """Apply `change` to the batch as it is now and publish what it returns (None, or
        an equal batch: nothing to publish). Under the book's lock, so no other writer's
        change lands between the read and the write. Returns the batch as kept (None for
        an unknown one)."""
        async with self._lock:
            current = self._batches.get(batch_id)
            if current is None:
                return None
            updated = change(current)
            if updated is None or updated == current:
                return current
            await self._publish(updated)
            return updated

    async def _publish(self, batch: dict[str, Any]) -> None:
        delivery = DeliveryBatch(asyncio.get_running_loop())
        value = json.dumps(batch, separators=(",", ":")).encode()
        await self._producer.produce(delivery, self._topic, value, key=batch["id"].encode())
        await delivery.wait()
        delivery.raise_for_errors()
        self._batches[batch["id"]] = batch
