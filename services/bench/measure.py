"""Rates, the facts printed beside them (machine, commit, date), and where a bench
keeps its broker and writes its JSON."""

from __future__ import annotations

import json
import os
import platform
import subprocess
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

import typer

from services.harness.broker import running_broker

# Relative to the current directory, so an installed kbatch needs no checkout.
STATE = Path(".kbatch")
JAR_CACHE = STATE / "jars"
OUT = STATE / "bench"
OutOption = typer.Option(OUT, help="directory for the bench's logs, state and JSON")


def steady_rate(completed_s: list[float]) -> float:
    """Completions per second in the middle 80% of their span (start-up and tail cut)."""
    times = sorted(completed_s)
    first, last = times[0], times[-1]
    low, high = first + 0.1 * (last - first), first + 0.9 * (last - first)
    inside = sum(1 for t in times if low <= t <= high)
    return inside / (high - low)


def run_facts() -> dict[str, Any]:
    """Where and when a figure was measured."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = f"kbatch {version('kbatch')}"
    return {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "commit": commit,
        "date": f"{datetime.now(UTC):%Y-%m-%d}",
    }


def bench_broker() -> AbstractContextManager[str]:
    """The broker KBATCH_BOOTSTRAP_SERVERS names, else one of the benches' own."""
    return running_broker(STATE / "bench-kafka", JAR_CACHE)


def emit(result: dict[str, Any], path: Path | None) -> None:
    """Print `result` as JSON, and write it to `path` too when one is given."""
    text = json.dumps(result, indent=2)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n", encoding="utf-8")
    typer.echo(text)
