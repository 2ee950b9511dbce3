"""`/healthz` and `/metrics` routes every service mounts, the ops token, a server runner."""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Callable, Generator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from pydantic import SecretStr
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

HealthCheck = Callable[[], tuple[bool, dict[str, Any]]]

# The answer to a request without the ops token (KBATCH_OPS_TOKEN), in the shape of
# ingest's other errors; the same for a missing and a wrong token.
OPS_REFUSAL: dict[str, Any] = {
    "error": {
        "message": "this operator endpoint needs the ops token (KBATCH_OPS_TOKEN) "
        "as 'Authorization: Bearer <token>'",
        "type": "invalid_request_error",
        "param": None,
        "code": "invalid_ops_token",
    }
}
OPS_CHALLENGE = {"WWW-Authenticate": "Bearer"}


def ops_authorized(authorization: str | None, token: SecretStr | None) -> bool:
    """Whether a request may read an operator endpoint: always without an ops token,
    else only with `Authorization: Bearer <token>`, compared in constant time."""
    if token is None:
        return True
    scheme, _, offered = (authorization or "").partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(offered.strip().encode(), token.get_secret_value().encode())


def prometheus_authorization(token: SecretStr | None, directory: Path) -> dict[str, Any]:
    """The keys a Prometheus scrape job adds to send the ops token: the token goes to
    `directory/ops-token` (mode 0600), named by `credentials_file`, never into the
    config itself; none without a token."""
    if token is None:
        return {}
    path = directory / "ops-token"
    path.touch(mode=0o600)
    path.chmod(0o600)  # also when the file was there before
    path.write_text(token.get_secret_value())
    return {"authorization": {"type": "Bearer", "credentials_file": str(path.resolve())}}


def ops_routes(health: HealthCheck, *, ops_token: SecretStr | None) -> list[Route]:
    """Routes for liveness/readiness (`/healthz`, always open: probes carry no token) and
    Prometheus (`/metrics`, behind `ops_token` when there is one)."""

    async def healthz(_: Request) -> Response:
        healthy, detail = health()
        return JSONResponse({"healthy": healthy, **detail}, status_code=200 if healthy else 503)

    async def metrics(request: Request) -> Response:
        if not ops_authorized(request.headers.get("authorization"), ops_token):
            return JSONResponse(OPS_REFUSAL, status_code=401, headers=OPS_CHALLENGE)
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
