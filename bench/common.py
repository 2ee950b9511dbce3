"""Shared bench plumbing: a broker (started if none is named), topics, service processes."""

from __future__ import annotations

import os
import platform
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from services.harness.ports import free_port
from services.kafka import local_broker

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"


@contextmanager
def broker() -> Iterator[str]:
    named = os.environ.get("KBATCH_BOOTSTRAP_SERVERS")
    if named:
        yield named
        return
    port = free_port()
    layout = local_broker.BrokerLayout(
        ROOT / ".kbatch" / f"bench-kafka-{port}",
        port=port,
        controller_port=free_port(),
        jar_cache=ROOT / ".kbatch" / "jars",
    )
    yield local_broker.up(layout)
    local_broker.down(layout)


def machine() -> str:
    python = f"{platform.python_implementation()} {platform.python_version()}"
    return f"{platform.node()} ({os.cpu_count()} cores, {python}), {datetime.now(UTC):%Y-%m-%d}"
