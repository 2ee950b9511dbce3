"""Plot the main dashboard panels from a real Prometheus during a demo-sized run.

Run: .venv/bin/pip install -e '.[plots]' && .venv/bin/python -m bench.metrics_plot
Starts (or uses) a broker, the scheduler, ingest and two simulated workers, a
Prometheus (Debian's) scraping them every second, submits the shipped sample files
at two priorities through the Batch API, then asks Prometheus for the panels'
series over the run and draws them to docs/metrics.png. The queries are the
dashboards' own (services/observability/catalog.py).
"""

from __future__ import annotations

import shutil
import subprocess
import time
from typing import Any

import httpx
import matplotlib
import yaml

from bench.common import OUT, ROOT, broker, machine
from services.harness.kafka import unique_topics, wait_for
from services.harness.pipeline import (
    ingest_env,
    start_follower,
    start_ingest_process,
    start_scheduler,
)
from services.harness.ports import free_port
from services.observability.catalog import DASHBOARDS
from services.resources import data_dir

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # after use(): the backend must be chosen first

PANELS = (
    ("kbatch-overview", "Results out /s"),
    ("kbatch-overview", "Backlog by lane"),
    ("kbatch-inference", "In flight"),
    ("kbatch-scheduler", "Partitions assigned by lane"),
)


def panel(uid: str, title: str) -> Any:
    dashboard = next(d for d in DASHBOARDS if d.uid == uid)
    return next(p for p in dashboard.panels if p.title == title)


def start_prometheus(targets: dict[str, str]) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    config = OUT / "prometheus.yml"
    config.write_text(
        yaml.safe_dump(
            {
                "global": {"scrape_interval": "1s"},
                "scrape_configs": [
                    {"job_name": job, "static_configs": [{"targets": [t.removeprefix("http://")]}]}
                    for job, t in targets.items()
                ],
            }
        )
    )
    tsdb = OUT / "tsdb"
    shutil.rmtree(tsdb, ignore_errors=True)
    process = subprocess.Popen(
        [
            "prometheus",
            f"--config.file={config}",
            f"--storage.tsdb.path={tsdb}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return process, f"http://127.0.0.1:{port}"


def submit(client: httpx.Client, priority: str) -> str:
    path = data_dir("samples") / f"candidates-{priority}.jsonl"
    with path.open("rb") as handle:
        file_id = client.post(
            "/v1/files", files={"file": handle}, data={"purpose": "batch"}
        ).json()["id"]
    body = {
        "input_file_id": file_id,
        "endpoint": "/v1/chat/completions",
        "completion_window": "24h",
        "priority": priority,
    }
    return str(client.post("/v1/batches", json=body).json()["id"])


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    with broker() as bootstrap:
        topics = unique_topics(bootstrap)
        scheduler, scheduler_url = start_scheduler(bootstrap, topics, OUT, "plot-scheduler")
        sim = {"SIMULATED__STEP_S": "0.02", "SIMULATED__MAX_NUM_SEQS": "32"}
        workers = [
            start_follower(bootstrap, topics, OUT, name, pool, 6, **sim)
            for name, pool in (("plot-a", "dedicated"), ("plot-b", "spot"))
        ]
        env = ingest_env(bootstrap, topics, OUT / "plot-files", scheduler_url)
        ingest, ingest_url = start_ingest_process(env, OUT / "plot-ingest.log")
        targets = {"kbatch-ingest": ingest_url, "kbatch-scheduler": scheduler_url}
        targets.update({f"kbatch-inference-{i}": url for i, (_, url) in enumerate(workers)})
        prometheus, prom_url = start_prometheus(targets)
        try:
            time.sleep(5)
            started = time.time()
            with httpx.Client(base_url=ingest_url, timeout=300) as client:
                batches = [submit(client, p) for p in ("high", "low")]
                wait_for(
                    lambda: all(
                        client.get(f"/v1/batches/{b}").json()["status"] == "completed"
                        for b in batches
                    ),
                    600,
                    "batches completed",
                    interval_s=1,
                )
            time.sleep(8)
            draw(prom_url, started - 5, time.time())
        finally:
            prometheus.terminate()
            ingest.terminate()
            for process, _ in workers:
                process.terminate()
            scheduler.terminate()
    print(f"wrote docs/metrics.png ({machine()})")


def draw(prom_url: str, start: float, end: float) -> None:
    figure, axes = plt.subplots(2, 2, figsize=(12, 7))
    for ax, (uid, title) in zip(axes.flat, PANELS, strict=True):
        chosen = panel(uid, title)
        for expr in chosen.exprs:
            reply = httpx.get(
                f"{prom_url}/api/v1/query_range",
                params={"query": expr, "start": start, "end": end, "step": 1},
                timeout=30,
            ).json()
            for series in reply["data"]["result"]:
                times = [float(t) - start for t, _ in series["values"]]
                values = [float(v) for _, v in series["values"]]
                label = " ".join(
                    f"{k}={v}" for k, v in series["metric"].items() if k not in ("job", "__name__")
                )
                ax.plot(times, values, label=label or expr)
        ax.set_title(title)
        ax.set_xlabel("seconds")
        ax.legend(fontsize=7)
    figure.suptitle(
        "kbatch demo run: 3,000 sample requests (simulated engine), scraped by Prometheus"
    )
    figure.tight_layout()
    docs = ROOT / "docs"
    docs.mkdir(exist_ok=True)
    figure.savefig(docs / "metrics.png", dpi=90)


if __name__ == "__main__":
    main()
