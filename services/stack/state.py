"""The supervisor's state file: what `kbatch ps` shows and whom `kbatch down` signals.

Rewritten whole (write, then rename) on every change, so a reader never sees half of it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal, TypedDict

ServiceState = Literal["starting", "running", "restarting", "stopping", "stopped"]
STATE_FILE = "stack.json"


class ServiceRow(TypedDict):
    name: str
    pid: int | None
    state: ServiceState
    restarts: int
    url: str
    log: str


class StackState(TypedDict):
    pid: int
    supervisor_url: str
    openai_base_url: str
    bootstrap: str
    topics_prefix: str
    engine: str
    served_models: list[str]
    services: list[ServiceRow]


def state_path(data_dir: Path) -> Path:
    return data_dir / STATE_FILE


def write_state(data_dir: Path, state: StackState) -> None:
    path = state_path(data_dir)
    staging = path.with_suffix(".json.tmp")
    staging.write_text(json.dumps(state, indent=2) + "\n")
    staging.replace(path)


def read_state(data_dir: Path) -> StackState | None:
    """The last state written, or None when no `kbatch up` ever ran here."""
    try:
        loaded: Any = json.loads(state_path(data_dir).read_text())
    except FileNotFoundError:
        return None
    state: StackState = loaded
    return state


def alive(pid: int) -> bool:
    """Whether `pid` runs; a zombie (exited, its parent not yet told) does not."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        status = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):  # no /proc here: signal 0 is all there is to go on
        return True
    return status != "Z"


def supervisor_alive(pid: int) -> bool:
    """Whether `pid` is still a running `kbatch up`, not a later process given its pid."""
    if not alive(pid):
        return False
    try:
        return b"kbatch" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:  # no /proc here
        return True


def running_supervisor(data_dir: Path) -> StackState | None:
    """The state of the `kbatch up` running with this data dir, if one is."""
    state = read_state(data_dir)
    if state is None or not supervisor_alive(state["pid"]):
        return None
    return state


def all_running(state: StackState) -> bool:
    return all(row["state"] == "running" for row in state["services"])


def as_seen(state: StackState, supervisor_running: bool) -> StackState:
    """`state`, with every service stopped if its supervisor is gone (killed, say)."""
    if supervisor_running:
        return state
    stopped: list[ServiceRow] = [
        {**row, "pid": None, "state": "stopped"} for row in state["services"]
    ]
    return {**state, "services": stopped}


def table(state: StackState) -> str:
    """`kbatch ps`: one line per service."""
    rows = [("SERVICE", "PID", "STATE", "RESTARTS", "URL")]
    for row in state["services"]:
        pid = str(row["pid"]) if row["pid"] else "-"
        rows.append((row["name"], pid, row["state"], str(row["restarts"]), row["url"]))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def hints(state: StackState) -> str:
    """What to point at the stack, and how to stop it."""
    return "\n".join(
        [
            f"OpenAI Batch/Files API: {state['openai_base_url']}; the workers run "
            f"{state['engine']}, serving {', '.join(map(repr, state['served_models']))} "
            "(request lines name one)",
            f'  openai.OpenAI(base_url="{state["openai_base_url"]}", api_key="unused")',
            f"Kafka: {state['bootstrap']} (topics {state['topics_prefix']}.*)",
            f"Supervisor: {state['supervisor_url']}/healthz, /metrics "
            "(kbatch_stack_restarts_total); every service has /metrics too (kbatch ps)",
            "Prometheus: deploy/prometheus/prometheus.yml (scrape the URLs above); "
            "Grafana dashboards: deploy/grafana/dashboards/",
            "Stop: Ctrl-C where `kbatch up` runs, or `kbatch down`; `kbatch ps` lists the services",
        ]
    )
