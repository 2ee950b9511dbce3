"""Scale: a 200,000-request job through the Batch API, and 1/2/4-worker scaling.

Run: make bench-scale   (or .venv/bin/python -m bench.scale [requests] [scaling requests])
Part 1: three batches (high, normal, low: 10/30/60 % of the requests, mixed
prompt and output lengths) are uploaded to ingest and run by a scheduler and two
simulated workers; the collector writes the output files. Every 2 s the RSS of
every process (broker included) and the requests backlog are sampled: RSS must
stay flat while the backlog is large (nothing holds the backlog in memory).
Latency per priority is end to end, from ingest's acceptance to the result.
Part 2: the same cost model, 1, 2 and 4 workers on one job published straight to
the requests topic (8 partitions, so partitions >= 2 x workers).
Writes docs/scale.png (needs the `plots` extra) and prints the tables.
"""

from __future__ import annotations

import json
import random
import shutil
import statistics
import sys
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import httpx
from confluent_kafka import Consumer, TopicPartition

from bench.common import OUT, ROOT, machine
from services.bench.measure import steady_rate
from services.codec import RESULT, codec
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
from services.kafka.lag import partition_backlog
from services.settings import TopicSettings
from tests.chaos.rig import own_broker

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
        consumer = Consumer({"bootstrap.servers": self.bootstrap, "group.id": "kbatch-inference"})
        started = time.monotonic()
        try:
            while not self._stop.wait(self.every_s):
                total = self.topics.lane_layout().total
                backlog = partition_backlog(consumer, self.topics.requests, total)
                published = sum(
                    consumer.get_watermark_offsets(
                        TopicPartition(self.topics.requests, p), timeout=10, cached=False
                    )[1]
                    for p in range(total)
                )
                row: dict[str, Any] = {
                    "t": time.monotonic() - started,
                    "backlog": sum(backlog.values()),
                    "published": published,
                }
                row.update({name: rss_mib(pid) for name, pid in self.pids.items()})
                self.rows.append(row)
        finally:
            consumer.close()


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
            "model": "kbatch-sim",
            "messages": [{"role": "user", "content": " ".join(["candidate"] * words) + f" {i}"}],
            "max_tokens": rng.choice(MAX_TOKENS),
        }
        line = {"custom_id": f"{lane}-{i}", "method": "POST", "url": "/v1/chat/completions"}
        lines.append(json.dumps({**line, "body": body}))
    return ("\n".join(lines) + "\n").encode()


def big_job(broker: local_broker.BrokerLayout, total: int) -> dict[str, Any]:
    bootstrap = broker.bootstrap
    topics = unique_topics(bootstrap, high_partitions=2, normal_partitions=4, low_partitions=2)
    rng = random.Random(7)
    files = {lane: batch_file(int(total * share), lane, rng) for lane, share in SHARES.items()}
    scheduler, scheduler_url = start_scheduler(
        bootstrap, topics, OUT, "scale-scheduler", LOG_LEVEL="WARNING"
    )
    workers = [
        start_follower(bootstrap, topics, OUT, f"scale-w{i}", "dedicated", 8, **ENGINE)[0]
        for i in range(WORKERS)
    ]
    env = ingest_env(
        bootstrap, topics, OUT / "scale-files", scheduler_url, KBATCH_LOG_LEVEL="WARNING"
    )
    ingest, url = start_ingest_process(env, OUT / "scale-ingest.log")
    pid = local_broker.running_pid(broker)
    assert pid is not None
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
        codec(RESULT).decode(m.value())
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


def scaling(broker: local_broker.BrokerLayout, n: int, workers: int) -> float:
    bootstrap = broker.bootstrap
    topics = unique_topics(bootstrap, high_partitions=2, normal_partitions=4, low_partitions=2)
    rng = random.Random(workers)
    records = [
        request_record(f"scale{workers}", i, max_tokens=rng.choice(MAX_TOKENS)) for i in range(n)
    ]
    publish(bootstrap, topics, records)
    name = f"scaling-{workers}"
    scheduler, _ = start_scheduler(bootstrap, topics, OUT, name, LOG_LEVEL="WARNING")
    started = [
        start_follower(bootstrap, topics, OUT, f"{name}-{i}", "dedicated", 8, **SCALING_ENGINE)[0]
        for i in range(workers)
    ]
    try:
        found = outcomes(bootstrap, topics, expect=n, timeout_s=1800)
    finally:
        for process in [*started, scheduler]:
            process.terminate(timeout_s=60)
    assert len(found.results) == n, f"{n - len(found.results)} results missing"
    return steady_rate([r["completed_at_ms"] / 1000 for r in found.results])


def percentiles(values: list[float]) -> str:
    cuts = statistics.quantiles(values, n=100)
    return f"{cuts[49] / 1000:.1f} / {cuts[94] / 1000:.1f} / {cuts[98] / 1000:.1f} / " + (
        f"{max(values) / 1000:.1f}"
    )


def plot(samples: list[dict[str, Any]], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib missing (pip install -e '.[plots]'): no plot")
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
    figure.savefig(path, dpi=90)
    return True


def main() -> None:
    total = int(sys.argv[1]) if len(sys.argv) > 1 else 200_000
    scaling_n = int(sys.argv[2]) if len(sys.argv) > 2 else 12_000
    OUT.mkdir(parents=True, exist_ok=True)
    mean_steps = statistics.mean(MAX_TOKENS)
    ideal_one = ideal_requests_per_s(SIM, mean_steps)
    ideal_scaling = ideal_requests_per_s(SCALING_SIM, mean_steps)
    for leftover in ("scale-kafka", "scale-files"):  # each run starts from nothing
        shutil.rmtree(OUT / leftover, ignore_errors=True)
    broker = own_broker(OUT / "scale-kafka")
    try:
        job = big_job(broker, total)
        rates = {w: scaling(broker, scaling_n, w) for w in (1, 2, 4)}
    finally:
        local_broker.down(broker)
    results = job["results"]
    out_rate = steady_rate([r["completed_at_ms"] / 1000 for r in results])
    by_lane: dict[str, list[float]] = defaultdict(list)
    for r in results:
        by_lane[r["priority"]].append(r["timings"]["queue_wait_ms"] + r["timings"]["inference_ms"])
    rss_cols = [k for k in job["samples"][0] if k not in {"t", "backlog", "published"}]
    print(f"machine: {machine()}")
    print(
        f"cost model: {SIM.max_num_seqs} seqs, {SIM.step_s * 1000:.0f} ms/step, "
        f"max_tokens from {MAX_TOKENS} (mean {mean_steps:.1f} steps)\n"
    )
    print("| 200K job | value |")
    print("|---|---|")
    print(
        f"| requests (high / normal / low) | {job['requests']:,} "
        f"({' / '.join(str(len(by_lane[lane])) for lane in SHARES)}) |"
    )
    print(
        f"| results in the output files | {sum(job['lines'].values()):,} "
        f"(batches {', '.join(f'{k} {v}' for k, v in job['states'].items())}) |"
    )
    print(f"| wall time, upload to last batch completed | {job['wall_s']:.0f} s |")
    print(f"| upload + batch creation (3 files) | {job['submitted_s']:.1f} s |")
    in_s = next(r["t"] for r in job["samples"] if r["published"] >= job["requests"])
    print(f"| all requests published after (2 s samples) | {in_s:.0f} s |")
    print(f"| requests/s in (published / that time) | {job['requests'] / in_s:,.0f} |")
    print(f"| requests/s out (steady state) | {out_rate:,.0f} |")
    print(f"| ideal, {WORKERS} workers (closed form) | {WORKERS * ideal_one:,.0f} |")
    print(f"| efficiency out / ideal | {out_rate / (WORKERS * ideal_one):.3f} |")
    print(f"| peak backlog | {max(s['backlog'] for s in job['samples']):,} |")
    for col in rss_cols:
        values = [s[col] for s in job["samples"] if s[col] is not None]
        print(
            f"| RSS {col}: first / peak / last MiB | {values[0]:.0f} / {max(values):.0f} / "
            f"{values[-1]:.0f} |"
        )
    print("\n| priority | results | latency s p50 / p95 / p99 / max |")
    print("|---|---|---|")
    for lane in SHARES:
        print(f"| {lane} | {len(by_lane[lane]):,} | {percentiles(by_lane[lane])} |")
    print(
        f"\nscaling: {scaling_n:,} requests, {SCALING_SIM.step_s * 1000:.0f} ms/step, 8 partitions"
    )
    print("| workers | requests/s (steady) | per worker | vs linear | ideal |")
    print("|---|---|---|---|---|")
    for workers, rate in rates.items():
        print(
            f"| {workers} | {rate:,.0f} | {rate / workers:,.0f} | "
            f"{rate / (workers * rates[1]):.2f} | {workers * ideal_scaling:,.0f} |"
        )
    (OUT / "scale-samples.json").write_text(json.dumps(job["samples"]))
    if plot(job["samples"], ROOT / "docs" / "scale.png"):
        print("\nplot: docs/scale.png")


if __name__ == "__main__":
    main()
