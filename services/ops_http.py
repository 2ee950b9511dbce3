"""`/healthz` and `/metrics` routes every service mounts, and a server runner."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Generator
from contextlib import contextmanager
from typing import Any

import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

HealthCheck = Callable[[], tuple[bool, dict[str, Any]]]


def ops_routes(health: HealthCheck) -> list[Route]:
    """Routes for liveness/readiness (`/healthz`) and Prometheus (`/metrics`)."""

    async def healthz(_: Request) -> Response:
        healthy, detail = health()
        return JSONResponse({"healthy": healthy, **detail}, status_code=200 if healthy else 503)

    async def metrics(_: Request) -> Response:
        return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)

    return [Route("/healthz", healthz), Route("/metrics", metrics)]


class _Server(uvicorn.Server):
    """uvicorn without its own signal capture: the service owns SIGTERM (services.lifecycle)."""

    @contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


def make_server(app: Any, host: str, port: int) -> uvicorn.Server:
    """A uvicorn server that stops when the service says so (see `serve_until`)."""
    config = uvicorn.Config(
        app, host=host, port=port, log_config=None, access_log=False, lifespan="on"
    )
    return _Server(config)


async def serve_until(server: uvicorn.Server, stop: asyncio.Event) -> None:
    """Serve until `stop` is set, then finish open requests and run the lifespan shutdown."""
    serving = asyncio.create_task(server.serve())
    stopping = asyncio.create_task(stop.wait())
    # A server that fails to start ends on its own; do not wait for a signal then.
    await asyncio.wait({serving, stopping}, return_when=asyncio.FIRST_COMPLETED)
    stopping.cancel()
    server.should_exit = True
    await serving
