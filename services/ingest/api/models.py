"""`GET /v1/models`: the registered models, each with its live workers and backlog.

Which models exist is the model registry's (`services.models.registry`): ingest
registers the ones it is configured with (`KBATCH_INGEST__SERVED_MODELS`), workers
register what they serve when they start, and ingest admits exactly the registered
set (`model_not_found` otherwise), following the registry so a model registered at
runtime is admitted without a restart. A registered model with no live worker is
listed and admitted: its requests wait in Kafka until a worker serving it appears.
Which workers are live comes from the scheduler's `/workers`, read on an interval.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import httpx

from services.lanes import Lane
from services.logs import get_logger
from services.routing import Cell

log = get_logger("ingest.models")


def live_models(workers: Iterable[Mapping[str, Any]]) -> dict[str, set[str]]:
    """Model name -> ids of the live, healthy workers serving it (pure)."""
    served: dict[str, set[str]] = {}
    for worker in workers:
        if worker.get("alive") and worker.get("healthy") and not worker.get("draining"):
            for model in worker.get("served_models") or ():
                served.setdefault(model, set()).add(worker["worker_id"])
    return served


def models_document(
    registered: Iterable[str],
    live: Mapping[str, set[str]],
    backlog: Mapping[Cell, int] | None = None,
) -> dict[str, Any]:
    """OpenAI's `GET /v1/models` list; a `kbatch` object on each model says how many
    live workers serve it and how many of its requests wait, per lane."""
    data = []
    for name in sorted(set(registered)):
        lanes = {lane.value: (backlog or {}).get(Cell(name, lane), 0) for lane in Lane}
        workers = len(live.get(name, ()))
        data.append(
            {
                "id": name,
                "object": "model",
                "created": 0,
                "owned_by": "kbatch",
                "kbatch": {
                    "live_workers": workers,
                    "backlog": lanes,
                    "waiting_for_worker": workers == 0 and sum(lanes.values()) > 0,
                },
            }
        )
    return {"object": "list", "data": data}


class ModelCatalog:
    """The registered models and the live workers serving each."""

    def __init__(self, registered: Callable[[], frozenset[str]], scheduler_url: str | None) -> None:
        self._registered = registered
        self._scheduler_url = scheduler_url
        self.live: dict[str, set[str]] = {}

    def names(self) -> frozenset[str]:
        return self._registered()

    def unserved(self) -> frozenset[str]:
        """Registered models no live worker serves, as last read; none when the live
        workers are not followed (no scheduler_url): then nothing is known to wait."""
        if self._scheduler_url is None:
            return frozenset()
        return frozenset(m for m in self.names() if not self.live.get(m))

    def document(self, backlog: Mapping[Cell, int] | None) -> dict[str, Any]:
        return models_document(self.names(), self.live, backlog)

    async def refresh(self, client: httpx.AsyncClient) -> None:
        if self._scheduler_url is None:
            return
        try:
            response = await client.get(f"{self._scheduler_url}/workers")
            response.raise_for_status()
            self.live = live_models(response.json()["workers"])
        except (httpx.HTTPError, KeyError, ValueError, TypeError) as exc:
            # The last known set stays: a scheduler restart must not empty the listing.
            log.warning("live workers unavailable; keeping the last set", error=str(exc))

    async def follow(self, client: httpx.AsyncClient | None, interval_s: float) -> None:
        """Refresh the live workers forever over `client` (ingest's scheduler client)."""
        if self._scheduler_url is None or client is None:
            return
        while True:
            await self.refresh(client)
            await asyncio.sleep(interval_s)
