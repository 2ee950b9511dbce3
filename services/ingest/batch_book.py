"""Batch objects, persisted to the compacted batches topic (JSON) and read back at start."""

from __future__ import annotations

import asyncio
import json
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
            delivery = DeliveryBatch(asyncio.get_running_loop())
            value = json.dumps(batch, separators=(",", ":")).encode()
            await self._producer.produce(delivery, self._topic, value, key=batch["id"].encode())
            await delivery.wait()
            delivery.raise_for_errors()
            self._batches[batch["id"]] = batch
