"""Worker heartbeats: what the scheduler needs to know of this worker, on an interval."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from services.codec import HEARTBEAT, codec
from services.errors import DeliveryError
from services.inference.gpu import GpuReport
from services.kafka.producer import AsyncProducer, DeliveryBatch
from services.lifecycle import wait_event
from services.logs import get_logger
from services.routing import ModelPartition, encode_partitions

log = get_logger("heartbeat")


def heartbeat_record(
    *,
    worker_id: str,
    pool: str,
    capacity: int,
    engine: str,
    served_models: tuple[str, ...],
    healthy: bool,
    reasons: tuple[str, ...],
    gpu: GpuReport | None,
    draining: bool,
    leaving: bool,
    generation: int,
    owned: set[ModelPartition],
) -> dict[str, Any]:
    """One heartbeat; the GPU summary is the worst board's figures."""
    samples = gpu.samples if gpu is not None else ()
    memory = max((s.memory_used_bytes / s.memory_total_bytes for s in samples), default=None)
    temperature = max((s.temperature_c for s in samples), default=None)
    return {
        "worker_id": worker_id,
        "pool": pool,
        "capacity": capacity,
        "healthy": healthy,
        "health_reasons": list(reasons),
        "gpu_memory_used_ratio": memory,
        "gpu_temperature_c": temperature,
        "draining": draining,
        "leaving": leaving,
        "generation": generation,
        "owned": [],
        "owned_partitions": encode_partitions(owned),
        "engine": engine,
        "served_models": list(served_models),
        "sent_at_ms": int(time.time() * 1000),
    }


class HeartbeatPublisher:
    """Publishes the record `snapshot()` builds, every interval and on demand."""

    def __init__(
        self,
        producer: AsyncProducer,
        topic: str,
        snapshot: Callable[[], dict[str, Any]],
        interval_s: float,
    ) -> None:
        self._producer = producer
        self._topic = topic
        self.snapshot = snapshot
        self._interval_s = interval_s
        self._now = asyncio.Event()

    def send_soon(self) -> None:
        """Send without waiting for the interval (the assignment or health changed)."""
        self._now.set()

    async def send(self) -> None:
        record = self.snapshot()
        batch = DeliveryBatch(asyncio.get_running_loop())
        await self._producer.produce(
            batch, self._topic, codec(HEARTBEAT).encode(record), key=record["worker_id"].encode()
        )
        await batch.wait()
        batch.raise_for_errors()

    async def run(self) -> None:
        while True:
            try:
                await self.send()
            except DeliveryError as exc:
                # The scheduler sees a missed beat; the next one carries the same state.
                log.warning("heartbeat not delivered", error=str(exc))
            self._now.clear()
            await wait_event(self._now, self._interval_s)
