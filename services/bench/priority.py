"""`kbatch bench priority`: a high job arriving at a worker saturated by a low one.

One worker holds a high partition and a low one. For each engine and run: the high
job alone on the idle, warmed-up worker (the anchor); then a low job saturates the worker, and
the same high job arrives while it runs. Figures: the high job's time beside the low
one over its time alone (goal ≤ 1.2: records already fetched or in the engine must
not hold high back), and the low job's throughput while high runs, as a share of
the records finished then (the minimum share, KBATCH_INFERENCE__LOWER_LANE_SHARE)
and against its own throughput alone, both over the steady middle of the high run
(from its 20th to its 90th percentile result). The high job is published in Kafka
transactions, as Kafka-native submissions and DLQ replays are: each leaves a commit
marker behind. Prints JSON.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import typer
from confluent_kafka import OFFSET_BEGINNING, TopicPartition

from services.bench.measure import STATE, OutOption, bench_broker, emit, run_facts
from services.codec import REQUEST, codec, results_codec
from services.harness.kafka import unique_topics, wait_for
from services.harness.pipeline import publish_to, registered, request_record, start_worker
from services.inference.settings import InferenceOptions, served_name_of
from services.kafka.consumers import ConsumerRole, make_consumer
from services.kafka.transactions import OutRecord, TransactionalProducer
from services.models.tiny import ensure_tiny_model
from services.settings import TopicSettings

HIGH, LOW = 0, 2  # partitions of one high, one normal and one low lane
GOAL_HIGH_RATIO = 1.2
LOW_WINDOW_S = 5.0  # the low job's throughput alone, measured over this long
# Output tokens per request, per engine: each high job takes about 10 s alone here.
MAX_TOKENS = {"simulated": 32, "llamacpp": 16}


class ResultClock:
    """Reads the results topic on a thread: when each job's results became visible."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self._consumer = make_consumer(
            {"bootstrap.servers": bootstrap}, ConsumerRole.COMMITTED_READER
        )
        self._consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
        self._seen: dict[str, list[float]] = defaultdict(list)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="result-clock", daemon=True)

    def __enter__(self) -> ResultClock:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        self._consumer.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            for message in self._consumer.consume(1000, 0.05):
                if message.error() is None:
                    job = results_codec().decode(message.value())["job_id"]
                    with self._lock:
                        self._seen[job].append(time.monotonic())

    def count(self, job: str, since: float = 0.0, until: float = float("inf")) -> int:
        with self._lock:
            return sum(1 for t in self._seen[job] if since <= t <= until)

    def times(self, job: str) -> list[float]:
        with self._lock:
            return sorted(self._seen[job])


def publish_in_transactions(
    bootstrap: str, topic: str, records: list[dict[str, Any]], partition: int
) -> None:
    """`records` to one partition in transactions of 500, as ingest's submissions do."""
    producer = TransactionalProducer({"bootstrap.servers": bootstrap}, f"{topic}.bench-high")
    producer.open()
    try:
        for start in range(0, len(records), 500):
            chunk = [
                OutRecord(topic, r["request_id"].encode(), codec(REQUEST).encode(r), [], partition)
                for r in records[start : start + 500]
            ]
            producer.commit(chunk, None, None)
    finally:
        producer.close()


def job_records(job: str, count: int, lane: str, model: str, tokens: int) -> list[dict[str, Any]]:
    return [
        {**request_record(job, i, lane=lane, max_tokens=tokens), "model": model}
        for i in range(count)
    ]


def timed_high_job(
    bootstrap: str, topics: TopicSettings, clock: ResultClock, records: list[dict[str, Any]]
) -> tuple[float, float]:
    """Publish a high job and wait for all its results: (published at, seconds taken)."""
    job, count = records[0]["job_id"], len(records)
    started = time.monotonic()
    model = records[0]["model"]
    registered(bootstrap, topics, [model])
    publish_in_transactions(bootstrap, topics.requests_of(model), records, HIGH)
    wait_for(lambda: clock.count(job) >= count, 900, f"the {job} job", 0.05)
    return started, clock.times(job)[-1] - started


def engine_env(engine: str) -> tuple[dict[str, str], str]:
    """The worker's settings for `engine`, and the model name it serves."""
    if engine == "simulated":
        return {"ENGINE": "simulated"}, "kbatch-sim"
    model = ensure_tiny_model(STATE / "models")
    return {"ENGINE": "llamacpp", "MODEL": str(model)}, served_name_of(str(model))


def one_run(
    bootstrap: str, out: Path, engine: str, index: int, high: int, low: int
) -> dict[str, float]:
    topics = unique_topics(
        bootstrap, high_partitions=1, normal_partitions=1, low_partitions=1, results_partitions=1
    )
    name = f"prio-{engine}-{index}"
    env, model = engine_env(engine)
    worker, _ = start_worker(bootstrap, topics, out, name, f"{HIGH},{LOW}", **env)
    try:
        with ResultClock(bootstrap, topics.results) as clock:
            # Warm first: the anchor must not pay the engine's first requests.
            timed_high_job(bootstrap, topics, clock, job_records("warm", 100, "high", model, 4))
            alone = job_records("alone", high, "high", model, MAX_TOKENS[engine])
            _, alone_s = timed_high_job(bootstrap, topics, clock, alone)
            low_job = job_records("low", low, "low", model, MAX_TOKENS[engine])
            publish_to(bootstrap, topics, low_job, [LOW])
            wait_for(lambda: clock.count("low") >= 50, 300, "the low job under way", 0.05)
            window_start = time.monotonic()
            time.sleep(LOW_WINDOW_S)  # a measuring window, not a wait for a condition
            low_alone = clock.count("low", since=window_start) / LOW_WINDOW_S
            beside = job_records("beside", high, "high", model, MAX_TOKENS[engine])
            started, beside_s = timed_high_job(bootstrap, topics, clock, beside)
            low_during = clock.count("low", since=started, until=started + beside_s)
            # The steady part of the high run: past the low requests that were already
            # in the engine when it arrived, before its tail.
            high_times = clock.times("beside")
            since, until = high_times[len(high_times) // 5], high_times[9 * len(high_times) // 10]
            low_steady = clock.count("low", since, until)
            high_steady = clock.count("beside", since, until)
    finally:
        worker.terminate()
    return {
        "high_alone_s": round(alone_s, 2),
        "high_beside_low_s": round(beside_s, 2),
        "high_ratio": round(beside_s / alone_s, 3),
        "low_alone_per_s": round(low_alone, 1),
        "low_finished_during_high": low_during,
        "low_beside_high_per_s": round(low_steady / (until - since), 1),
        "low_share": round(low_steady / (low_steady + high_steady), 4),
    }


def summary(runs: list[dict[str, float]]) -> dict[str, float]:
    return {
        f"median_{key}": round(statistics.median(r[key] for r in runs), 4)
        for key in ("high_ratio", "low_share", "low_beside_high_per_s", "low_alone_per_s")
    }


def measure(out: Path, engines: list[str], runs: int, high: int, low: int) -> dict[str, Any]:
    results: dict[str, Any] = {}
    with bench_broker() as bootstrap:
        for engine in engines:
            rows = [one_run(bootstrap, out, engine, i, high, low) for i in range(runs)]
            results[engine] = {"max_tokens": MAX_TOKENS[engine], "runs": rows, **summary(rows)}
    return {
        **run_facts(),
        "lower_lane_share": InferenceOptions().lower_lane_share,
        "high_requests": high,
        "low_requests": low,
        "goal_high_ratio": GOAL_HIGH_RATIO,
        "engines": results,
    }


def main(
    engine: list[str] = typer.Option(["simulated", "llamacpp"], help="engines to measure"),
    runs: int = typer.Option(3, help="runs per engine (medians reported)"),
    high: int = typer.Option(2000, help="requests of the high job"),
    low: int = typer.Option(20000, help="requests of the low job that saturates the worker"),
    out: Path = OutOption,
) -> None:
    """A high job arriving at a worker saturated by a low one, against it alone; JSON."""
    out.mkdir(parents=True, exist_ok=True)
    emit(measure(out, engine, runs, high, low), out / "priority.json")


if __name__ == "__main__":
    typer.run(main)
