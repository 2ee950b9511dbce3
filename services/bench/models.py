"""`kbatch bench models`: what serving many models on one fleet costs.

Two figures, each a ratio to an anchor measured in the same process:
- Routing: the same job on the same two simulated workers (each serving all four
  models, each holding half of every model's normal lane), once for one model and
  once split over four, alternating, medians of `runs`. Four models mean four topics
  and four times the partitions per worker; the ratio of throughputs says what that
  costs (goal ≥ 0.95).
- Assignment: one scheduler pass for 1,000 models x 16 partitions over 500 workers
  (each model served by two workers, each worker serving four), from nothing, after
  the backlog of every partition changed, and with nothing changed (goal < 100 ms
  each, on this machine): the scheduler is not the limit of a large fleet.
Prints JSON.
"""

from __future__ import annotations

import random
import statistics
import time
from pathlib import Path
from typing import Any

import typer

from services.bench.measure import OutOption, bench_broker, emit, run_facts, steady_rate
from services.harness.kafka import read_topic, unique_topics
from services.harness.pipeline import publish_to, request_record, start_worker
from services.lanes import Lane, LaneLayout
from services.routing import RequestLayout
from services.scheduler.assignment import assign
from services.scheduler.inputs import PartitionView, Pool, WorkerView

GOAL_ROUTING_RATIO = 0.95
GOAL_PASS_MS = 100.0
MODELS = tuple(f"bench-model-{i}" for i in range(4))
# One high, eight normal, one low partition per model: the job runs in the normal lane,
# four partitions of it on each worker.
LANES = {"high_partitions": 1, "normal_partitions": 8, "low_partitions": 1}
HALVES = ("1-4", "5-8")


def timed_job(bootstrap: str, out: Path, models: tuple[str, ...], requests: int, run: int) -> float:
    """Requests per second of one job spread evenly over `models`."""
    topics = unique_topics(bootstrap, results_partitions=4, **LANES)
    name = f"models-{len(models)}-{run}"
    env = {
        "ENGINE": "simulated",
        "SERVED_MODEL_NAMES": "[" + ",".join(f'"{m}"' for m in MODELS) + "]",
    }
    workers = [
        start_worker(bootstrap, topics, out, f"{name}-{i}", half, **env)[0]
        for i, half in enumerate(HALVES)
    ]
    try:
        normal = list(topics.lane_layout().partitions(Lane.NORMAL))
        for index, model in enumerate(models):
            share = [
                {**request_record(f"job-{model}", i, max_tokens=16), "model": model}
                for i in range(index, requests, len(models))
            ]
            publish_to(bootstrap, topics, share, normal)
        stamps = [
            m.timestamp()[1] / 1000
            for m in read_topic(bootstrap, topics.results, expect=requests, timeout_s=600)
        ]
    finally:
        for worker in workers:
            worker.terminate()
    return steady_rate(stamps)


def routing(bootstrap: str, out: Path, requests: int, runs: int) -> dict[str, Any]:
    one, four = [], []
    for run in range(runs):  # alternating, so drift hits both alike
        one.append(timed_job(bootstrap, out, MODELS[:1], requests, run))
        four.append(timed_job(bootstrap, out, MODELS, requests, run))
    return {
        "requests": requests,
        "one_model_per_s": [round(r, 1) for r in one],
        "four_models_per_s": [round(r, 1) for r in four],
        "ratio": round(statistics.median(four) / statistics.median(one), 3),
        "goal_ratio": GOAL_ROUTING_RATIO,
    }


def large_fleet(
    models: int, workers: int, seed: int
) -> tuple[list[WorkerView], list[PartitionView], random.Random]:
    """`models` models of 16 partitions, each served by two of `workers` workers (each
    serving four), capacity 16; every partition's backlog 0 or up to 5,000 at random."""
    layout = RequestLayout("bench", LaneLayout(4, 8, 4))
    names = [f"model-{i:04d}" for i in range(models)]
    fleet = [
        WorkerView(
            f"worker-{w:03d}",
            Pool.DEDICATED if w % 2 else Pool.SPOT,
            16,
            frozenset(names[(2 * w + k) % models] for k in range(4)),
        )
        for w in range(workers)
    ]
    rng = random.Random(seed)
    views = [
        PartitionView(where, layout.lane_of(where), rng.choice([0, rng.randint(1, 5000)]))
        for where in layout.all_partitions(names)
    ]
    return fleet, views, rng


def assignment_pass(models: int, workers: int, repeats: int) -> dict[str, Any]:
    cold, churned, unchanged = [], [], []
    for seed in range(repeats):
        fleet, views, rng = large_fleet(models, workers, seed)
        started = time.perf_counter()
        first = assign(fleet, views, {})
        cold.append(time.perf_counter() - started)
        changed = [
            PartitionView(v.where, v.lane, rng.choice([0, rng.randint(1, 5000)])) for v in views
        ]
        started = time.perf_counter()
        second = assign(fleet, changed, first.by_worker)
        churned.append(time.perf_counter() - started)
        started = time.perf_counter()
        third = assign(fleet, changed, second.by_worker)
        unchanged.append(time.perf_counter() - started)
        if third.moved:
            raise AssertionError(f"an unchanged pass moved {len(third.moved)} partitions")

    def ms(values: list[float]) -> float:
        return round(1000 * statistics.median(values), 1)

    return {
        "models": models,
        "partitions": len(views),
        "workers": workers,
        "from_nothing_ms": ms(cold),
        "every_backlog_changed_ms": ms(churned),
        "nothing_changed_ms": ms(unchanged),
        "goal_ms": GOAL_PASS_MS,
    }


def measure(out: Path, requests: int, runs: int) -> dict[str, Any]:
    with bench_broker() as bootstrap:
        routed = routing(bootstrap, out, requests, runs)
    return {
        **run_facts(),
        "routing": routed,
        "assignment": assignment_pass(1000, 500, 5),
    }


def main(
    requests: int = typer.Option(6000, help="requests of the job"),
    runs: int = typer.Option(3, help="runs of each layout (medians reported)"),
    out: Path = OutOption,
) -> None:
    """One model against four on the same workers, and a large fleet's assignment; JSON."""
    out.mkdir(parents=True, exist_ok=True)
    emit(measure(out, requests, runs), out / "models.json")


if __name__ == "__main__":
    typer.run(main)
