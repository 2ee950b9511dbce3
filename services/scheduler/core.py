"""One assignment pass: fleet + backlog + current decision -> published lists."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from services.lanes import LANE_ORDER
from services.logs import get_logger
from services.routing import Cell, ModelPartition, RequestLayout
from services.scheduler import metrics
from services.scheduler.assignment import Assignment, assign
from services.scheduler.book import AssignmentBook
from services.scheduler.fleet import WorkerState, live, reported_owned
from services.scheduler.handover import publishable, to_resend
from services.scheduler.inputs import PartitionView

log = get_logger("scheduler")

BacklogReader = Callable[[list[str]], Mapping[ModelPartition, int]]
KnownModels = Callable[[], frozenset[str]]


@dataclass
class PassReport:
    """What the last pass decided, for the web views."""

    at_ms: int = 0
    decision: Assignment = field(default_factory=lambda: Assignment({}))
    published: Mapping[str, frozenset[ModelPartition]] = field(default_factory=dict)
    backlog: Mapping[ModelPartition, int] = field(default_factory=dict)
    serving: Mapping[str, frozenset[str]] = field(default_factory=dict)  # model -> workers


# Longer than a worker needs to take a partition (init_transactions, committed offsets).
RESEND_AFTER_MS = 15_000


class SchedulerCore:
    """Runs assignment passes; the faust app feeds it worker states."""

    def __init__(
        self,
        layout: RequestLayout,
        book: AssignmentBook,
        read_backlog: BacklogReader,
        heartbeat_timeout_s: float,
        known_models: KnownModels,
    ) -> None:
        self.layout = layout
        self.book = book
        self.read_backlog = read_backlog
        self.known_models = known_models
        self.timeout_ms = int(heartbeat_timeout_s * 1000)
        self.decided: dict[str, frozenset[ModelPartition]] = {}
        # partition -> last heartbeat of its lost owner
        self.orphaned: dict[ModelPartition, int] = {}
        # published, not reported owned since
        self.missing_since: dict[tuple[str, ModelPartition], int] = {}
        self.wake = asyncio.Event()
        self.last = PassReport()

    def start_from(self, published: Mapping[str, frozenset[ModelPartition]]) -> None:
        self.decided = dict(published)

    async def run_pass(self, states: Iterable[WorkerState]) -> PassReport:
        now_ms = int(time.time() * 1000)
        states = list(states)
        alive = live(states, now_ms, self.timeout_ms)
        self._note_lost(states, alive, now_ms)
        # Registered models, and any a live worker declares before its record is read.
        models = sorted(self.known_models() | {m for s in alive for m in s.view().models})
        backlog = await asyncio.to_thread(self.read_backlog, models)
        partitions = [
            PartitionView(where, self.layout.lane_of(where), backlog.get(where, 0))
            for where in self.layout.all_partitions(models)
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
        serving = {
            m: frozenset(s.worker_id for s in alive if m in s.view().models and s.view().eligible)
            for m in models
        }
        self._export(alive, decision, backlog, serving)
        self.last = PassReport(now_ms, decision, dict(self.book.published), dict(backlog), serving)
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
        self,
        alive: list[WorkerState],
        decision: Assignment,
        backlog: Mapping[ModelPartition, int],
        serving: Mapping[str, frozenset[str]],
    ) -> None:
        metrics.WORKERS.clear()
        for state in alive:
            view = state.view()
            metrics.WORKERS.labels(
                view.pool.value, "healthy" if view.healthy else "unhealthy"
            ).inc()
        assigned = {p for ps in decision.by_worker.values() for p in ps}
        waiting = set(decision.waiting)
        for gauge in (
            metrics.PARTITIONS_ASSIGNED,
            metrics.PARTITIONS_WAITING,
            metrics.BACKLOG,
            metrics.WORKERS_SERVING,
        ):
            gauge.clear()  # a model gone from the registry leaves no stale series
        for model, workers in serving.items():
            metrics.WORKERS_SERVING.labels(model).set(len(workers))
            for lane in LANE_ORDER:
                cell = self.layout.cell_partitions(Cell(model, lane))
                labels = (model, lane.value)
                metrics.PARTITIONS_ASSIGNED.labels(*labels).set(len(assigned.intersection(cell)))
                metrics.PARTITIONS_WAITING.labels(*labels).set(len(waiting.intersection(cell)))
                metrics.BACKLOG.labels(*labels).set(sum(backlog.get(p, 0) for p in cell))
        metrics.GENERATION.set(self.book.generation)


def models_summary(layout: RequestLayout, report: PassReport) -> list[dict[str, object]]:
    """Per model, from the last pass: backlog per lane, partitions owned and waiting,
    the live workers serving it (a model with backlog and none waits for one)."""
    assigned = {p for ps in report.decision.by_worker.values() for p in ps}
    waiting = set(report.decision.waiting)
    rows: list[dict[str, object]] = []
    for model, workers in sorted(report.serving.items()):
        lanes = {}
        for lane in LANE_ORDER:
            cell = layout.cell_partitions(Cell(model, lane))
            lanes[lane.value] = {
                "backlog": sum(report.backlog.get(p, 0) for p in cell),
                "partitions_assigned": len(assigned.intersection(cell)),
                "partitions_waiting": len(waiting.intersection(cell)),
            }
        backlog = sum(lane["backlog"] for lane in lanes.values())
        rows.append(
            {
                "model": model,
                "topic": layout.topic(model),
                "workers": sorted(workers),
                "backlog": backlog,
                "waiting_for_worker": backlog > 0 and not workers,
                "lanes": lanes,
            }
        )
    return rows
