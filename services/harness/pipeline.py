"""Publish request records, start services and read back outcomes (tests and benches)."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from confluent_kafka import Producer

from services.codec import DEAD_LETTER, REQUEST, codec, results_codec
from services.harness.kafka import read_topic
from services.harness.ports import free_port
from services.harness.processes import ServiceProcess
from services.ingest.admission.validation import request_id_for
from services.kafka.consumers import byte_headers
from services.models.registry import register_models
from services.routing import ModelPartition, decode_partitions
from services.settings import TopicSettings


def request_record(job: str, index: int, lane: str = "normal", **body: Any) -> dict[str, Any]:
    custom_id = f"{job}-{index}"
    return {
        "request_id": request_id_for(job, custom_id),
        "job_id": job,
        "custom_id": custom_id,
        "tenant": "test",
        "priority": lane,
        "endpoint": "/v1/chat/completions",
        "model": "kbatch-sim",
        "body": {"messages": [{"role": "user", "content": f"prompt {index}"}], **body},
        "submitted_at_ms": int(time.time() * 1000),
        "attempt": 0,
    }


def batch_line(
    custom_id: str,
    model: str = "kbatch-sim",
    max_tokens: int = 8,
    content: str | None = None,
    **body: Any,
) -> str:
    """One chat-completions line; `content` defaults to one naming the line."""
    return json.dumps(
        {
            "custom_id": custom_id,
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {
                "model": model,
                "messages": [{"role": "user", "content": content or f"score {custom_id}"}],
                "max_tokens": max_tokens,
                **body,
            },
        }
    )


def submit_batch(client: httpx.Client, content: bytes, filename: str, priority: str) -> str:
    """Upload a JSONL file through the Files API and create a batch of it; its id."""
    uploaded = client.post(
        "/v1/files",
        data={"purpose": "batch"},
        files={"file": (filename, content, "application/jsonl")},
    )
    uploaded.raise_for_status()
    created = client.post(
        "/v1/batches",
        json={
            "input_file_id": uploaded.json()["id"],
            "endpoint": "/v1/chat/completions",
            "completion_window": "24h",
            "priority": priority,
        },
    )
    created.raise_for_status()
    return str(created.json()["id"])


_REGISTERED: set[tuple[str, str, str]] = set()  # (bootstrap, prefix, model)


def registered(bootstrap: str, topics: TopicSettings, models: Iterable[str]) -> None:
    """The models registered (their requests topics made), as a worker or ingest would;
    once per process for each."""
    wanted = {m for m in models if (bootstrap, topics.prefix, m) not in _REGISTERED}
    if wanted:
        register_models({"bootstrap.servers": bootstrap}, topics, wanted, "harness")
        _REGISTERED.update((bootstrap, topics.prefix, m) for m in wanted)


def publish(
    bootstrap: str, topics: TopicSettings, records: list[dict[str, Any]], raw: Sequence[bytes] = ()
) -> None:
    """Records spread over all partitions round-robin; `raw` values published as they are."""
    every = range(topics.lane_layout().total)
    publish_to(bootstrap, topics, records, every, raw)


def publish_to(
    bootstrap: str,
    topics: TopicSettings,
    records: list[dict[str, Any]],
    partitions: Sequence[int],
    raw: Sequence[bytes] = (),
    raw_model: str = "kbatch-sim",
) -> None:
    """Records spread round-robin over `partitions` of their model's requests topic;
    `raw` values into `raw_model`'s."""
    registered(bootstrap, topics, {r["model"] for r in records} | ({raw_model} if raw else set()))
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    for i, record in enumerate(records):
        producer.produce(
            topics.requests_of(record["model"]),
            codec(REQUEST).encode(record),
            key=record["request_id"].encode(),
            partition=partitions[i % len(partitions)],
        )
    for i, value in enumerate(raw):
        producer.produce(
            topics.requests_of(raw_model), value, partition=partitions[i % len(partitions)]
        )
    unsent = producer.flush(30)
    if unsent:
        raise AssertionError(f"{unsent} request record(s) not acknowledged in 30 s")


@dataclass
class Outcomes:
    results: list[dict[str, Any]]
    dead: list[tuple[dict[str, Any], dict[str, bytes]]]

    def result_ids(self) -> Counter[str]:
        return Counter(r["request_id"] for r in self.results)

    def dead_ids(self) -> Counter[str | None]:
        return Counter(d["request_id"] for d, _ in self.dead)

    @property
    def total(self) -> int:
        return len(self.results) + len(self.dead)


def outcomes(bootstrap: str, topics: TopicSettings, expect: int, timeout_s: float = 60) -> Outcomes:
    """Everything committed to results and DLQ, read with read_committed."""
    deadline = time.monotonic() + timeout_s
    while True:
        results = read_topic(bootstrap, topics.results, timeout_s=10)
        dead = read_topic(bootstrap, topics.dlq, timeout_s=10)
        found = Outcomes(
            [results_codec().decode(m.value()) for m in results],  # Avro or JSON
            [(codec(DEAD_LETTER).decode(m.value()), byte_headers(m)) for m in dead],
        )
        if found.total >= expect or time.monotonic() > deadline:
            return found
        time.sleep(0.5)


def owned_partitions(
    scheduler_url: str, headers: dict[str, str] | None = None
) -> dict[str, set[ModelPartition]]:
    """What each live worker reports holding, per the scheduler's /workers view."""
    reply = httpx.get(f"{scheduler_url}/workers", headers=headers or {}, timeout=5)
    workers = reply.raise_for_status().json()["workers"]
    return {
        w["worker_id"]: set(decode_partitions(w["owned_partitions"])) for w in workers if w["alive"]
    }


def shared_env(bootstrap: str, topics: TopicSettings) -> dict[str, str]:
    """The settings every service of one test's deployment shares."""
    return {
        "KBATCH_BOOTSTRAP_SERVERS": bootstrap,
        "KBATCH_TOPICS__PREFIX": topics.prefix,
        "KBATCH_TOPICS__HIGH_PARTITIONS": str(topics.high_partitions),
        "KBATCH_TOPICS__NORMAL_PARTITIONS": str(topics.normal_partitions),
        "KBATCH_TOPICS__LOW_PARTITIONS": str(topics.low_partitions),
        "KBATCH_TOPICS__RESULTS_PARTITIONS": str(topics.results_partitions),
        "KBATCH_TOPICS__DLQ_PARTITIONS": str(topics.dlq_partitions),
        "KBATCH_TOPICS__SUBMISSIONS_PARTITIONS": str(topics.submissions_partitions),
        "KBATCH_TOPICS__REPLICATION_FACTOR": str(topics.replication_factor),
        "KBATCH_TOPICS__RESULTS_FORMAT": topics.results_format,
    }


def ingest_env(
    bootstrap: str,
    topics: TopicSettings,
    file_dir: Path,
    scheduler_url: str,
    **extra: str,
) -> dict[str, str]:
    """An ingest (with its collector) of one deployment, on a free port; `extra` are
    further environment variables, by full name."""
    return {
        **shared_env(bootstrap, topics),
        "KBATCH_INGEST__HTTP_PORT": str(free_port()),
        "KBATCH_INGEST__FILE_DIR": str(file_dir),
        "KBATCH_INGEST__SCHEDULER_URL": scheduler_url,
        **extra,
    }


def start_ingest_process(env: dict[str, str], log_path: Path) -> tuple[ServiceProcess, str]:
    """`kbatch ingest` with `env` (from `ingest_env`), once healthy; and its URL."""
    process = ServiceProcess(["ingest"], env, log_path)
    url = f"http://127.0.0.1:{env['KBATCH_INGEST__HTTP_PORT']}"
    process.wait_healthy(f"{url}/healthz")
    return process, url


def start_scheduler(
    bootstrap: str, topics: TopicSettings, log_dir: Path, name: str = "scheduler", **options: str
) -> tuple[ServiceProcess, str]:
    port = free_port()
    env = {
        **shared_env(bootstrap, topics),
        "KBATCH_SCHEDULER__HTTP_PORT": str(port),
        "KBATCH_SCHEDULER__DATA_DIR": str(log_dir / f"{name}-data"),
        "KBATCH_SCHEDULER__HEARTBEAT_TIMEOUT_S": "4",
        **{f"KBATCH_SCHEDULER__{k.upper()}": v for k, v in options.items()},
    }
    process = ServiceProcess(["scheduler"], env, log_dir / f"{name}.log")
    url = f"http://127.0.0.1:{port}"
    process.wait_healthy(f"{url}/healthz", timeout_s=90)
    return process, url


def start_follower(
    bootstrap: str,
    topics: TopicSettings,
    log_dir: Path,
    name: str,
    pool: str,
    capacity: int,
    **options: str,
) -> tuple[ServiceProcess, str]:
    """A worker that takes its partitions from the scheduler."""
    return start_worker(
        bootstrap,
        topics,
        log_dir,
        name,
        "",
        FOLLOW_SCHEDULER="true",
        POOL=pool,
        CAPACITY=str(capacity),
        **options,
    )


def start_worker(
    bootstrap: str,
    topics: TopicSettings,
    log_dir: Path,
    name: str,
    partitions: str,
    **options: str,
) -> tuple[ServiceProcess, str]:
    port = free_port()
    env = {
        **shared_env(bootstrap, topics),
        "KBATCH_INFERENCE__ENGINE": "simulated",
        "KBATCH_INFERENCE__WORKER_ID": name,
        "KBATCH_INFERENCE__PARTITIONS": partitions,
        "KBATCH_INFERENCE__HTTP_PORT": str(port),
        "KBATCH_INFERENCE__COMMIT_INTERVAL_S": "0.2",
        "KBATCH_INFERENCE__RETRY_INITIAL_S": "0.01",
        "KBATCH_INFERENCE__RETRY_MAX_S": "0.05",
        **{f"KBATCH_INFERENCE__{k.upper()}": v for k, v in options.items()},
    }
    process = ServiceProcess(["inference"], env, log_dir / f"{name}.log")
    url = f"http://127.0.0.1:{port}"
    process.wait_healthy(f"{url}/healthz")
    return process, url
