"""The requests running in the engine: how many, and each one's task with its
partition and job, so that releasing a partition, cancelling a job or stopping can
find theirs."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

from services.inference.request_partitions import PartitionKey


class InFlight:
    """Each request's task, with its partition and job: cancelled with either."""

    def __init__(self) -> None:
        self._tasks: dict[asyncio.Task[None], tuple[PartitionKey, str]] = {}
        self.count = 0  # requests started and not ended yet
        self.slot_freed = asyncio.Event()

    def start(self, key: PartitionKey, job_id: str, request: Coroutine[Any, Any, None]) -> None:
        """Run `request` as a task; it calls `ended()` when its engine call returns."""
        self.count += 1
        task = asyncio.create_task(request)
        self._tasks[task] = (key, job_id)
        task.add_done_callback(self._tasks.pop)

    def ended(self) -> None:
        self.count -= 1
        self.slot_freed.set()

    def running_of(self, key: PartitionKey) -> int:
        return sum(1 for k, _ in self._tasks.values() if k == key)

    def cancel_job(self, job_id: str) -> None:
        for task, (_, job) in list(self._tasks.items()):
            if job == job_id:
                task.cancel()

    async def finish(self, key: PartitionKey | None, grace_s: float) -> None:
        """Wait, up to `grace_s`, until no request (of `key`, or at all) is left."""

        def remaining() -> int:
            return self.count if key is None else self.running_of(key)

        deadline = asyncio.get_running_loop().time() + grace_s
        while remaining() and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)

    async def cancel(self, key: PartitionKey | None = None) -> None:
        """Cancel the requests in flight (of one partition, or all) and wait for them."""
        doomed = [t for t, (k, _) in self._tasks.items() if key is None or k == key]
        for task in doomed:
            task.cancel()
        await asyncio.gather(*doomed, return_exceptions=True)
