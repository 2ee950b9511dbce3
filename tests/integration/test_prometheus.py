"""A real Prometheus scrapes the running services and answers every dashboard and rule query."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from services.harness.kafka import unique_topics, wait_for
from services.harness.pipeline import (
    outcomes,
    publish,
    request_record,
    shared_env,
    start_follower,
    start_scheduler,
)
from services.harness.ports import free_port
from services.harness.processes import ServiceProcess, stop_all
from services.inference.gpu import sample_gpus
from services.observability.catalog import all_exprs, data_exprs
from services.observability.render import ALERTS_FILE

GPU_ONLY = ("kbatch_gpu_",)  # per-board gauges exist only where NVML sees a GPU


def binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} not found: install Debian's prometheus package (.ci/run does)")
    return path


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A Prometheus whose config the test writes before asking it to reload."""
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(yaml.safe_dump({"global": {"scrape_interval": "1s"}}))
    executable = binary("prometheus")  # before the log opens: a failure leaks no file
    log = (tmp_path / "prometheus.log").open("wb")
    process = subprocess.Popen(
        [
            executable,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--web.enable-lifecycle",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    wait_for(lambda: _ready(url), 60, "prometheus ready")
    yield config, url
    process.terminate()
    process.wait(30)
    log.close()


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/-/ready", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def has_data(url: str, expr: str) -> bool:
    return bool(query(url, expr)["data"]["result"])


def query(url: str, expr: str) -> dict[str, Any]:
    reply = httpx.get(f"{url}/api/v1/query", params={"query": expr}, timeout=10)
    return dict(reply.json())


def test_prometheus_scrapes_every_service_and_answers_every_query(
    bootstrap: str, tmp_path: Path, prometheus: tuple[Path, str]
) -> None:
    config, prom_url = prometheus
    topics = unique_topics(bootstrap, high_partitions=1, normal_partitions=2, low_partitions=1)
    scheduler, scheduler_url = start_scheduler(bootstrap, topics, tmp_path)
    worker, worker_url = start_follower(bootstrap, topics, tmp_path, "w1", "dedicated", 4)
    ingest_port = free_port()
    ingest = ServiceProcess(
        ["ingest"],
        {
            **shared_env(bootstrap, topics),
            "KBATCH_INGEST__HTTP_PORT": str(ingest_port),
            "KBATCH_INGEST__FILE_DIR": str(tmp_path / "files"),
        },
        tmp_path / "ingest.log",
    )
    ingest_url = f"http://127.0.0.1:{ingest_port}"
    ingest.wait_healthy(f"{ingest_url}/healthz")
    try:
        targets = {
            "kbatch-ingest": ingest_url,
            "kbatch-scheduler": scheduler_url,
            "kbatch-inference": worker_url,
        }
        for job, url in targets.items():
            text = httpx.get(f"{url}/metrics", timeout=10).text
            check = subprocess.run(
                [binary("promtool"), "check", "metrics"], input=text, capture_output=True, text=True
            )
            assert check.returncode == 0, f"{job}: {check.stdout}{check.stderr}"
        rules = tmp_path / "alerts.yml"
        shutil.copy(ALERTS_FILE, rules)
        config.write_text(
            yaml.safe_dump(
                {
                    "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                    "rule_files": [str(rules)],
                    "scrape_configs": [
                        {
                            "job_name": job,
                            "static_configs": [{"targets": [url.removeprefix("http://")]}],
                        }
                        for job, url in targets.items()
                    ],
                }
            )
        )
        assert httpx.post(f"{prom_url}/-/reload", timeout=10).status_code == 200

        lines = [
            json.dumps(
                {
                    "custom_id": f"p{i}",
                    "method": "POST",
                    "url": "/v1/chat/completions",
                    "body": {
                        "model": "kbatch-sim",
                        "messages": [{"role": "user", "content": "hi"}],
                    },
                }
            )
            for i in range(50)
        ] + ["{broken"]
        upload = httpx.post(
            f"{ingest_url}/v1/jobs/prom-job/requests", content="\n".join(lines), timeout=30
        )
        assert upload.status_code == 200 and upload.json()["accepted"] == 50
        publish(
            bootstrap, topics, [request_record("prom-job", 99, max_tokens=100_000)], raw=[b"poison"]
        )
        outcomes(bootstrap, topics, expect=52, timeout_s=60)

        gpu = sample_gpus().available
        wait_for(
            lambda: len(query(prom_url, "up == 1")["data"]["result"]) == 3, 30, "all targets up"
        )
        # Rates need two samples of every target.
        wait_for(
            lambda: len(query(prom_url, "count_over_time(up[5m]) >= 2")["data"]["result"]) == 3,
            30,
            "two scrapes of every target",
        )
        for expr in all_exprs():
            assert query(prom_url, expr)["status"] == "success", expr
        for expr in data_exprs():
            if not gpu and any(m in expr for m in GPU_ONLY):
                continue
            wait_for(partial(has_data, prom_url, expr), 20, f"data for {expr}")
    finally:
        stop_all((ingest, worker, scheduler))
