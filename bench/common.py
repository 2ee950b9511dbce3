"""Shared bench plumbing: a broker (started if none is named), topics, service processes."""

from __future__ import annotations

import os
import platform
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from services.harness.broker import running_broker

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"


@contextmanager
def broker() -> Iterator[str]:
    with running_broker(ROOT / ".kbatch" / "bench-kafka", ROOT / ".kbatch" / "jars") as address:
        yield address


def machine() -> str:
    python = f"{platform.python_implementation()} {platform.python_version()}"
    return f"{platform.node()} ({os.cpu_count()} cores, {python}), {datetime.now(UTC):%Y-%m-%d}"
