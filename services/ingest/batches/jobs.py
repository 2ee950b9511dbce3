"""Job records: what ingest accepted per job, published to the compacted jobs topic.

The scheduler's job progress takes a job's total from here. The totals survive
an ingest restart: they are read back from the topic at start-up.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from typing import Any

from services.codec import JOB, codec
from services.kafka.compacted import read_latest
from services.kafka.producer import AsyncProducer, DeliveryBatch


@dataclass(frozen=True)
class JobTotals:
    job_id: str
    tenant: str
    accepted: int = 0
    rejected: int = 0
    sealed: bool = False
    cancel_reason: str | None = None

    def record(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "tenant": self.tenant,
            "accepted": self.accepted,
            "rejected": self.rejected,
            "sealed": self.sealed,
            "updated_at_ms": int(time.time() * 1000),
            "cancelled": self.cancel_reason is not None,
            "cancel_reason": self.cancel_reason,
        }


class JobBook:
    """Running totals per job; every change is published before it is reported."""

    def __init__(self, producer: AsyncProducer, topic: str) -> None:
        self._producer = producer
        self._topic = topic
        self._jobs: dict[str, JobTotals] = {}
        self._lock = asyncio.Lock()

    def load(self, kafka_config: dict[str, Any]) -> None:
        """Read the totals back from the jobs topic (blocking; run at start-up)."""
        latest = read_latest(kafka_config, self._topic, codec(JOB).decode)
        self._jobs = {
            job_id: JobTotals(
                job_id, r["tenant"], r["accepted"], r["rejected"], r["sealed"], r["cancel_reason"]
            )
            for job_id, r in latest.items()
        }

    def get(self, job_id: str) -> JobTotals | None:
        return self._jobs.get(job_id)

    def all(self) -> list[JobTotals]:
        return list(self._jobs.values())

    async def claim(self, job_id: str, tenant: str) -> JobTotals:
        """The job's totals; a job id nobody has used becomes `tenant`'s here and now, so
        two first uploads racing cannot both own it (the topic has it with the totals
        its first upload publishes)."""
        async with self._lock:
            current = self._jobs.get(job_id)
            if current is None:
                current = self._jobs[job_id] = JobTotals(job_id, tenant)
            return current

    async def add(
        self, job_id: str, tenant: str, *, accepted: int, rejected: int, seal: bool
    ) -> JobTotals:
        async with self._lock:
            current = self._jobs.get(job_id) or JobTotals(job_id, tenant)
            updated = replace(
                current,
                accepted=current.accepted + accepted,
                rejected=current.rejected + rejected,
                sealed=current.sealed or seal,
            )
            await self._publish(updated)
            self._jobs[job_id] = updated
            return updated

    async def cancel(self, job_id: str, reason: str) -> JobTotals | None:
        """Tell workers to stop running the job: they record its remaining requests as
        cancelled. Returns None for an unknown job."""
        async with self._lock:
            current = self._jobs.get(job_id)
            if current is None:
                return None
            if current.cancel_reason is None:
                current = replace(current, cancel_reason=reason)
                await self._publish(current)
                self._jobs[job_id] = current
            return current

    @contextlib.asynccontextmanager
    async def locked(self) -> AsyncIterator[None]:
        """Hold the book while totals are published by another producer (the submissions
        consumer's transaction): no upload's change can interleave."""
        async with self._lock:
            yield

    def remember(self, totals: JobTotals) -> None:
        """Totals published in a committed transaction; call inside `locked()`."""
        self._jobs[totals.job_id] = totals

    async def _publish(self, totals: JobTotals) -> None:
        batch = DeliveryBatch(asyncio.get_running_loop())
        value = codec(JOB).encode(totals.record())
        await self._producer.produce(batch, self._topic, value, key=totals.job_id.encode())
        await batch.wait()
        batch.raise_for_errors()
