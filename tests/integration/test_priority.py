"""Priority lanes behind transactional producers, on a worker that holds several lanes.

Every Kafka transaction ends with a commit marker, a record that takes an offset and is
never delivered; an aborted transaction leaves its records and an abort marker behind.
Counted as backlog, one marker in a high partition held every lower lane of its worker
back for good. Here the high lane is written the ways kbatch itself writes in
transactions (Kafka-native submissions through ingest, `kbatch dlq replay`), and by a
transactional producer killed -9 mid-transaction: the low job must finish right after.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import httpx
import openai
import pytest

from services.harness.kafka import unique_topics, wait_for
from services.harness.pipeline import (
    batch_line,
    outcomes,
    publish_to,
    request_record,
    shared_env,
    start_ingest_process,
    start_worker,
)
from services.harness.ports import free_port
from services.kafka.lag import GroupBacklog
from services.settings import TopicSettings
from tests.integration.test_batch_api import upload, wait_status
from tests.integration.test_dlq_replay import kbatch
from tests.integration.test_stack import down, rows, stack_env, start_up, wait_all_running
from tests.integration.test_submissions import KCAT, kcat_produce

pytestmark = pytest.mark.integration

LANES = {"high_partitions": 1, "normal_partitions": 2, "low_partitions": 1}
HIGH, LOW = 0, 3  # the partitions of those lanes in LANES
BOTH = f"{HIGH},{LOW}"
FAST = {"SIMULATED__STEP_S": "0.005", "SIMULATED__MAX_NUM_SEQS": "8"}
# A low job this size runs in about a second at FAST: "right after" leaves it ten.
RIGHT_AFTER_S = 10.0


def completion_times(
    bootstrap: str, topics: TopicSettings, jobs: dict[str, int], timeout_s: float
) -> dict[str, float]:
    """When each job (id: request count) had every one of its results committed."""
    done: dict[str, float] = {}

    def all_done() -> bool:
        counts = Counter(r["job_id"] for r in outcomes(bootstrap, topics, 0, timeout_s=0).results)
        for job, count in jobs.items():
            if job not in done and counts[job] >= count:
                done[job] = time.monotonic()
        return len(done) == len(jobs)

    try:
        wait_for(all_done, timeout_s, "every job's results", interval_s=0.3)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; finished: {sorted(done)} of {sorted(jobs)}") from exc
    return done


def submit_job(bootstrap: str, topics: TopicSettings, job: str, lane: str, count: int) -> None:
    """A Kafka-native job through kcat: `count` lines, the last one sealing it."""
    lines = [batch_line(f"{job}-{i}", max_tokens=4) for i in range(count)]
    headers = (f"kbatch-job={job}", f"kbatch-priority={lane}")
    kcat_produce(bootstrap, topics.submissions, lines[:-1], *headers, key=job)
    kcat_produce(bootstrap, topics.submissions, lines[-1:], *headers, "kbatch-seal=true", key=job)


def assert_low_right_after_high(done: dict[str, float], high: str, low: str) -> None:
    assert done[low] - done[high] < RIGHT_AFTER_S, done


@pytest.mark.skipif(KCAT is None, reason="kcat not installed (Debian package kcat)")
def test_low_job_finishes_right_after_a_high_job_submitted_through_kafka(
    bootstrap: str, tmp_path: Path
) -> None:
    """Ingest publishes Kafka-native submissions in transactions: a marker closes each."""
    topics = unique_topics(bootstrap, **LANES)
    ingest, _ = start_ingest_process(
        {**shared_env(bootstrap, topics), "KBATCH_INGEST__HTTP_PORT": str(free_port())},
        tmp_path / "ingest.log",
    )
    worker = None
    try:
        worker, _ = start_worker(bootstrap, topics, tmp_path, "w", BOTH, **FAST)
        submit_job(bootstrap, topics, "sub-high", "high", 300)
        submit_job(bootstrap, topics, "sub-low", "low", 300)
        done = completion_times(bootstrap, topics, {"sub-high": 300, "sub-low": 300}, 90)
    finally:
        if worker is not None:
            assert worker.terminate() == 0, worker.log()
        assert ingest.terminate() == 0, ingest.log()
    assert_low_right_after_high(done, "sub-high", "sub-low")


def test_low_job_finishes_right_after_a_replayed_high_job(bootstrap: str, tmp_path: Path) -> None:
    """`kbatch dlq replay` republishes dead letters in transactions."""
    topics = unique_topics(bootstrap, **LANES)
    high = [request_record("replayed", i, lane="high", max_tokens=40) for i in range(1000)]
    publish_to(bootstrap, topics, high, [HIGH])
    # A worker whose engine holds 32 tokens dead-letters every one of them.
    narrow, _ = start_worker(
        bootstrap, topics, tmp_path, "narrow", str(HIGH), SIMULATED__MAX_MODEL_LEN="32", **FAST
    )
    try:
        found = outcomes(bootstrap, topics, expect=len(high), timeout_s=60)
    finally:
        assert narrow.terminate() == 0, narrow.log()
    assert len(found.dead) == len(high)
    env = {**shared_env(bootstrap, topics), "KBATCH_LOG_LEVEL": "WARNING", "COLUMNS": "300"}
    replayed = kbatch(env, "dlq", "replay")
    assert f"{len(high)} to replay" in " ".join(replayed.split())
    worker, _ = start_worker(bootstrap, topics, tmp_path, "w", BOTH, **FAST)
    try:
        # The low job arrives while the replayed one runs (about 2.5 s): behind it.
        wait_for(lambda: outcomes(bootstrap, topics, 0, timeout_s=0).results, 30, "a result")
        low = [request_record("low", i, lane="low", max_tokens=4) for i in range(600)]
        publish_to(bootstrap, topics, low, [LOW])
        done = completion_times(bootstrap, topics, {"replayed": len(high), "low": len(low)}, 90)
    finally:
        assert worker.terminate() == 0, worker.log()
    assert_low_right_after_high(done, "replayed", "low")


# A transactional producer that commits `committed` high requests, then writes `aborted`
# more in a second transaction and is killed -9 before it ends: the broker aborts that
# transaction once its timeout passes, leaving the records and an abort marker.
KILLED_PRODUCER = """
import os, signal, sys
from confluent_kafka import Producer
from services.codec import REQUEST, codec
from services.harness.pipeline import request_record
bootstrap, topic, committed, aborted = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
producer = Producer({
    "bootstrap.servers": bootstrap,
    "transactional.id": topic + ".killed",
    "transaction.timeout.ms": 2000,
})
producer.init_transactions(30)
def send(start, count):
    producer.begin_transaction()
    for i in range(start, start + count):
        record = request_record("tail", i, lane="high", max_tokens=4)
        producer.produce(topic, codec(REQUEST).encode(record), partition=0)
send(0, committed)
producer.commit_transaction(30)
send(committed, aborted)
assert producer.flush(30) == 0
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_low_job_finishes_past_an_aborted_tail_in_the_high_lane(
    bootstrap: str, tmp_path: Path
) -> None:
    topics = unique_topics(bootstrap, **LANES)
    worker, _ = start_worker(bootstrap, topics, tmp_path, "w", BOTH, **FAST)
    try:
        killed = subprocess.run(
            [
                sys.executable,
                "-c",
                KILLED_PRODUCER,
                bootstrap,
                topics.requests_of("kbatch-sim"),
                "100",
                "50",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert killed.returncode == -signal.SIGKILL, killed.stderr
        low = [request_record("low", i, lane="low", max_tokens=4) for i in range(300)]
        publish_to(bootstrap, topics, low, [LOW])
        # The open transaction holds the high lane's last stable offset until the
        # broker aborts it (timeout 2 s, checked every 10 s): nothing past it waits.
        done = completion_times(bootstrap, topics, {"tail": 100, "low": len(low)}, 90)
        assert_low_right_after_high(done, "tail", "low")
        more = [request_record("after", i, lane="low", max_tokens=4) for i in range(100)]
        wait_for(lambda: _aborted(bootstrap, topics), 40, "the broker aborting the transaction")
        publish_to(bootstrap, topics, more, [LOW])
        completion_times(bootstrap, topics, {"after": len(more)}, 30)
    finally:
        assert worker.terminate() == 0, worker.log()
    found = outcomes(bootstrap, topics, 0, timeout_s=0)
    assert Counter(r["job_id"] for r in found.results) == {"tail": 100, "low": 300, "after": 100}


def _aborted(bootstrap: str, topics: TopicSettings) -> bool:
    """Whether the high partition's last stable offset passed the aborted records."""
    with GroupBacklog({"bootstrap.servers": bootstrap}, f"{topics.prefix}-probe") as reader:
        [end] = reader.end_offsets(topics.requests_of("kbatch-sim"), [HIGH], 5).values()
    # 100 records and a commit marker, 50 aborted records and an abort marker.
    return end >= 152


@pytest.mark.skipif(KCAT is None, reason="kcat not installed (Debian package kcat)")
def test_up_runs_every_lane_from_http_and_kafka_to_the_end(bootstrap: str, tmp_path: Path) -> None:
    """What a newcomer gets from `kbatch up`: the default lanes (4 high, 8 normal, 4 low
    partitions) over two dedicated workers, so each holds every lane; batches at each
    priority through the official client and Kafka-native jobs (transactions) at high
    and low, all at once. Every one ends, and the scheduler's backlog reads 0 after."""
    defaults = TopicSettings()
    env = {
        **stack_env(bootstrap),
        "KBATCH_TOPICS__HIGH_PARTITIONS": str(defaults.high_partitions),
        "KBATCH_TOPICS__NORMAL_PARTITIONS": str(defaults.normal_partitions),
        "KBATCH_TOPICS__LOW_PARTITIONS": str(defaults.low_partitions),
        "KBATCH_INFERENCE__SIMULATED__STEP_S": "0.005",
    }
    topics = TopicSettings(prefix=env["KBATCH_TOPICS__PREFIX"])
    data_dir = tmp_path / "stack"
    up = start_up(env, data_dir, tmp_path / "up.log")
    try:
        state = wait_all_running(env, data_dir, up)
        client = openai.OpenAI(base_url=state["openai_base_url"], api_key="unused", max_retries=0)
        batches = {
            lane: client.batches.create(
                input_file_id=upload(
                    client, tmp_path, [batch_line(f"{lane}-{i}", max_tokens=4) for i in range(400)]
                ),
                endpoint="/v1/chat/completions",
                completion_window="24h",
                extra_body={"priority": lane},
            )
            for lane in ("high", "normal", "low")
        }
        for batch in batches.values():  # every line published: what follows comes after
            wait_status(client, batch.id, {"in_progress", "finalizing", "completed"}, 60)
        # Kafka-native jobs last, so a transaction's commit marker ends each high partition.
        kafka_jobs = {"kafka-high": "high", "kafka-low": "low"}
        for job, lane in kafka_jobs.items():
            submit_job(bootstrap, topics, job, lane, 400)
        for lane, batch in batches.items():
            ended = wait_status(client, batch.id, {"completed", "failed", "expired"}, 120)
            assert ended.status == "completed", (lane, ended)
            assert (ended.request_counts.completed, ended.request_counts.failed) == (400, 0)
        completion_times(bootstrap, topics, dict.fromkeys(kafka_jobs, 400), 60)
        scheduler = rows(state)["scheduler"]["url"]

        def drained() -> dict[tuple[str, int], int] | None:
            listed = httpx.get(f"{scheduler}/assignments", timeout=5).json()["backlog"]
            backlog = {(r["model"], r["partition"]): r["requests"] for r in listed}
            return backlog if backlog and not any(backlog.values()) else None

        wait_for(drained, 30, "the scheduler's backlog reading 0 everywhere", 0.5)
        down(env, data_dir, up)
    finally:
        up.terminate()
