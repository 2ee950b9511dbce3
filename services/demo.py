"""`kbatch demo`: the whole system on one machine: two models side by side, a sample
job at two priorities on the first.

A local broker, the topics, the scheduler, ingest (with the collector) and three
inference workers following the scheduler: two for the first model (one dedicated,
one spot) and one for the second. The shipped sample files go in through the Batch
API (high and low for the first model, a part of the low one for the second);
progress is shown from the batches' request counts; the output files are downloaded,
each job's model is shown; everything is shut down. The second model is the tiny
model from another seed (llamacpp) or another name (simulated); with vllm, or an
openai server of your own, the demo serves your one model.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from confluent_kafka.admin import AdminClient
from rich.console import Console
from rich.progress import Progress

from services.harness.processes import wait_serving
from services.kafka import local_broker
from services.kafka.topics import ensure_topics, topic_catalog
from services.resources import data_dir
from services.settings import TopicSettings
from services.stack.engine import EngineChoice, choose_engine, prepare_engine
from services.stack.plan import Deployment, WorkerSlot, service_specs

KBATCH = str(Path(sys.executable).with_name("kbatch"))
# The demo's second model, per engine: the tiny model from another seed answers
# differently; the simulated engine only needs another name. None for vllm and openai
# (they serve the model you configured).
SECOND_MODEL: dict[str, dict[str, Any]] = {
    "llamacpp": {"served_name": "kbatch-tiny-b", "seed": 1},
    "simulated": {"served_name": "kbatch-sim-b"},
}
console = Console()


@dataclass
class Services:
    processes: list[subprocess.Popen[bytes]]
    logs: Path

    def start(self, name: str, args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        log = (self.logs / f"{name}.log").open("wb")
        process = subprocess.Popen([KBATCH, *args], env=env, stdout=log, stderr=subprocess.STDOUT)
        self.processes.append(process)
        return process

    def stop(self) -> None:
        for process in self.processes:
            process.terminate()
        for process in self.processes:
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()


def addressed_to(path: Path, model: str, count: int | None = None) -> bytes:
    """The sample lines (the first `count`), asking for `model`."""
    lines = []
    for text in path.read_text(encoding="utf-8").splitlines()[:count]:
        line = json.loads(text)
        line["body"]["model"] = model
        lines.append(json.dumps(line))
    return ("\n".join(lines) + "\n").encode()


def submit(
    client: httpx.Client, path: Path, model: str, priority: str, lines: int | None = None
) -> str:
    content = addressed_to(path, model, lines)
    upload = {"file": (path.name, content, "application/jsonl")}
    file = client.post("/v1/files", files=upload, data={"purpose": "batch"}).json()
    body = {
        "input_file_id": file["id"],
        "endpoint": "/v1/chat/completions",
        "completion_window": "24h",
        "priority": priority,
    }
    batch_id: str = client.post("/v1/batches", json=body).json()["id"]
    return batch_id


def follow(client: httpx.Client, batches: dict[str, str]) -> dict[str, dict[str, Any]]:
    """Progress bars from request counts until every batch has ended."""
    final: dict[str, dict[str, Any]] = {}
    with Progress(console=console) as progress:
        tasks = {b: progress.add_task(label, total=None) for b, label in batches.items()}
        while len(final) < len(batches):
            for batch_id, task in tasks.items():
                batch = client.get(f"/v1/batches/{batch_id}").json()
                counts = batch["request_counts"]
                progress.update(
                    task,
                    total=counts["total"] or None,
                    completed=counts["completed"] + counts["failed"],
                )
                if batch["status"] in ("completed", "failed", "cancelled", "expired"):
                    final[batch_id] = batch
            time.sleep(0.5)
    return final


def run_demo(requested_engine: str | None = None) -> None:
    started = time.monotonic()
    root = Path(".kbatch").resolve()
    logs = root / "demo-logs"
    logs.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        name = choose_engine(requested_engine)
        engines = [prepare_engine(name, root, logs, stack)]
        if name in SECOND_MODEL and "KBATCH_INFERENCE__MODEL" not in os.environ:
            engines.append(prepare_engine(name, root, logs, stack, **SECOND_MODEL[name]))
        _run_services(engines, root, logs)
    console.print(f"demo finished in {time.monotonic() - started:.0f}s; logs in {logs}")


def _run_services(engines: list[EngineChoice], root: Path, logs: Path) -> None:
    started = time.monotonic()
    layout = local_broker.BrokerLayout(root / "demo-kafka", port=19092, controller_port=19093)
    bootstrap = local_broker.up(layout)
    topics = TopicSettings(prefix=f"demo{int(time.time())}")
    ensure_topics(AdminClient({"bootstrap.servers": bootstrap}), topic_catalog(topics))
    env = {
        **os.environ,
        "KBATCH_BOOTSTRAP_SERVERS": bootstrap,
        "KBATCH_TOPICS__PREFIX": topics.prefix,
        "KBATCH_LOG_LEVEL": "WARNING",
    }
    deployment = Deployment(
        scheduler_port=18070,
        ingest_port=18080,
        workers=(
            WorkerSlot("worker-a", "dedicated", 18091),
            WorkerSlot("worker-b", "spot", 18092),
            *([WorkerSlot("worker-c", "dedicated", 18093, 1)] if len(engines) > 1 else []),
        ),
        scheduler_dir=root / "demo-scheduler",
        file_dir=root / "demo-files",
    )
    services = Services([], logs)
    try:
        specs = service_specs(deployment, engines)
        started_specs = [
            (services.start(spec.name, list(spec.args), {**env, **spec.env}), spec)
            for spec in specs
        ]
        for process, spec in started_specs:
            if spec.name in ("scheduler", "ingest"):
                wait_serving(f"{spec.url}/healthz", 90, process, describe=lambda: f"logs in {logs}")
        console.print(
            f"services up after {time.monotonic() - started:.0f}s; submitting the sample job"
        )
        samples = data_dir("samples")
        with httpx.Client(base_url=deployment.url(deployment.ingest_port), timeout=300) as client:
            submitted = time.monotonic()
            first = engines[0].served_model
            batches = {
                submit(client, samples / f"candidates-{p}.jsonl", first, p): f"{first} {p}"
                for p in ("high", "low")
            }
            for engine in engines[1:]:
                model = engine.served_model
                path = samples / "candidates-low.jsonl"
                batches[submit(client, path, model, "normal", 500)] = f"{model} normal"
            final = follow(client, batches)
            elapsed = time.monotonic() - submitted
            out = root / "demo-out"
            out.mkdir(exist_ok=True)
            _summary(client, final, batches, out, elapsed)
    finally:
        services.stop()
        local_broker.down(layout)


def _summary(
    client: httpx.Client,
    final: dict[str, dict[str, Any]],
    labels: dict[str, str],
    out: Path,
    elapsed: float,
) -> None:
    total = 0
    for batch_id, batch in final.items():
        counts = batch["request_counts"]
        total += counts["completed"] + counts["failed"]
        path = out / f"{labels[batch_id].replace(' ', '_')}_output.jsonl"
        if batch["output_file_id"]:
            path.write_bytes(client.get(f"/v1/files/{batch['output_file_id']}/content").content)
        took = batch["completed_at"] - batch["created_at"] if batch["completed_at"] else None
        console.print(
            f"{labels[batch_id]:>22}: model {batch['model']}, {batch['status']}, "
            f"{counts['completed']} completed, {counts['failed']} failed, done {took}s after "
            f"submission -> {path}",
            markup=False,
        )
        if path.exists():
            sample = json.loads(path.read_text().splitlines()[0])
            body = sample["response"]["body"]
            console.print(
                f"{'':>24}first line: custom_id={sample['custom_id']} "
                f"engine={body['kbatch']['engine']} model={body['model']} "
                f"content={body['choices'][0]['message']['content'][:50]!r}",
                markup=False,
            )
    console.print(f"{total} requests in {elapsed:.1f}s ({total / elapsed:.0f} requests/s)")
