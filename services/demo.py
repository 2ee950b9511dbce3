"""`kbatch demo`: the whole system on one machine, a sample job at two priorities.

A local broker, the topics, the scheduler, ingest (with the collector) and two
inference workers (one dedicated, one spot, following the scheduler). The shipped
sample files go in through the Batch API; progress is shown from the batches'
request counts; the output files are downloaded; everything is shut down.
"""

from __future__ import annotations

import contextlib
import importlib.util
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

from services.harness.llama_server import llama_server
from services.harness.processes import wait_serving
from services.inference.gpu import sample_gpus
from services.inference.settings import served_name_of
from services.kafka import local_broker
from services.kafka.topics import ensure_topics, topic_catalog
from services.models.tiny import ensure_tiny_model
from services.resources import data_dir
from services.settings import TopicSettings

KBATCH = str(Path(sys.executable).with_name("kbatch"))
INGEST, SCHEDULER = "http://127.0.0.1:18080", "http://127.0.0.1:18070"
console = Console()


@dataclass(frozen=True)
class DemoEngine:
    """The engine the demo's workers run, and what their results will say."""

    name: str
    worker_env: dict[str, str]
    served_model: str


def choose_engine(requested: str | None) -> str:
    """vllm when a GPU and vLLM are both here; otherwise llamacpp on the tiny model."""
    if requested:
        return requested
    gpus = sample_gpus()
    if gpus.available and importlib.util.find_spec("vllm") is not None:
        return "vllm"
    why = gpus.nvml_error or "vLLM is not installed"
    console.print(f"no GPU engine ({why}): using llamacpp", markup=False)
    return "llamacpp"


def prepare_engine(name: str, root: Path, stack: contextlib.ExitStack) -> DemoEngine:
    """Model file, server and worker settings for `name`; says plainly what will answer."""
    model = os.environ.get("KBATCH_INFERENCE__MODEL")
    own_server = "KBATCH_INFERENCE__OPENAI__BASE_URL" in os.environ
    if name == "vllm" and model is None:
        raise SystemExit("the vllm engine needs KBATCH_INFERENCE__MODEL (a path or hub id)")
    if name == "openai" and own_server and model is None:
        raise SystemExit("set KBATCH_INFERENCE__MODEL to the model name your server serves")
    env: dict[str, str] = {}
    if name in ("llamacpp", "openai") and model is None:
        model = str(ensure_tiny_model(root / "models"))
        console.print(
            f"[bold yellow]MODEL: the tiny random-weight GGUF[/] ({model}): real llama.cpp "
            "inference, gibberish answers. Point KBATCH_INFERENCE__MODEL at your own GGUF "
            "for real ones."
        )
    if name == "openai" and not own_server:
        assert model is not None
        served = served_name_of(model)
        env["KBATCH_INFERENCE__OPENAI__BASE_URL"] = stack.enter_context(
            llama_server(Path(model), root / "demo-logs" / "llama-server.log", alias=served)
        )
        console.print(
            f"openai engine: llama_cpp.server at {env['KBATCH_INFERENCE__OPENAI__BASE_URL']}"
        )
        model = served
    if name == "simulated":
        console.print(
            "[bold yellow]ENGINE: simulated[/]: every output says \\[simulated] and "
            "engine=simulated; nothing here is a model's answer."
        )
    if model is not None:
        env["KBATCH_INFERENCE__MODEL"] = model
    served = os.environ.get("KBATCH_INFERENCE__SERVED_MODEL_NAME") or served_name_of(
        model or "kbatch-sim"
    )
    console.print(f"ENGINE: {name}, serving {served!r}", markup=False)
    return DemoEngine(name, {"KBATCH_INFERENCE__ENGINE": name, **env}, served)


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


def addressed_to(path: Path, model: str) -> bytes:
    """The sample lines, asking for the model the demo's workers serve."""
    lines = []
    for text in path.read_text(encoding="utf-8").splitlines():
        line = json.loads(text)
        line["body"]["model"] = model
        lines.append(json.dumps(line))
    return ("\n".join(lines) + "\n").encode()


def submit(client: httpx.Client, path: Path, model: str, priority: str) -> str:
    content = addressed_to(path, model)
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
        tasks = {b: progress.add_task(f"{p:>4} priority", total=None) for b, p in batches.items()}
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
        engine = prepare_engine(choose_engine(requested_engine), root, stack)
        _run_services(engine, root, logs)
    console.print(f"demo finished in {time.monotonic() - started:.0f}s; logs in {logs}")


def _run_services(engine: DemoEngine, root: Path, logs: Path) -> None:
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
    services = Services([], logs)
    try:
        scheduler = services.start(
            "scheduler",
            ["scheduler"],
            {
                **env,
                "KBATCH_SCHEDULER__HTTP_PORT": "18070",
                "KBATCH_SCHEDULER__DATA_DIR": str(root / "demo-scheduler"),
            },
        )
        ingest = services.start(
            "ingest",
            ["ingest"],
            {
                **env,
                "KBATCH_INGEST__HTTP_PORT": "18080",
                "KBATCH_INGEST__FILE_DIR": str(root / "demo-files"),
                "KBATCH_INGEST__SCHEDULER_URL": SCHEDULER,
                "KBATCH_INGEST__SERVED_MODELS": json.dumps([engine.served_model]),
            },
        )
        for name, pool, port in (("worker-a", "dedicated", "18091"), ("worker-b", "spot", "18092")):
            services.start(
                name,
                ["inference"],
                {
                    **env,
                    **engine.worker_env,
                    "KBATCH_INFERENCE__WORKER_ID": name,
                    "KBATCH_INFERENCE__POOL": pool,
                    "KBATCH_INFERENCE__FOLLOW_SCHEDULER": "true",
                    "KBATCH_INFERENCE__HTTP_PORT": port,
                },
            )
        for process, url in ((scheduler, SCHEDULER), (ingest, INGEST)):
            wait_serving(f"{url}/healthz", 90, process, describe=lambda: f"logs in {logs}")
        console.print(
            f"services up after {time.monotonic() - started:.0f}s; submitting the sample job"
        )
        samples = data_dir("samples")
        with httpx.Client(base_url=INGEST, timeout=300) as client:
            submitted = time.monotonic()
            batches = {
                submit(client, samples / f"candidates-{p}.jsonl", engine.served_model, p): p
                for p in ("high", "low")
            }
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
    priorities: dict[str, str],
    out: Path,
    elapsed: float,
) -> None:
    total = 0
    for batch_id, batch in final.items():
        counts = batch["request_counts"]
        total += counts["completed"] + counts["failed"]
        path = out / f"{priorities[batch_id]}_output.jsonl"
        if batch["output_file_id"]:
            path.write_bytes(client.get(f"/v1/files/{batch['output_file_id']}/content").content)
        took = batch["completed_at"] - batch["created_at"] if batch["completed_at"] else None
        console.print(
            f"{priorities[batch_id]:>4}: {batch['status']}, {counts['completed']} completed, "
            f"{counts['failed']} failed, done {took}s after submission -> {path}"
        )
    console.print(f"{total} requests in {elapsed:.1f}s ({total / elapsed:.0f} requests/s)")
    sample = json.loads((out / "high_output.jsonl").read_text().splitlines()[0])
    body = sample["response"]["body"]
    console.print(
        f"first line: custom_id={sample['custom_id']} engine={body['kbatch']['engine']} "
        f"model={body['model']} "
        f"content={body['choices'][0]['message']['content'][:60]!r}",
        markup=False,
    )
