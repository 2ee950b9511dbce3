"""Which services one local deployment runs, and the environment each needs (pure).

`kbatch up` and `kbatch demo` both start a scheduler, ingest (with the collector) and
workers following the scheduler; this is the one place that says how they are wired.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from services.stack.engine import EngineChoice


@dataclass(frozen=True)
class ServiceSpec:
    """One `kbatch <args>` process: its variables (over the shared ones) and its address."""

    name: str
    args: tuple[str, ...]
    env: dict[str, str]
    url: str


@dataclass(frozen=True)
class WorkerSlot:
    name: str
    pool: str
    port: int
    engine: int = 0  # which of the deployment's engines (one per model) it runs


@dataclass(frozen=True)
class Deployment:
    """Ports and state directories of one local deployment's services."""

    scheduler_port: int
    ingest_port: int
    workers: tuple[WorkerSlot, ...]
    scheduler_dir: Path
    file_dir: Path
    host: str = "127.0.0.1"

    def url(self, port: int) -> str:
        return f"http://{self.host}:{port}"


def service_specs(deployment: Deployment, engines: Sequence[EngineChoice]) -> list[ServiceSpec]:
    """Scheduler, ingest, then the workers, each taking partitions from the scheduler;
    one engine per model, each worker running the one its slot names."""
    scheduler_url = deployment.url(deployment.scheduler_port)
    specs = [
        ServiceSpec(
            "scheduler",
            ("scheduler",),
            {
                "KBATCH_SCHEDULER__HTTP_PORT": str(deployment.scheduler_port),
                "KBATCH_SCHEDULER__DATA_DIR": str(deployment.scheduler_dir),
            },
            scheduler_url,
        ),
        ServiceSpec(
            "ingest",
            ("ingest",),
            {
                "KBATCH_INGEST__HTTP_PORT": str(deployment.ingest_port),
                "KBATCH_INGEST__FILE_DIR": str(deployment.file_dir),
                "KBATCH_INGEST__SCHEDULER_URL": scheduler_url,
                "KBATCH_INGEST__SERVED_MODELS": json.dumps([e.served_model for e in engines]),
            },
            deployment.url(deployment.ingest_port),
        ),
    ]
    for worker in deployment.workers:
        env = {
            **engines[worker.engine].worker_env,
            "KBATCH_INFERENCE__WORKER_ID": worker.name,
            "KBATCH_INFERENCE__POOL": worker.pool,
            "KBATCH_INFERENCE__FOLLOW_SCHEDULER": "true",
            "KBATCH_INFERENCE__HTTP_PORT": str(worker.port),
        }
        specs.append(ServiceSpec(worker.name, ("inference",), env, deployment.url(worker.port)))
    return specs
