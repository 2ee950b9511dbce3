"""The scheduler's web views: /workers, /assignments, /jobs, /healthz, /metrics.

All but /healthz show job ids and tenants: with an ops token (KBATCH_OPS_TOKEN) they
answer only a request that carries it."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import faust
from faust.web import View
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import SecretStr

from services.ops_http import OPS_CHALLENGE, OPS_REFUSAL, ops_authorized
from services.routing import encode_partitions
from services.scheduler import jobs
from services.scheduler.core import SchedulerCore, models_summary
from services.scheduler.fleet import WorkerState
from services.scheduler.progress import JobProgress


@dataclass(frozen=True)
class JobTables:
    """Where a job's view is read from: ingest's job records and the counted outcomes."""

    records: Any
    progress: JobProgress

    def view(self, job_id: str) -> dict[str, Any]:
        results, dead = self.progress.counts(job_id)
        return jobs.job_view(job_id, self.records.get(job_id), results, dead)

    def job_ids(self) -> list[str]:
        return sorted(set(self.records) | self.progress.job_ids())


def guarded_view(ops_token: SecretStr | None) -> type[View]:
    """A view base that answers 401 to a request without the ops token (when one is set)."""

    class Guarded(View):
        async def dispatch(self, request: Any) -> Any:
            if not ops_authorized(request.headers.get("Authorization"), ops_token):
                return self.json(OPS_REFUSAL, status=401, headers=dict(OPS_CHALLENGE))
            return await super().dispatch(request)

    return Guarded


def register_views(
    app: faust.App,
    core: SchedulerCore,
    worker_states: Callable[[], list[WorkerState]],
    heartbeat_timeout_s: float,
    tables: JobTables,
    *,
    ops_token: SecretStr | None,
) -> None:
    timeout_ms = int(heartbeat_timeout_s * 1000)
    guarded = guarded_view(ops_token)

    @app.page("/workers", base=guarded)
    async def workers_view(self: Any, request: Any) -> Any:
        now_ms = int(time.time() * 1000)
        rows = []
        for state in worker_states():
            beat = dict(state.heartbeat)
            rows.append(
                {
                    **beat,
                    "alive": state.alive(now_ms, timeout_ms),
                    "seen_ago_s": round((now_ms - state.received_at_ms) / 1000, 3),
                    "assigned": encode_partitions(
                        core.book.published.get(state.worker_id, frozenset())
                    ),
                }
            )
        return self.json({"workers": sorted(rows, key=lambda r: r["worker_id"])})

    @app.page("/assignments", base=guarded)
    async def assignments_view(self: Any, request: Any) -> Any:
        last = core.last
        decided = {w: encode_partitions(ps) for w, ps in last.decision.by_worker.items()}
        published = {w: encode_partitions(ps) for w, ps in last.published.items()}
        handing_over = encode_partitions(
            p
            for w, ps in last.decision.by_worker.items()
            for p in ps - last.published.get(w, frozenset())
        )
        return self.json(
            {
                "generation": core.book.generation,
                "pass_at_ms": last.at_ms,
                "published": published,
                "decided": decided,
                "waiting": encode_partitions(last.decision.waiting),
                "handing_over": handing_over,
                "backlog": [
                    {"model": m, "partition": p, "requests": n}
                    for (m, p), n in sorted(last.backlog.items())
                ],
                "models": models_summary(core.layout, last),
            }
        )

    @app.page("/models", base=guarded)
    async def models_view(self: Any, request: Any) -> Any:
        return self.json({"models": models_summary(core.layout, core.last)})

    @app.page("/jobs", base=guarded)
    async def jobs_view(self: Any, request: Any) -> Any:
        return self.json({"jobs": [tables.view(j) for j in tables.job_ids()]})

    @app.page("/jobs/{job_id}", base=guarded)
    async def job_detail_view(self: Any, request: Any, job_id: str) -> Any:
        return self.json(tables.view(job_id))

    @app.page("/healthz")
    async def health_view(self: Any, request: Any) -> Any:
        # Healthy while passes keep running; a stalled loop fails the probe.
        age_s = (time.time() * 1000 - core.last.at_ms) / 1000 if core.last.at_ms else None
        healthy = age_s is not None and age_s < max(10.0, 5 * heartbeat_timeout_s)
        body = {
            "status": "ok" if healthy else "starting" if age_s is None else "stalled",
            "last_pass_age_s": age_s,
            "faust_partitions": len(app.consumer.assignment()),
        }
        return self.json(body, status=200 if healthy or age_s is None else 503)

    @app.page("/metrics", base=guarded)
    async def metrics_view(self: Any, request: Any) -> Any:
        # aiohttp refuses a charset inside content_type=, so the header is set whole.
        return self.bytes(generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})
