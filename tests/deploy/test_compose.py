"""deploy/compose.yaml with deploy/compose.cpu.yaml, brought up on a real Docker engine.

A batch goes through ingest with the official `openai` client and is answered by the
llamacpp workers; Prometheus scrapes every service; a worker whose process is killed
comes back by its restart policy and the batch it was serving still finishes.
Images come from `make test-deploy` (local stand-ins for the upstream base images).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml
from testcontainers.compose import DockerCompose

from services.harness.kafka import wait_for
from services.harness.pipeline import batch_line

pytestmark = pytest.mark.timeout(900)

REPO_ROOT = Path(__file__).resolve().parents[2]
DEPLOY = REPO_ROOT / "deploy"
LOGS = REPO_ROOT / ".kbatch" / "deploy" / "logs"
TINY = "kbatch-tiny"
DONE = {"completed", "failed", "expired", "cancelled"}


@dataclass
class Stack:
    compose: DockerCompose
    client: openai.OpenAI
    prometheus_url: str


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def published_ports(tmp_path: Path) -> Path:
    """An env file moving every published port to a free one (the host may use the defaults)."""
    names = ("KAFKA_PORT", "INGEST_PORT", "SCHEDULER_PORT", "PROMETHEUS_PORT")
    env_file = tmp_path / "ports.env"
    env_file.write_text("".join(f"{name}={free_port()}\n" for name in names))
    return env_file


def env_value(env_file: Path, name: str) -> str:
    values = dict(line.split("=", 1) for line in env_file.read_text().splitlines())
    return values[name]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    env_file = published_ports(tmp_path_factory.mktemp("compose"))
    compose = DockerCompose(
        DEPLOY,
        compose_file_name=["compose.yaml", "compose.cpu.yaml"],
        env_file=str(env_file),
        wait=False,  # the one-shot `topics` service exits; readiness is awaited below
    )
    with compose:
        try:
            ingest = f"http://127.0.0.1:{env_value(env_file, 'INGEST_PORT')}"
            client = openai.OpenAI(base_url=f"{ingest}/v1", api_key="unused", max_retries=0)
            wait_for(lambda: live_workers(ingest) >= 2, 300, "two live llamacpp workers", 1.0)
            prometheus = f"http://127.0.0.1:{env_value(env_file, 'PROMETHEUS_PORT')}"
            yield Stack(compose, client, prometheus)
        finally:
            LOGS.mkdir(parents=True, exist_ok=True)
            stdout, stderr = compose.get_logs()
            (LOGS / f"compose-{time.strftime('%Y%m%dT%H%M%S')}.log").write_text(stdout + stderr)


def live_workers(ingest_url: str) -> int:
    """Workers ingest counts as live for the tiny model (0 while ingest is not up)."""
    try:
        listed = httpx.get(f"{ingest_url}/v1/models", timeout=5).json()["data"]
    except (httpx.HTTPError, ValueError, KeyError):
        return 0
    return sum(m["kbatch"]["live_workers"] for m in listed if m["id"] == TINY)


def submit(client: openai.OpenAI, tmp_path: Path, ids: list[str], max_tokens: int) -> str:
    path = tmp_path / "input.jsonl"
    path.write_text("".join(batch_line(i, TINY, max_tokens) + "\n" for i in ids))
    with path.open("rb") as handle:
        file_id = client.files.create(file=handle, purpose="batch").id
    batch = client.batches.create(
        input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    return batch.id


def finished(client: openai.OpenAI, batch_id: str, timeout_s: float) -> Any:
    return wait_for(
        lambda: (b := client.batches.retrieve(batch_id)).status in DONE and b,
        timeout_s,
        f"batch {batch_id} finishing",
        interval_s=1.0,
    )


def assert_answered_by_llamacpp(client: openai.OpenAI, batch: Any, ids: list[str]) -> None:
    assert batch.status == "completed", batch
    assert batch.output_file_id is not None, batch
    text = client.files.content(batch.output_file_id).text
    lines = [json.loads(line) for line in text.splitlines() if line]
    assert sorted(line["custom_id"] for line in lines) == sorted(ids)
    for line in lines:
        assert line["error"] is None, line
        assert line["response"]["status_code"] == 200, line
        body = line["response"]["body"]
        assert body["kbatch"]["engine"] == "llamacpp", line
        assert body["model"] == TINY, line


def scrape_targets() -> set[str]:
    """host:port of every target deploy/prometheus/prometheus.yml names."""
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    return {
        target
        for job in config["scrape_configs"]
        for static in job["static_configs"]
        for target in static["targets"]
    }


def targets_all_up(prometheus_url: str, since: float = 0.0) -> bool:
    """Every configured target scraped up (each last scraped after `since`, a Unix time)."""
    try:
        active = httpx.get(f"{prometheus_url}/api/v1/targets", timeout=5).json()["data"]
    except (httpx.HTTPError, ValueError, KeyError):
        return False
    targets = active["activeTargets"]
    seen = {t["labels"]["instance"] for t in targets}
    return seen == scrape_targets() and all(
        t["health"] == "up" and scraped_at(t["lastScrape"]) > since for t in targets
    )


def scraped_at(rfc3339: str) -> float:
    return datetime.fromisoformat(rfc3339.replace("Z", "+00:00")).timestamp()


def inspect(container_id: str) -> dict[str, Any]:
    out = subprocess.run(
        ["docker", "inspect", container_id], capture_output=True, text=True, check=True
    ).stdout
    [state] = json.loads(out)
    return dict(state)


def test_a_batch_is_answered_by_the_llamacpp_workers(stack: Stack, tmp_path: Path) -> None:
    ids = [f"line-{i:02d}" for i in range(20)]
    batch_id = submit(stack.client, tmp_path, ids, max_tokens=8)
    batch = finished(stack.client, batch_id, 300)
    assert batch.request_counts.completed == len(ids), batch
    assert_answered_by_llamacpp(stack.client, batch, ids)


def test_prometheus_scrapes_every_service(stack: Stack) -> None:
    assert scrape_targets() == {
        "ingest:8080",
        "scheduler:8070",
        "inference-0:8090",
        "inference-1:8090",
    }
    wait_for(lambda: targets_all_up(stack.prometheus_url), 120, "every target up", 1.0)


def test_a_killed_worker_restarts_and_the_work_finishes(stack: Stack, tmp_path: Path) -> None:
    worker = stack.compose.get_container(service_name="inference-0").ID
    assert worker is not None
    restarts = inspect(worker)["RestartCount"]
    ids = [f"after-kill-{i:02d}" for i in range(40)]
    batch_id = submit(stack.client, tmp_path, ids, max_tokens=32)
    wait_for(
        lambda: stack.client.batches.retrieve(batch_id).status == "in_progress",
        120,
        "the batch in progress",
        0.2,
    )
    killed_at = time.time()
    # SIGKILL to the worker's process from the host, as an OOM kill or a crash ends it.
    # (`docker kill` would not do: Docker counts it as a manual stop, which restart
    # policies leave stopped.) The engine must run on this machine: it does here.
    os.kill(inspect(worker)["State"]["Pid"], signal.SIGKILL)
    wait_for(
        lambda: (s := inspect(worker))["RestartCount"] > restarts and s["State"]["Running"],
        120,
        "inference-0 restarted by its restart policy",
        0.5,
    )
    batch = finished(stack.client, batch_id, 600)
    assert_answered_by_llamacpp(stack.client, batch, ids)
    # The restarted worker serves metrics again: Prometheus scrapes it up after the kill.
    wait_for(lambda: targets_all_up(stack.prometheus_url, killed_at), 120, "targets up", 1.0)
