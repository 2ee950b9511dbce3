"""One supervised child process: how it starts, when it is ready, how it stops."""

from __future__ import annotations

import asyncio
import ctypes
import os
import signal
import subprocess
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import httpx

from services.kafka import local_broker
from services.stack.plan import ServiceSpec
from services.stack.state import ServiceRow, ServiceState

KBATCH = str(Path(sys.executable).with_name("kbatch"))
PR_SET_PDEATHSIG = 1
# Loaded here, not in the forked child, where dlopen could wait on a lock another thread held.
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform == "linux" else None


def _die_with_supervisor() -> None:  # pragma: no cover - runs in the forked child
    """SIGTERM the child when the supervisor dies, even by kill -9 (Linux only)."""
    if _LIBC is not None:
        _LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class Child:
    """A service process and its supervision record."""

    name: str
    url: str
    log_path: Path
    spawn: Callable[[], subprocess.Popen[bytes]]
    ready: Callable[[], Awaitable[bool]]
    process: subprocess.Popen[bytes] | None = None
    state: ServiceState = "stopped"
    restarts: int = 0
    exits_in_a_row: int = 0
    started_at: float = 0.0
    restart_at: float = 0.0

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def terminate(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()

    def kill(self) -> None:
        """SIGKILL if still running; reaped either way."""
        if self.process is not None:
            if self.process.poll() is None:
                self.process.kill()
            self.process.wait()

    def row(self) -> ServiceRow:
        pid = self.process.pid if self.running() and self.process else None
        return {
            "name": self.name,
            "pid": pid,
            "state": self.state,
            "restarts": self.restarts,
            "url": self.url,
            "log": str(self.log_path),
        }


def service_child(spec: ServiceSpec, shared_env: dict[str, str], logs: Path) -> Child:
    """`kbatch <spec.args>` with its output appended to logs/<name>.log, ready on /healthz."""
    log_path = logs / f"{spec.name}.log"
    env = {**os.environ, **shared_env, **spec.env}

    def spawn() -> subprocess.Popen[bytes]:
        with log_path.open("ab") as log:
            return subprocess.Popen(
                [KBATCH, *spec.args],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                # Its own session: a Ctrl-C in the terminal reaches only the supervisor,
                # which then stops each service once, in order.
                start_new_session=True,
                preexec_fn=_die_with_supervisor,
            )

    async def ready() -> bool:
        async with httpx.AsyncClient(timeout=1) as client:
            try:
                return (await client.get(f"{spec.url}/healthz")).status_code == 200
            except httpx.HTTPError:
                return False

    return Child(spec.name, spec.url, log_path, spawn, ready)


def broker_child(layout: local_broker.BrokerLayout) -> Child:
    """The local broker: started like `kbatch kafka up`, ready once it answers metadata."""

    async def ready() -> bool:
        return await asyncio.to_thread(local_broker.answers_metadata, layout.bootstrap)

    def spawn() -> subprocess.Popen[bytes]:
        return local_broker.start(layout)

    return Child("kafka", layout.bootstrap, layout.logs / "stdout.log", spawn, ready)
