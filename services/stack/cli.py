"""`kbatch up`, `kbatch down`, `kbatch ps`: the local deployment, kept running.

`ps` and `down` only read the state file; what `up` runs is imported when it runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import typer

from services.kafka import local_broker
from services.stack.settings import StackOptions, StackSettings
from services.stack.state import (
    alive,
    all_running,
    as_seen,
    hints,
    read_state,
    running_supervisor,
    supervisor_alive,
    table,
)

ENGINES = ("simulated", "llamacpp", "openai", "vllm")
DataDirOption = typer.Option(
    None, "--data-dir", help="state, logs and data (default $KBATCH_STACK__DATA_DIR, .kbatch/stack)"
)


def _root(data_dir: Path | None) -> Path:
    return (data_dir or Path(StackSettings().stack.data_dir)).resolve()


def up(
    workers: int | None = typer.Option(None, min=1, help="inference workers per model (default 2)"),
    engine: str | None = typer.Option(
        None, help="simulated|llamacpp|openai|vllm; default as `kbatch demo`"
    ),
    model: list[str] = typer.Option(
        [],
        "--model",
        help="a model for workers to serve (GGUF file, hub id, server model name); repeat "
        "for several models on one fleet, each with its own workers; default "
        "KBATCH_INFERENCE__MODEL, else the tiny model",
    ),
    data_dir: Path | None = DataDirOption,
    detach: bool = typer.Option(
        False, "--detach", "-d", help="run in the background; return once every service answers"
    ),
) -> None:
    """Broker, topics, scheduler, ingest and workers, supervised until Ctrl-C or `kbatch down`."""
    if engine not in (None, *ENGINES):
        raise typer.BadParameter(f"unknown engine {engine!r}", param_hint="--engine")
    settings = StackSettings()
    options = settings.stack.model_copy(
        update={k: v for k, v in (("workers", workers), ("engine", engine)) if v is not None}
    )
    root = _root(data_dir)
    running = running_supervisor(root)
    if running is not None:
        raise SystemExit(f"kbatch up already runs with {root} (pid {running['pid']})")
    (root / "logs").mkdir(parents=True, exist_ok=True)
    if len(model) > 1 and "KBATCH_INFERENCE__SERVED_MODEL_NAME" in os.environ:
        raise SystemExit(
            "with several --model, each serves under its own name: unset "
            "KBATCH_INFERENCE__SERVED_MODEL_NAME"
        )
    if detach:
        _detach(root, options, model)
        return
    from confluent_kafka import KafkaException

    from services.errors import KbatchError

    try:
        _run(root, settings, options, model)
    except (KafkaException, KbatchError) as exc:
        raise SystemExit(f"kbatch up: {exc}") from exc


def _run(root: Path, settings: StackSettings, options: StackOptions, models: list[str]) -> None:
    from services.inference.settings import InferenceSettings
    from services.ingest.settings import IngestSettings
    from services.scheduler.settings import SchedulerSettings
    from services.stack.children import service_child
    from services.stack.engine import choose_engine, prepare_engine
    from services.stack.plan import Deployment, WorkerSlot, service_specs
    from services.stack.supervisor import Stack, Supervisor

    broker: local_broker.BrokerLayout | None = None
    if "bootstrap_servers" not in settings.model_fields_set:
        port = options.broker_port
        broker = local_broker.BrokerLayout(root / "kafka", port=port, controller_port=port + 1)
        _claim_broker_port(broker)
        settings = settings.model_copy(update={"bootstrap_servers": broker.bootstrap})
    worker_base = InferenceSettings().inference.http_port
    deployment = Deployment(
        scheduler_port=SchedulerSettings().scheduler.http_port,
        ingest_port=IngestSettings().ingest.http_port,
        workers=tuple(
            WorkerSlot(f"worker-{n + 1}", "dedicated", worker_base + n, engine)
            for n, engine in enumerate(
                engine for engine in range(len(models) or 1) for _ in range(options.workers)
            )
        ),
        scheduler_dir=root / "scheduler",
        file_dir=root / "files",
    )
    ports = [deployment.scheduler_port, deployment.ingest_port]
    busy = _busy([*ports, *(w.port for w in deployment.workers)])
    if busy:
        raise SystemExit(f"kbatch up: ports in use: {busy} (see KBATCH_*__HTTP_PORT)")
    shared_env = {
        "KBATCH_BOOTSTRAP_SERVERS": settings.bootstrap_servers,
        "KBATCH_TOPICS__PREFIX": settings.topics.prefix,
    }
    with contextlib.ExitStack() as resources:
        http = resources.enter_context(_listening(options.http_host, options.http_port))
        engine = choose_engine(options.engine)
        wanted: list[str | None] = [*models] or [None]
        chosen = [prepare_engine(engine, root, root / "logs", resources, m) for m in wanted]
        services = [
            service_child(spec, shared_env, root / "logs")
            for spec in service_specs(deployment, chosen)
        ]
        stack = Stack(
            root,
            settings,
            options,
            broker,
            services,
            f"{deployment.url(deployment.ingest_port)}/v1",
            engine,
            [c.served_model for c in chosen],
        )
        asyncio.run(Supervisor(stack, http).run())


def _claim_broker_port(layout: local_broker.BrokerLayout) -> None:
    """Stop a broker an earlier, killed `kbatch up` left; refuse a port another broker holds."""
    if local_broker.running_pid(layout) is not None:
        typer.echo(f"stopping the broker an earlier `kbatch up` left running ({layout.home})")
        local_broker.down(layout)
    if _busy([layout.port, layout.controller_port]):
        raise SystemExit(
            f"kbatch up: {layout.bootstrap} is taken; to use a broker already there set "
            f"KBATCH_BOOTSTRAP_SERVERS={layout.bootstrap}, else KBATCH_STACK__BROKER_PORT"
        )


def _busy(ports: list[int]) -> list[int]:
    """The ports of `ports` something on this machine already listens on."""
    taken = []
    for port in ports:
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                taken.append(port)
    return taken


@contextlib.contextmanager
def _listening(host: str, port: int) -> Iterator[socket.socket]:
    """The supervisor's HTTP socket, bound before anything starts (0: any free port)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise SystemExit(f"kbatch up: {host}:{port} (KBATCH_STACK__HTTP_PORT): {exc}") from exc
        yield sock


def _detach(root: Path, options: StackOptions, models: list[str]) -> None:
    """`kbatch up` again, in its own session, logging to logs/up.log; back once it serves."""
    from services.stack.children import KBATCH

    args = ["up", "--data-dir", str(root), "--workers", str(options.workers)]
    args += ["--engine", options.engine] if options.engine else []
    args += [arg for model in models for arg in ("--model", model)]
    log = root / "logs" / "up.log"
    with log.open("ab") as out:
        process = subprocess.Popen(
            [KBATCH, *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    while process.poll() is None:
        state = running_supervisor(root)
        if state and state["pid"] == process.pid and all_running(state):
            typer.echo(hints(state))
            return
        time.sleep(0.5)
    tail = log.read_text(errors="replace")[-3000:]
    raise SystemExit(f"kbatch up exited with {process.returncode}:\n{tail}")


def down(
    data_dir: Path | None = DataDirOption,
    timeout_s: float = typer.Option(120.0, "--timeout", help="seconds to wait for it to stop"),
) -> None:
    """Stop the `kbatch up` of this data dir (a second `down` kills what still runs)."""
    root = _root(data_dir)
    state = running_supervisor(root)
    if state is None:
        typer.echo(f"kbatch up is not running ({root})")
        return
    pid = state["pid"]
    os.kill(pid, signal.SIGTERM)
    typer.echo(f"stopping kbatch up (pid {pid})")
    deadline = time.monotonic() + timeout_s
    while alive(pid):
        if time.monotonic() > deadline:
            typer.echo(f"still running after {timeout_s:.0f}s; `kbatch down` again kills it")
            raise typer.Exit(1)
        time.sleep(0.2)
    typer.echo("stopped")


def ps(
    data_dir: Path | None = DataDirOption,
    as_json: bool = typer.Option(False, "--json", help="the state file, as JSON"),
) -> None:
    """Each service of `kbatch up`: pid, state, restarts, URL."""
    root = _root(data_dir)
    state = read_state(root)
    if state is None:
        typer.echo(f"no `kbatch up` has run with {root}")
        raise typer.Exit(1)
    running = supervisor_alive(state["pid"])
    seen = as_seen(state, running)
    if as_json:
        typer.echo(json.dumps({"running": running, **seen}))
        return
    header = f"kbatch up (pid {state['pid']})" if running else "kbatch up is not running"
    typer.echo(f"{header}; {root}\n{table(seen)}")
