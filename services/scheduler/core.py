"""One assignment pass: fleet + backlog + current decision -> published lists."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from services.lanes import Lane, LaneLayout
from services.logs import get_logger
from services.scheduler import metrics
from services.scheduler.assignment import (
    Assignment,
    PartitionView,
    assign,
    publishable,
    to_resend,
)
from services.scheduler.book import AssignmentBook
from services.scheduler.fleet import WorkerState, live, reported_owned

log = get_logger("scheduler")

BacklogReader = Callable[[], Mapping[int, int]]


@dataclass
class PassReport:
    """What the last pass decided, for the web views."""

    at_ms: int = 0
    decision: Assignment = field(default_factory=lambda: Assignment({}))
    published: Mapping[str, frozenset[int]] = field(default_factory=dict)
    backlog: Mapping[int, int] = field(default_factory=dict)


# Longer than a worker needs to take a partition (init_transactions, committed offsets).
RESEND_AFTER_MS = 15_000


class SchedulerCore:
    """Runs assignment passes; the faust app feeds it worker states."""

    def __init__(
        self,
        layout: LaneLayout,
        book: AssignmentBook,
        read_backlog: BacklogReader,
        heartbeat_timeout_s: float,
    ) -> None:
        self.layout = layout
        self.book = book
        self.read_backlog = read_backlog
        self.timeout_ms = int(heartbeat_timeout_s * 1000)
        self.decided: dict[str, frozenset[int]] = {}
        self.orphaned: dict[int, int] = {}  # partition -> last heartbeat of its lost owner
        self.missing_since: dict[tuple[str, int], int] = {}  # published, not reported owned
        self.wake = asyncio.Event()
        self.last = PassReport()

    def start_from(self, published: Mapping[str, frozenset[int]]) -> None:
        self.decided = dict(published)

    async def run_pass(self, states: Iterable[WorkerState]) -> PassReport:
        now_ms = int(time.time() * 1000)
        states = list(states)
        alive = live(states, now_ms, self.timeout_ms)
        self._note_lost(states, alive, now_ms)
        backlog = await asyncio.to_thread(self.read_backlog)
        partitions = [
            PartitionView(p, self.layout.lane_of(p), backlog.get(p, 0))
            for p in range(self.layout.total)
        ]
        decision = assign([s.view() for s in alive], partitions, self.decided)
        self.decided = dict(decision.by_worker)
        owned = reported_owned(alive)
        lists = publishable(decision.by_worker, owned)
        for worker_id, partitions_held in self.book.published.items():
            if worker_id not in lists and partitions_held:
                lists[worker_id] = frozenset()  # gone or ineligible: it holds nothing now
        resend, self.missing_since = to_resend(
            self.book.published, owned, self.missing_since, now_ms, RESEND_AFTER_MS
        )
        await self.book.publish(lists, resend)
        metrics.MOVES.inc(len(decision.moved))
        self._export(alive, decision, backlog)
        self.last = PassReport(now_ms, decision, dict(self.book.published), dict(backlog))
        return self.last

    def _note_lost(self, states: list[WorkerState], alive: list[WorkerState], now_ms: int) -> None:
        alive_ids = {s.worker_id for s in alive}
        for state in states:
            held = self.book.published.get(state.worker_id, frozenset())
            if state.worker_id in alive_ids or not held:
                continue
            fresh = [p for p in held if p not in self.orphaned]
            if fresh:
                reason = "leaving" if state.heartbeat["leaving"] else "timeout"
                metrics.WORKERS_LOST.labels(reason).inc()
                log.warning(
                    "worker gone", worker_id=state.worker_id, reason=reason, partitions=sorted(held)
                )
            for partition in fresh:
                self.orphaned[partition] = state.received_at_ms
        for state in alive:
            for partition in state.owned & set(self.orphaned):
                seconds = (now_ms - self.orphaned.pop(partition)) / 1000
                metrics.FAILOVER_SECONDS.observe(seconds)
                log.info(
                    "partition owned again",
                    partition=partition,
                    worker_id=state.worker_id,
                    after_s=seconds,
                )

    def _export(
        self, alive: list[WorkerState], decision: Assignment, backlog: Mapping[int, int]
    ) -> None:
        metrics.WORKERS.clear()
        for state in alive:
            view = state.view()
            metrics.WORKERS.labels(
                view.pool.value, "healthy" if view.healthy else "unhealthy"
            ).inc()
        assigned = {p for ps in decision.by_worker.values() for p in ps}
        for lane in Lane:
            lane_partitions = self.layout.partitions(lane)
            metrics.PARTITIONS_ASSIGNED.labels(lane.value).set(
                len(assigned.intersection(lane_partitions))
            )
            metrics.PARTITIONS_WAITING.labels(lane.value).set(
                len(set(decision.waiting).intersection(lane_partitions))
            )
            metrics.BACKLOG.labels(lane.value).set(sum(backlog.get(p, 0) for p in lane_partitions))
        metrics.GENERATION.set(self.book.generation)
