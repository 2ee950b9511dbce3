"""Which models the deployment serves: configured ones plus what live workers declare.

Workers put their served model name in every heartbeat; the scheduler's `/workers`
view shows them. Ingest reads that view on an interval, so a worker started with
another model is listed by `GET /v1/models` and admitted by validation without
restarting ingest. `KBATCH_INGEST__SERVED_MODELS` stays listed and admitted even
when no worker runs it (requests then wait in their lane, as for any busy model).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import httpx

from services.logs import get_logger

log = get_logger("ingest.models")


def live_models(workers: Iterable[Mapping[str, Any]]) -> dict[str, set[str]]:
    """Model name -> ids of the live, healthy workers serving it (pure)."""
    served: dict[str, set[str]] = {}
    for worker in workers:
        if worker.get("alive") and worker.get("healthy") and not worker.get("draining"):
            for model in worker.get("served_models") or ():
                served.setdefault(model, set()).add(worker["worker_id"])
    return served


def models_document(configured: Iterable[str], live: Mapping[str, set[str]]) -> dict[str, Any]:
    """OpenAI's `GET /v1/models` list, each model with how many live workers serve it."""
    names = sorted(set(configured) | set(live))
    return {
        "object": "list",
        "data": [
            {
                "id": name,
                "object": "model",
                "created": 0,
                "owned_by": "kbatch",
                "kbatch": {"live_workers": len(live.get(name, ()))},
            }
            for name in names
        ],
    }


class ServedModels:
    """The served set, refreshed from the scheduler's worker view."""

    def __init__(self, configured: Iterable[str], scheduler_url: str | None) -> None:
        self.configured = frozenset(configured)
        self._scheduler_url = scheduler_url
        self.live: dict[str, set[str]] = {}

    def names(self) -> frozenset[str]:
        return self.configured | frozenset(self.live)

    def document(self) -> dict[str, Any]:
        return models_document(self.configured, self.live)

    async def refresh(self, client: httpx.AsyncClient) -> None:
        if self._scheduler_url is None:
            return
        try:
            response = await client.get(f"{self._scheduler_url}/workers")
            response.raise_for_status()
            self.live = live_models(response.json()["workers"])
        except (httpx.HTTPError, KeyError, ValueError, TypeError) as exc:
            # The last known set stays: a scheduler restart must not refuse every line.
            log.warning("worker models unavailable; keeping the last set", error=str(exc))

    async def follow(
        self,
        client: httpx.AsyncClient | None,
        interval_s: float,
        changed: Callable[[frozenset[str]], None],
    ) -> None:
        """Refresh forever over `client` (ingest's one scheduler client); `changed` hears
        of every new served set."""
        if self._scheduler_url is None or client is None:
            return  # the configured set is all there is
        while True:
            before = self.names()
            await self.refresh(client)
            if self.names() != before:
                log.info("served models changed", models=sorted(self.names()))
                changed(self.names())
            await asyncio.sleep(interval_s)
