"""The fleet as the scheduler sees it, from the latest heartbeat of each worker (pure)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from services.routing import ModelPartition, decode_partitions
from services.scheduler.inputs import Pool, WorkerView


@dataclass(frozen=True)
class WorkerState:
    """The latest heartbeat of one worker and when the scheduler received it."""

    heartbeat: Mapping[str, Any]
    received_at_ms: int

    @property
    def worker_id(self) -> str:
        return str(self.heartbeat["worker_id"])

    def alive(self, now_ms: int, timeout_ms: int) -> bool:
        """Gone after the timeout, or at once when its last heartbeat said it is leaving."""
        return not self.heartbeat["leaving"] and now_ms - self.received_at_ms <= timeout_ms

    def view(self) -> WorkerView:
        beat = self.heartbeat
        return WorkerView(
            worker_id=self.worker_id,
            pool=Pool(beat["pool"]),
            capacity=int(beat["capacity"]),
            models=frozenset(beat.get("served_models") or ()),
            healthy=bool(beat["healthy"]),
            draining=bool(beat["draining"]),
        )

    @property
    def owned(self) -> frozenset[ModelPartition]:
        return decode_partitions(self.heartbeat.get("owned_partitions") or ())


def live(states: Iterable[WorkerState], now_ms: int, timeout_ms: int) -> list[WorkerState]:
    return [s for s in states if s.alive(now_ms, timeout_ms)]


def reported_owned(states: Iterable[WorkerState]) -> dict[str, frozenset[ModelPartition]]:
    """What each live worker says it holds: moves wait for these to be let go."""
    return {s.worker_id: s.owned for s in states}
