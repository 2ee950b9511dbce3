"""`kbatch bench scale`: a 200,000-request job through the Batch API, and 1/2/4-worker
scaling.

Part 1: three batches (high, normal, low: 10/30/60 % of the requests, mixed
prompt and output lengths) are uploaded to ingest and run by a scheduler and two
simulated workers; the collector writes the output files. Every 2 s the RSS of
every process (broker included) and the requests backlog are sampled: RSS must
stay flat while the backlog is large (nothing holds the backlog in memory).
Latency per priority is end to end, from ingest's acceptance to the result.
Part 2: the same cost model, 1, 2 and 4 workers on one job published straight to
the requests topic (8 partitions, so partitions >= 2 x workers).
Draws RSS and backlog to a PNG (needs the `plots` extra; the README's is
docs/scale.png) and prints JSON.
"""

from __future__ import annotations

import json
import random
import shutil
import statistics
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import typer

from services.bench.measure import OutOption, emit, run_facts, steady_rate
from services.codec import results_codec
from services.harness.chaos_rig import own_broker
from services.harness.kafka import unique_topics, wait_for
from services.harness.pipeline import (
    ingest_env,
    outcomes,
    publish,
    request_record,
    start_follower,
    start_ingest_process,
    start_scheduler,
    submit_batch,
)
from services.inference.engines.simulated import ideal_requests_per_s
from services.inference.settings import SimulatedEngineOptions
from services.kafka import local_broker
from services.kafka.compacted import read_to_end
from services.kafka.lag import GroupBacklog
from services.settings import TopicSettings

MODEL = "kbatch-sim"  # what the simulated workers serve

SIM = SimulatedEngineOptions(step_s=0.005, max_num_seqs=32, tokens_per_step=1)
ENGINE = {
    "SIMULATED__STEP_S": str(SIM.step_s),
    "SIMULATED__MAX_NUM_SEQS": str(SIM.max_num_seqs),
    "LOG_LEVEL": "WARNING",
}
# Scaling uses a slower step, so four workers' ideal (592 req/s) stays well under
# what two cores can move through the message path (~2,300 req/s for one worker).
SCALING_SIM = SimulatedEngineOptions(step_s=0.01, max_num_seqs=32, tokens_per_step=1)
SCALING_ENGINE = {**ENGINE, "SIMULATED__STEP_S": str(SCALING_SIM.step_s)}
SHARES = {"high": 0.1, "normal": 0.3, "low": 0.6}
MAX_TOKENS = (4, 8, 16, 32, 48)  # mean 21.6 steps
WORKERS = 2


@dataclass
class Sampler:
    """RSS of named processes and the requests backlog, every `every_s` seconds."""

    pids: dict[str, int]
    bootstrap: str
    topics: TopicSettings
    every_s: float = 2.0
    rows: list[dict[str, Any]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def __enter__(self) -> Sampler:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        # The workers' group, for its committed offsets; never assigned, never commits.
        reader = GroupBacklog({"bootstrap.servers": self.bootstrap}, "kbatch-inference")
        started = time.monotonic()
        try:
            while not self._stop.wait(self.every_s):
                total = self.topics.lane_layout().total
                requests = self.topics.requests_of(MODEL)
                backlog = reader.by_partition(requests, total)
                # The bench publishes without transactions: offsets here are records.
                published = sum(reader.end_offsets(requests, list(range(total))).values())
                row: dict[str, Any] = {
                    "t": time.monotonic() - started,
                    "backlog": sum(backlog.values()),
                    "published": published,
                }
                row.update({name: rss_mib(pid) for name, pid in self.pids.items()})
                self.rows.append(row)
        finally:
            reader.close()


def rss_mib(pid: int) -> float | None:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    kib = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))
    return kib / 1024


def batch_file(n: int, lane: str, rng: random.Random) -> bytes:
    lines = []
    for i in range(n):
        words = rng.randint(4, 120)
        body = {
            "model": MODEL,
            "messages": [{"role": "user", "content": " ".join(["candidate"] * words) + f" {i}"}],
            "max_tokens": rng.choice(MAX_TOKENS),
        }
        line = {"custom_id": f"{lane}-{i}", "method": "POST", "url": "/v1/chat/completions"}
        lines.append(json.dumps({**line, "body": body}))
    return ("\n".join(lines) + "\n").encode()


def big_job(broker: local_broker.BrokerLayout, out: Path, total: int) -> dict[str, Any]:
    bootstrap = broker.bootstrap
    topics = unique_topics(bootstrap, high_partitions=2, normal_partitions=4, low_partitions=2)
    rng = random.Random(7)
    files = {lane: batch_file(int(total * share), lane, rng) for lane, share in SHARES.items()}
    scheduler, scheduler_url = start_scheduler(
        bootstrap, topics, out, "scale-scheduler", LOG_LEVEL="WARNING"
    )
    workers = [
        start_follower(bootstrap, topics, out, f"scale-w{i}", "dedicated", 8, **ENGINE)[0]
        for i in range(WORKERS)
    ]
    env = ingest_env(
        bootstrap, topics, out / "scale-files", scheduler_url, KBATCH_LOG_LEVEL="WARNING"
    )
    ingest, url = start_ingest_process(env, out / "scale-ingest.log")
    pid = local_broker.running_pid(broker)
    if pid is None:
        raise RuntimeError("the bench's broker is not running")
    pids = {"kafka": pid, "ingest": ingest.process.pid, "scheduler": scheduler.process.pid}
    pids.update({f"worker {i}": w.process.pid for i, w in enumerate(workers)})
    processes = [ingest, scheduler, *workers]
    try:
        with (
            httpx.Client(base_url=url, timeout=600) as client,
            Sampler(pids, bootstrap, topics) as sampler,
        ):
            started = time.monotonic()
            # Low first: the high batch must overtake a backlog already there.
            batches = {
                lane: submit_batch(client, files[lane], f"{lane}.jsonl", lane)
                for lane in reversed(SHARES)
            }
            submitted_s = time.monotonic() - started
            finals = {
                lane: wait_for(partial(_finished, client, b), 3600, f"{lane} batch", interval_s=2)
                for lane, b in batches.items()
            }
            wall = time.monotonic() - started
            lines = {
                lane: client.get(f"/v1/files/{b['output_file_id']}/content").text.count("\n")
                for lane, b in finals.items()
            }
    finally:
        for process in processes:
            process.terminate(timeout_s=60)
    results = [
        results_codec().decode(m.value())
        for m in read_to_end({"bootstrap.servers": bootstrap}, topics.results, "scale-reader")
    ]
    return {
        "requests": sum(int(total * s) for s in SHARES.values()),
        "wall_s": wall,
        "submitted_s": submitted_s,
        "lines": lines,
        "states": {lane: b["status"] for lane, b in finals.items()},
        "results": results,
        "samples": sampler.rows,
    }


def _finished(client: httpx.Client, batch_id: str) -> dict[str, Any] | None:
    batch = client.get(f"/v1/batches/{batch_id}").json()
    return batch if batch["status"] in {"completed", "failed", "cancelled", "expired"} else None


def scaling(broker: local_broker.BrokerLayout, out: Path, n: int, workers: int) -> float:
    bootstrap = broker.bootstrap
    topics = unique_topics(bootstrap, high_partitions=2, normal_partitions=4, low_partitions=2)
    rng = random.Random(workers)
    records = [
        request_record(f"scale{workers}", i, max_tokens=rng.choice(MAX_TOKENS)) for i in range(n)
    ]
    publish(bootstrap, topics, records)
    name = f"scaling-{workers}"
    scheduler, _ = start_scheduler(bootstrap, topics, out, name, LOG_LEVEL="WARNING")
    started = [
        start_follower(bootstrap, topics, out, f"{name}-{i}", "dedicated", 8, **SCALING_ENGINE)[0]
        for i in range(workers)
    ]
    try:
        found = outcomes(bootstrap, topics, expect=n, timeout_s=1800)
    finally:
        for process in [*started, scheduler]:
            process.terminate(timeout_s=60)
    if len(found.results) != n:
        raise RuntimeError(f"scaling, {workers} workers: {n - len(found.results)} results missing")
    return steady_rate([r["completed_at_ms"] / 1000 for r in found.results])


def percentiles_s(values_ms: list[float]) -> dict[str, float]:
    cuts = statistics.quantiles(values_ms, n=100)
    return {
        "p50": round(cuts[49] / 1000, 1),
        "p95": round(cuts[94] / 1000, 1),
        "p99": round(cuts[98] / 1000, 1),
        "max": round(max(values_ms) / 1000, 1),
    }


def plot(samples: list[dict[str, Any]], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        typer.echo("matplotlib missing (pip install 'kbatch[plots]'): no plot", err=True)
        return False
    figure, (rss, backlog) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    for name in (k for k in samples[0] if k not in {"t", "backlog", "published"}):
        rss.plot([s["t"] for s in samples], [s[name] for s in samples], label=name)
    rss.set_ylabel("RSS MiB")
    rss.legend(loc="upper left", fontsize=8, ncol=3)
    rss.set_title("RSS of every process during the 200K-request job")
    backlog.plot([s["t"] for s in samples], [s["backlog"] for s in samples], color="black")
    backlog.set_ylabel("requests backlog")
    backlog.set_xlabel("seconds")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=90)
    return True


def job_figures(job: dict[str, Any], ideal_one: float) -> dict[str, Any]:
    """The 200K job's rates, memory and latency per priority."""
    results = job["results"]
    out_rate = steady_rate([r["completed_at_ms"] / 1000 for r in results])
    by_lane: dict[str, list[float]] = defaultdict(list)
    for r in results:
        by_lane[r["priority"]].append(r["timings"]["queue_wait_ms"] + r["timings"]["inference_ms"])
    samples = job["samples"]
    in_s = next(r["t"] for r in samples if r["published"] >= job["requests"])
    rss: dict[str, dict[str, float]] = {}
    for col in (k for k in samples[0] if k not in {"t", "backlog", "published"}):
        values = [s[col] for s in samples if s[col] is not None]
        rss[col] = {
            "first": round(values[0]),
            "peak": round(max(values)),
            "last": round(values[-1]),
        }
    return {
        "requests": job["requests"],
        "results_by_priority": {lane: len(by_lane[lane]) for lane in SHARES},
        "output_file_lines": job["lines"],
        "batch_states": job["states"],
        "wall_s": round(job["wall_s"]),
        "submitted_s": round(job["submitted_s"], 1),
        "all_published_after_s": round(in_s),
        "requests_per_s_in": round(job["requests"] / in_s),
        "requests_per_s_out": round(out_rate, 1),
        "ideal_requests_per_s": round(WORKERS * ideal_one, 1),
        "efficiency": round(out_rate / (WORKERS * ideal_one), 3),
        "peak_backlog": max(s["backlog"] for s in samples),
        "rss_mib": rss,
        "latency_s": {lane: percentiles_s(by_lane[lane]) for lane in SHARES},
    }


def measure(out: Path, total: int, scaling_n: int, figure: Path) -> dict[str, Any]:
    mean_steps = statistics.mean(MAX_TOKENS)
    ideal_one = ideal_requests_per_s(SIM, mean_steps)
    ideal_scaling = ideal_requests_per_s(SCALING_SIM, mean_steps)
    for leftover in ("scale-kafka", "scale-files"):  # each run starts from nothing
        shutil.rmtree(out / leftover, ignore_errors=True)
    broker = own_broker(out / "scale-kafka")
    try:
        job = big_job(broker, out, total)
        rates = {w: scaling(broker, out, scaling_n, w) for w in (1, 2, 4)}
    finally:
        local_broker.down(broker)
    (out / "scale-samples.json").write_text(json.dumps(job["samples"]))
    return {
        **run_facts(),
        "cost_model": {
            "max_num_seqs": SIM.max_num_seqs,
            "step_ms": SIM.step_s * 1000,
            "max_tokens": list(MAX_TOKENS),
            "mean_steps": mean_steps,
        },
        "job": job_figures(job, ideal_one),
        "scaling": {
            "requests": scaling_n,
            "step_ms": SCALING_SIM.step_s * 1000,
            "partitions": 8,
            "workers": {
                str(workers): {
                    "requests_per_s": round(rate, 1),
                    "per_worker": round(rate / workers, 1),
                    "vs_linear": round(rate / (workers * rates[1]), 2),
                    "ideal": round(workers * ideal_scaling, 1),
                }
                for workers, rate in rates.items()
            },
        },
        "figure": str(figure) if plot(job["samples"], figure) else None,
    }


def main(
    requests: int = typer.Argument(200_000, help="requests in the big Batch API job"),
    scaling_requests: int = typer.Argument(12_000, help="requests per scaling run"),
    out: Path = OutOption,
    figure: Path | None = typer.Option(None, help="the PNG to write; default OUT/scale.png"),
) -> None:
    """A big Batch API job (memory, latency per priority), then 1/2/4 workers; JSON."""
    out.mkdir(parents=True, exist_ok=True)
    emit(measure(out, requests, scaling_requests, figure or out / "scale.png"), out / "scale.json")


if __name__ == "__main__":
    typer.run(main)
