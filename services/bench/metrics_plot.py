"""`kbatch bench metrics-plot`: the main dashboard panels from a real Prometheus during a
demo-sized run (needs the `plots` extra and a `prometheus` binary).

Starts (or uses) a broker, the scheduler, ingest and two simulated workers, a
Prometheus scraping them every second, submits the shipped sample files at two
priorities through the Batch API, then asks Prometheus for the panels' series over
the run and draws them to a PNG (the README's is docs/metrics.png). The queries are
the dashboards' own (services/observability/catalog.py). Prints JSON.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import typer

from services.bench.measure import OutOption, bench_broker, emit, run_facts
from services.harness.kafka import unique_topics, wait_for
from services.harness.pipeline import (
    ingest_env,
    start_follower,
    start_ingest_process,
    start_scheduler,
)
from services.harness.ports import free_port
from services.observability.catalog import DASHBOARDS, Panel
from services.ops_http import prometheus_authorization
from services.resources import data_dir
from services.settings import CommonSettings

PANELS = (
    ("kbatch-overview", "Results out /s"),
    ("kbatch-overview", "Backlog by lane"),
    ("kbatch-inference", "In flight"),
    ("kbatch-scheduler", "Partitions assigned by lane"),
)


def panel(uid: str, title: str) -> Panel:
    dashboard = next(d for d in DASHBOARDS if d.uid == uid)
    return next(p for p in dashboard.panels if p.title == title)


def start_prometheus(out: Path, targets: dict[str, str]) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    config = out / "prometheus.yml"
    # The services started here inherit this environment, KBATCH_OPS_TOKEN included.
    authorization = prometheus_authorization(CommonSettings().ops_token, out)
    config.write_text(  # JSON is YAML: no YAML writer needed
        json.dumps(
            {
                "global": {"scrape_interval": "1s"},
                "scrape_configs": [
                    {
                        "job_name": job,
                        "static_configs": [{"targets": [t.removeprefix("http://")]}],
                        **authorization,
                    }
                    for job, t in targets.items()
                ],
            }
        )
    )
    tsdb = out / "tsdb"
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


def plot_run(out: Path, figure: Path) -> None:
    with bench_broker() as bootstrap:
        topics = unique_topics(bootstrap)
        scheduler, scheduler_url = start_scheduler(bootstrap, topics, out, "plot-scheduler")
        sim = {"SIMULATED__STEP_S": "0.02", "SIMULATED__MAX_NUM_SEQS": "32"}
        workers = [
            start_follower(bootstrap, topics, out, name, pool, 6, **sim)
            for name, pool in (("plot-a", "dedicated"), ("plot-b", "spot"))
        ]
        env = ingest_env(bootstrap, topics, out / "plot-files", scheduler_url)
        ingest, ingest_url = start_ingest_process(env, out / "plot-ingest.log")
        targets = {"kbatch-ingest": ingest_url, "kbatch-scheduler": scheduler_url}
        targets.update({f"kbatch-inference-{i}": url for i, (_, url) in enumerate(workers)})
        prometheus, prom_url = start_prometheus(out, targets)
        try:
            time.sleep(5)  # time is the point: a few scrapes before the job, for the baseline
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
            time.sleep(8)  # and a few after it, so the rates fall back in the plot
            draw(prom_url, started - 5, time.time(), figure)
        finally:
            prometheus.terminate()
            ingest.terminate()
            for process, _ in workers:
                process.terminate()
            scheduler.terminate()


def main(
    out: Path = OutOption,
    figure: Path | None = typer.Option(None, help="the PNG to write; default OUT/metrics.png"),
) -> None:
    """The main dashboard panels from a real Prometheus during a demo-sized run; JSON."""
    if importlib.util.find_spec("matplotlib") is None or shutil.which("prometheus") is None:
        raise SystemExit(
            "metrics-plot needs matplotlib (pip install 'kbatch[plots]') and prometheus"
        )
    out.mkdir(parents=True, exist_ok=True)
    figure = figure or out / "metrics.png"
    plot_run(out, figure)
    emit({**run_facts(), "figure": str(figure)}, out / "metrics-plot.json")


def draw(prom_url: str, start: float, end: float, path: Path) -> None:
    import matplotlib  # the plots extra, needed by this bench only

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # after use(): the backend must be chosen first

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
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=90)


if __name__ == "__main__":
    typer.run(main)
