"""`kbatch ingest`: run the ingest HTTP service until SIGTERM."""

from __future__ import annotations

import asyncio
import logging

from services import build_info
from services.ingest.app import create_app
from services.ingest.settings import IngestSettings
from services.lifecycle import install_stop_signals
from services.logs import configure_logging
from services.ops_http import make_server, serve_until


async def _serve(settings: IngestSettings) -> None:
    stop = asyncio.Event()
    install_stop_signals(stop)
    server = make_server(create_app(settings), settings.ingest.http_host, settings.ingest.http_port)
    # uvicorn finishes open uploads, then the lifespan flushes the producer.
    await serve_until(server, stop)


def run(settings: IngestSettings | None = None) -> None:
    settings = settings or IngestSettings()
    configure_logging(settings.log_level, settings.log_format)
    if settings.log_level.upper() != "DEBUG":
        # httpx logs every request at INFO: a line per moving batch per refresh, and per
        # models poll. Failures are logged by ingest itself.
        logging.getLogger("httpx").setLevel(logging.WARNING)
    build_info.record("ingest")
    asyncio.run(_serve(settings))
