"""KBATCH_OPS_TOKEN against real processes: the scheduler's views and every /metrics answer
401 without it and 200 with it, /healthz stays open, a tenant token opens no /metrics,
and every caller (ingest's scheduler client, `kbatch status`, the failover bench,
Prometheus) sends it."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml
from pydantic import SecretStr

from services.harness.kafka import unique_topics, wait_for
from services.harness.pipeline import ingest_env, start_follower, start_ingest_process
from services.harness.pipeline import start_scheduler as start_scheduler_process
from services.harness.ports import free_port
from services.harness.processes import KBATCH, ServiceProcess, stop_all
from services.ops_http import prometheus_authorization
from tests.integration.test_prometheus import binary

pytestmark = pytest.mark.integration

OPS_TOKEN = "ops-tok-7f3a"
TENANT_TOKEN = "tenant-tok-acme"
MODEL = "ops-only-model"  # no configured model: ingest learns it from the scheduler alone
OPS = {"Authorization": f"Bearer {OPS_TOKEN}"}
TENANT = {"Authorization": f"Bearer {TENANT_TOKEN}"}
WRONG = {"Authorization": f"Bearer {OPS_TOKEN}x"}


@dataclass(frozen=True)
class Deployment:
    scheduler: str
    worker: str
    ingest: str
    processes: tuple[ServiceProcess, ...]


@pytest.fixture(scope="module")
def deployment(bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    """Scheduler, one worker and ingest (tenant tokens on), all with the ops token; the
    token reaches them, as an operator's would, through the environment."""
    tmp_path = tmp_path_factory.mktemp("ops-token")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("KBATCH_OPS_TOKEN", OPS_TOKEN)
        topics = unique_topics(bootstrap, high_partitions=1, normal_partitions=2, low_partitions=1)
        scheduler, scheduler_url = start_scheduler_process(bootstrap, topics, tmp_path)
        worker, worker_url = start_follower(
            bootstrap, topics, tmp_path, "ops-w1", "dedicated", 4, SERVED_MODEL_NAME=MODEL
        )
        ingest, ingest_url = start_ingest_process(
            ingest_env(
                bootstrap,
                topics,
                tmp_path / "files",
                scheduler_url,
                KBATCH_INGEST__TENANT_TOKENS=json.dumps({"acme": TENANT_TOKEN}),
                KBATCH_INGEST__MODELS_REFRESH_S="0.5",
            ),
            tmp_path / "ingest.log",
        )
        processes = (ingest, worker, scheduler)
        try:
            yield Deployment(scheduler_url, worker_url, ingest_url, processes)
        finally:
            stop_all(processes)
            for process in processes:
                assert OPS_TOKEN not in process.log() and TENANT_TOKEN not in process.log()


def assert_refused(url: str, headers: dict[str, str]) -> None:
    reply = httpx.get(url, headers=headers, timeout=10)
    assert reply.status_code == 401, (url, reply.status_code, reply.text)
    assert reply.headers["WWW-Authenticate"] == "Bearer", url
    assert "KBATCH_OPS_TOKEN" in reply.json()["error"]["message"], url


def test_the_scheduler_views_and_every_metrics_need_the_token(deployment: Deployment) -> None:
    guarded = [
        f"{deployment.scheduler}/{path}"
        for path in ("workers", "assignments", "jobs", "jobs/some-job", "metrics")
    ] + [f"{deployment.worker}/metrics", f"{deployment.ingest}/metrics"]
    for url in guarded:
        assert_refused(url, {})
        assert_refused(url, WRONG)
        reply = httpx.get(url, headers=OPS, timeout=10)
        assert reply.status_code == 200, (url, reply.text)
    for service in (deployment.scheduler, deployment.worker, deployment.ingest):
        assert httpx.get(f"{service}/healthz", timeout=10).status_code in (200, 503)
    workers = httpx.get(f"{deployment.scheduler}/workers", headers=OPS, timeout=10).json()
    assert "ops-w1" in {w["worker_id"] for w in workers["workers"]}


def test_tenant_and_ops_tokens_open_only_their_own_routes(deployment: Deployment) -> None:
    assert_refused(f"{deployment.ingest}/metrics", TENANT)
    assert_refused(f"{deployment.scheduler}/workers", TENANT)
    # The ops token is no tenant's: the Batch API refuses it as any unknown token.
    for path in ("/v1/models", "/v1/batches"):
        assert httpx.get(f"{deployment.ingest}{path}", headers=OPS, timeout=10).status_code == 401
        assert httpx.get(f"{deployment.ingest}{path}", headers=TENANT, timeout=10).is_success


def test_ingest_reads_the_scheduler_with_the_token(deployment: Deployment) -> None:
    """The worker's model is listed only if ingest's /workers calls carry the token."""

    def learned() -> dict[str, object] | None:
        listing = httpx.get(f"{deployment.ingest}/v1/models", headers=TENANT, timeout=10).json()
        return next((m for m in listing["data"] if m["id"] == MODEL), None)

    model = wait_for(learned, 60, f"ingest lists {MODEL}")
    assert model["kbatch"]["live_workers"] == 1


def test_kbatch_status_and_the_failover_bench_send_the_token(deployment: Deployment) -> None:
    from services.bench import failover

    def status(env: dict[str, str]) -> str:
        done = subprocess.run(
            [KBATCH, "status", "--api", deployment.ingest, "--scheduler", deployment.scheduler],
            env={**env, "COLUMNS": "200"},
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        return done.stdout + done.stderr

    with_token = status(dict(os.environ))
    assert "ops-w1" in with_token and OPS_TOKEN not in with_token
    without = status({k: v for k, v in os.environ.items() if k != "KBATCH_OPS_TOKEN"})
    assert "ops-w1" not in without and "401" in without

    failover.ops_headers.cache_clear()
    assert "ops-w1" in failover.owned(deployment.scheduler)


def test_prometheus_scrapes_with_the_token_from_a_file(
    deployment: Deployment, tmp_path: Path
) -> None:
    targets = [u.removeprefix("http://") for u in (deployment.scheduler, deployment.worker)]
    targets.append(deployment.ingest.removeprefix("http://"))
    authorization = prometheus_authorization(SecretStr(OPS_TOKEN), tmp_path)
    config = tmp_path / "prometheus.yml"
    config.write_text(
        yaml.safe_dump(
            {
                "global": {"scrape_interval": "1s"},
                "scrape_configs": [
                    {"job_name": "with-token", "static_configs": [{"targets": targets}]}
                    | authorization,
                    {"job_name": "anonymous", "static_configs": [{"targets": targets}]},
                ],
            }
        )
    )
    assert OPS_TOKEN not in config.read_text()
    port = free_port()
    executable = binary("prometheus")
    with (tmp_path / "prometheus.log").open("wb") as log:
        prometheus = subprocess.Popen(
            [
                executable,
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"

    def up(job: str, value: int) -> bool:
        try:
            reply = httpx.get(
                f"{url}/api/v1/query", params={"query": f'up{{job="{job}"}} == {value}'}, timeout=5
            )
            return len(reply.json()["data"]["result"]) == len(targets)
        except (httpx.HTTPError, ValueError, KeyError):
            return False

    try:
        wait_for(lambda: up("with-token", 1), 60, "every target scraped with the token")
        wait_for(lambda: up("anonymous", 0), 60, "every target refusing a scrape without it")
    finally:
        prometheus.terminate()
        prometheus.wait(30)
