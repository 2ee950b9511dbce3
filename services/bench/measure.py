"""Rates and the facts printed beside them (machine, commit, date)."""

from __future__ import annotations

import os
import platform
import subprocess
from datetime import UTC, datetime
from importlib.metadata import version
from typing import Any


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
