"""The `kbatch up` supervisor: start every service, restart what exits, stop on a signal.

The loop is written here, not taken from a library. honcho (a Procfile runner) stops the
whole set when one process exits, the opposite of restarting it. supervisord and circus
are daemons driven by a config file and their own control protocol (XML-RPC, ZeroMQ);
supervisord restarts a process that failed to start with a linearly growing delay and
gives up after `startretries` (FATAL), and one that ran past `startsecs` at once, without
back-off; circus waits a fixed `retry_in` and stops the watcher after `max_retry`; neither
serves Prometheus restart counts. Using one would mean a generated config file, a second
daemon and its client for `ps`, more code than this loop over a few `Popen` objects, which
restarts forever with a capped exponential back-off (`services.kafka.retries.backoff_s`).
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from confluent_kafka.admin import AdminClient
from prometheus_client import Counter, Gauge
from rich.console import Console
from starlette.applications import Starlette

from services.errors import KbatchError
from services.kafka import local_broker
from services.kafka.retries import backoff_s
from services.kafka.topics import ensure_topics, topic_catalog
from services.lifecycle import wait_event
from services.ops_http import make_server, ops_routes
from services.settings import CommonSettings
from services.stack.children import Child, broker_child
from services.stack.settings import StackOptions
from services.stack.state import StackState, all_running, hints, write_state

RESTARTS = Counter(
    "kbatch_stack_restarts_total",
    "Services `kbatch up` started again after they exited",
    ["service"],
)
SERVICE_UP = Gauge(
    "kbatch_stack_service_up",
    "1 while a service runs and has answered since it started",
    ["service"],
)
TICK_S = 0.25
console = Console(soft_wrap=True)


def say(message: str) -> None:
    console.print(f"{time.strftime('%H:%M:%S')} {message}", markup=False, highlight=False)


@dataclass(frozen=True)
class Stack:
    """What one `kbatch up` runs: its broker (None: an existing one), services, settings."""

    data_dir: Path
    settings: CommonSettings
    options: StackOptions
    broker: local_broker.BrokerLayout | None
    services: list[Child]
    openai_base_url: str
    engine: str
    served_models: list[str]


class Supervisor:
    """Runs a `Stack` until SIGTERM/SIGINT; a second signal kills what is still running."""

    def __init__(self, stack: Stack, http: socket.socket) -> None:
        self.stack = stack
        self.http = http
        self.broker = broker_child(stack.broker) if stack.broker else None
        self.stop = asyncio.Event()
        self.hurry = asyncio.Event()
        self.announced = False

    @property
    def children(self) -> list[Child]:
        return [*([self.broker] if self.broker else []), *self.stack.services]

    def state(self) -> StackState:
        host, port = self.http.getsockname()[:2]
        return {
            "pid": os.getpid(),
            "supervisor_url": f"http://{host}:{port}",
            "openai_base_url": self.stack.openai_base_url,
            "bootstrap": self.stack.settings.bootstrap_servers,
            "topics_prefix": self.stack.settings.topics.prefix,
            "engine": self.stack.engine,
            "served_models": self.stack.served_models,
            "services": [child.row() for child in self.children],
        }

    def save(self) -> None:
        write_state(self.stack.data_dir, self.state())

    async def run(self) -> None:
        """Broker, topics, services; supervise until stopped; then stop them all."""
        self._install_signals()
        app = Starlette(routes=ops_routes(self._health, ops_token=self.stack.settings.ops_token))
        server = make_server(app, "127.0.0.1", 0)
        serving = asyncio.create_task(server.serve(sockets=[self.http]))
        self.save()  # from here on `kbatch down` finds this process
        try:
            if await self._start_broker() and not self.stop.is_set():
                await asyncio.to_thread(self._ensure_topics)
                for child in self.stack.services:
                    if not self.stop.is_set():
                        self._spawn(child)
                self.save()
                say("services started; waiting for each to answer /healthz")
                while not self.stop.is_set():
                    await self._tick()
                    await wait_event(self.stop, TICK_S)
        finally:
            await self._stop_all()
            server.should_exit = True
            await serving

    def _install_signals(self) -> None:
        loop = asyncio.get_running_loop()

        def on_signal(signum: int) -> None:
            name = signal.Signals(signum).name
            if self.stop.is_set():
                say(f"{name} again: killing what is still running")
                self.hurry.set()
            else:
                say(f"{name}: stopping every service (again to kill them at once)")
            self.stop.set()

        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, on_signal, signum)

    def _health(self) -> tuple[bool, dict[str, object]]:
        state = self.state()
        return all_running(state), {"services": state["services"]}

    async def _start_broker(self) -> bool:
        """The broker answering (or none to start); False if stopped while waiting."""
        if self.broker is None:
            return True
        self._spawn(self.broker)
        self.save()
        say(f"kafka starting at {self.broker.url} (logs {self.broker.log_path})")
        while not self.stop.is_set():
            await self._tick()
            if self.broker.state == "running":
                return True
            await wait_event(self.stop, TICK_S)
        return False

    def _ensure_topics(self) -> None:
        topics = self.stack.settings.topics
        admin = AdminClient(self.stack.settings.kafka_config())
        ensure_topics(admin, topic_catalog(topics), topics.replication_factor)

    def _spawn(self, child: Child) -> None:
        RESTARTS.labels(child.name)  # a zero series from the first start, so rate() works
        SERVICE_UP.labels(child.name).set(0)
        child.started_at = time.monotonic()
        try:
            child.process = child.spawn()
        except (OSError, KbatchError) as exc:
            say(f"{child.name} did not start: {exc}")
            child.process = None
            self._schedule_restart(child, child.started_at)
            return
        child.state = "starting"

    def _schedule_restart(self, child: Child, now: float) -> None:
        ran_s = now - child.started_at
        child.exits_in_a_row = (
            1 if ran_s >= self.stack.options.stable_s else child.exits_in_a_row + 1
        )
        wait_s = backoff_s(
            child.exits_in_a_row,
            self.stack.options.restart_initial_s,
            self.stack.options.restart_max_s,
        )
        child.restart_at = now + wait_s
        child.state = "restarting"
        SERVICE_UP.labels(child.name).set(0)
        say(f"{child.name}: restarting in {wait_s:.1f}s (log {child.log_path})")

    async def _tick(self) -> None:
        """Notice exits, restart what is due, mark as running what answers."""
        now = time.monotonic()
        changed = False
        for child in self.children:
            if child.state in ("starting", "running") and not child.running():
                assert child.process is not None
                say(
                    f"{child.name} (pid {child.process.pid}) exited with {child.process.returncode}"
                )
                self._schedule_restart(child, now)
                changed = True
            elif child.state == "restarting" and now >= child.restart_at:
                child.restarts += 1
                RESTARTS.labels(child.name).inc()
                self._spawn(child)
                changed = True
        starting = [child for child in self.children if child.state == "starting"]
        answers = await asyncio.gather(*(child.ready() for child in starting))
        for child, answered in zip(starting, answers, strict=True):
            if answered and child.running():
                child.state = "running"
                SERVICE_UP.labels(child.name).set(1)
                assert child.process is not None
                say(f"{child.name} running (pid {child.process.pid}) at {child.url}")
                changed = True
        if changed:
            self.save()
            self._announce_once()

    def _announce_once(self) -> None:
        state = self.state()
        if not self.announced and all_running(state):
            self.announced = True
            say("every service is running")
            console.print(hints(state), markup=False, highlight=False)

    async def _stop_all(self) -> None:
        """SIGTERM every service, wait, SIGKILL what remains; then the broker."""
        for child in self.stack.services:
            child.state = "stopping"
            child.terminate()
        self.save()
        deadline = time.monotonic() + self.stack.options.stop_timeout_s
        while any(child.running() for child in self.stack.services):
            if self.hurry.is_set() or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
        for child in self.stack.services:
            if child.running():
                say(f"{child.name} still running: SIGKILL")
            child.kill()
            child.state = "stopped"
            SERVICE_UP.labels(child.name).set(0)
        if self.broker is not None and self.stack.broker is not None:
            self.broker.state = "stopping"
            self.save()
            how = signal.SIGKILL if self.hurry.is_set() else signal.SIGTERM
            await asyncio.to_thread(
                local_broker.down, self.stack.broker, self.stack.options.stop_timeout_s, how
            )
            self.broker.kill()
            self.broker.state = "stopped"
        self.save()
        say("stopped")
