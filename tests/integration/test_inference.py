"""Inference workers against the real broker: exactly once through crashes and fencing."""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from confluent_kafka import Producer

from services.codec import ASSIGNMENT, MARKER, REQUEST, codec
from services.harness.kafka import unique_topics, wait_for
from services.harness.pipeline import (
    Outcomes,
    outcomes,
    publish,
    publish_to,
    request_record,
    start_follower,
    start_worker,
)
from services.harness.processes import ServiceProcess
from services.settings import TopicSettings

pytestmark = pytest.mark.integration

SMALL = {"high_partitions": 1, "normal_partitions": 2, "low_partitions": 1}


@dataclass
class JobUnderWay:
    """A job published over every partition of fresh topics, one worker on it, results
    already coming out."""

    topics: TopicSettings
    records: list[dict[str, Any]]
    worker: ServiceProcess
    worker_url: str
    options: dict[str, str]

    def finished_by(
        self, bootstrap: str, tmp_path: Path, name: str, timeout_s: float = 120
    ) -> None:
        """Another worker takes the job over; every request ends exactly once. It runs
        ten times as fast: what is tested is what it finds, not how long it takes."""
        fast = {**self.options, "SIMULATED__STEP_S": "0.001"}
        heir, _ = start_worker(bootstrap, self.topics, tmp_path, name, "0-3", **fast)
        try:
            found = outcomes(bootstrap, self.topics, expect=len(self.records), timeout_s=timeout_s)
        finally:
            assert heir.terminate() == 0, heir.log()
        self.ended_once(found)

    def ended_once(self, found: Outcomes) -> None:
        assert found.total == len(self.records)
        assert set(found.result_ids()) == {r["request_id"] for r in self.records}
        assert max(found.result_ids().values()) == 1


def start_job(
    bootstrap: str, tmp_path: Path, job: str, count: int, max_tokens: int, seqs: int, first: int
) -> JobUnderWay:
    """`count` requests, a worker stepping every 10 ms over `seqs` sequences; returns
    once `first` results are committed."""
    topics = unique_topics(bootstrap, **SMALL)
    records = [request_record(job, i, max_tokens=max_tokens) for i in range(count)]
    publish(bootstrap, topics, records)
    options = {"SIMULATED__STEP_S": "0.01", "SIMULATED__MAX_NUM_SEQS": str(seqs)}
    worker, url = start_worker(bootstrap, topics, tmp_path, f"{job}-1", "0-3", **options)
    wait_for(lambda: len(outcomes(bootstrap, topics, 0, timeout_s=0).results) >= first, 60)
    return JobUnderWay(topics, records, worker, url, options)


def test_each_request_ends_exactly_once_as_result_or_dead_letter(
    bootstrap: str, tmp_path: Path
) -> None:
    topics = unique_topics(bootstrap, **SMALL)
    records = [request_record("job-eo", i, max_tokens=4) for i in range(300)]
    too_long = request_record("job-eo", 999, max_tokens=5000)  # over max_model_len=4096
    truncated = codec(REQUEST).encode(request_record("job-eo", 1000))[:-3]
    unknown_schema = MARKER + b"\x01" * 8 + b"payload"
    publish(
        bootstrap, topics, [*records, too_long], raw=[os.urandom(64), truncated, unknown_schema]
    )

    worker, _ = start_worker(
        bootstrap,
        topics,
        tmp_path,
        "w1",
        "0-3",
        SIMULATED__STEP_S="0.002",
        SIMULATED__FAULT_TRANSIENT_RATE="0.2",
        MAX_ATTEMPTS="3",
    )
    try:
        found = outcomes(bootstrap, topics, expect=304)
    finally:
        assert worker.terminate() == 0, worker.log()

    assert found.total == 304
    assert max(found.result_ids().values()) == 1
    assert all(r["engine"] == "simulated" for r in found.results)
    assert all(r["output"]["text"].startswith("[simulated]") for r in found.results)
    by_class: dict[str, list[dict[str, Any]]] = {}
    for letter, headers in found.dead:
        by_class.setdefault(letter["error_class"], []).append(letter)
        assert headers["kbatch-dlq-error-class"].decode() == letter["error_class"]
        assert headers["kbatch-dlq-original-topic"].decode() == topics.requests_of("kbatch-sim")
        assert letter["original_value"] is not None
    assert len(by_class["DecodeError"]) == 3  # random bytes, truncated Avro, unknown schema
    assert [d["custom_id"] for d in by_class["InvalidRequestError"]] == ["job-eo-999"]
    # Transient faults at 20% per try with 3 tries: nearly all succeed, some exhaust.
    exhausted = by_class.get("TransientEngineError", [])
    assert all(d["stage"] == "retries_exhausted" and d["attempt"] == 3 for d in exhausted)
    ids = set(found.result_ids()) | {
        d["request_id"] for d in by_class.get("TransientEngineError", [])
    }
    assert ids == {r["request_id"] for r in records}
    # The DLQ keeps the original bytes unchanged.
    decoded_again = codec(REQUEST).decode(by_class["InvalidRequestError"][0]["original_value"])
    assert decoded_again["custom_id"] == "job-eo-999"


def test_kill_9_mid_run_then_restart_loses_and_duplicates_nothing(
    bootstrap: str, tmp_path: Path
) -> None:
    # ~200 requests/s ideal: the run lasts several seconds, so the kill lands mid-run.
    job = start_job(bootstrap, tmp_path, "job-k", 1500, max_tokens=8, seqs=8, first=100)
    job.worker.kill()
    partial = outcomes(bootstrap, job.topics, 0, timeout_s=0).total
    assert partial < 1500, "the crash should land mid-run"
    job.finished_by(bootstrap, tmp_path, "k2", timeout_s=90)


def test_a_zombie_whose_partitions_moved_cannot_commit(bootstrap: str, tmp_path: Path) -> None:
    job = start_job(bootstrap, tmp_path, "job-z", 1600, max_tokens=16, seqs=16, first=1)
    zombie = job.worker
    os.kill(zombie.process.pid, signal.SIGSTOP)  # frozen mid-work, holding uncommitted results
    try:
        # Ten times as fast, as in `finished_by`: what is tested is the fencing, not speed.
        fast = {**job.options, "SIMULATED__STEP_S": "0.001"}
        heir, heir_url = start_worker(bootstrap, job.topics, tmp_path, "heir", "0-3", **fast)

        def heir_owns_all() -> bool:
            # Taking a partition runs init_transactions, which fences the zombie's producer.
            return len(httpx.get(f"{heir_url}/healthz").json()["owned_partitions"]) == 4

        wait_for(heir_owns_all, 60, "the heir taking every partition")
        os.kill(zombie.process.pid, signal.SIGCONT)  # wakes up and tries to commit
        found = outcomes(bootstrap, job.topics, expect=1600, timeout_s=120)

        def zombie_was_fenced() -> bool:
            # A partition leaves the zombie when its commit is refused for the new owner's epoch.
            owned = httpx.get(f"{job.worker_url}/healthz").json()["owned_partitions"]
            return len(owned) < 4 and "partition fenced by a new owner" in zombie.log()

        wait_for(zombie_was_fenced, 30)
    finally:
        os.kill(zombie.process.pid, signal.SIGCONT)
        zombie.terminate()
        assert heir.terminate() == 0, heir.log()
    job.ended_once(found)


def test_sigterm_drains_commits_and_exits_zero(bootstrap: str, tmp_path: Path) -> None:
    # ~80 requests/s: the SIGTERM lands with most of the job still waiting.
    job = start_job(bootstrap, tmp_path, "job-t", 1000, max_tokens=20, seqs=16, first=1)
    assert job.worker.terminate() == 0, job.worker.log()
    assert "drained" in job.worker.log()
    after_stop = outcomes(bootstrap, job.topics, 0, timeout_s=0)
    assert 0 < after_stop.total < 1000
    job.finished_by(bootstrap, tmp_path, "t2")


def test_high_lane_records_overtake_a_prefetched_normal_backlog(
    bootstrap: str, tmp_path: Path
) -> None:
    """The lane gate sees new high records even while librdkafka's prefetch queue is
    full of normal ones: no partition is fetched then, so cached end offsets stand
    still (a 64 KiB queue here stands in for 16 MiB under a 100K-record backlog)."""
    topics = unique_topics(bootstrap, high_partitions=1, normal_partitions=2, low_partitions=1)
    normal = [request_record("backlog", i, lane="normal", max_tokens=8) for i in range(3000)]
    publish_to(bootstrap, topics, normal, [1, 2])
    worker, _ = start_worker(
        bootstrap,
        topics,
        tmp_path,
        "gate",
        "0-2",
        SIMULATED__STEP_S="0.02",
        SIMULATED__MAX_NUM_SEQS="8",
        QUEUED_MAX_KBYTES="64",
    )
    try:
        wait_for(lambda: outcomes(bootstrap, topics, 0, timeout_s=0).total >= 100, 60)
        urgent = [request_record("urgent", i, lane="high", max_tokens=8) for i in range(100)]
        publish_to(bootstrap, topics, urgent, [0])

        def urgent_done() -> int | None:
            found = outcomes(bootstrap, topics, 0, timeout_s=0)
            if sum(r["job_id"] == "urgent" for r in found.results) < len(urgent):
                return None
            return sum(1 for r in found.results if r["job_id"] == "backlog")

        backlog_done = wait_for(urgent_done, 120, "the high records")
    finally:
        assert worker.terminate() == 0, worker.log()
    # Without the gate seeing them they would finish after the normal backlog.
    assert backlog_done < len(normal) - 1000, backlog_done


def test_a_partition_released_and_taken_back_flows_again(bootstrap: str, tmp_path: Path) -> None:
    """librdkafka keeps a pause across unassign/assign; releasing pauses a partition."""
    topics = unique_topics(bootstrap, high_partitions=1, normal_partitions=1, low_partitions=1)
    worker, _ = start_follower(bootstrap, topics, tmp_path, "back", "dedicated", 3)
    producer = Producer({"bootstrap.servers": bootstrap})

    def assign(generation: int, partitions: list[int]) -> None:
        record = {
            "worker_id": "back",
            "generation": generation,
            "partitions": [],
            "model_partitions": [{"model": "kbatch-sim", "partition": p} for p in partitions],
            "assigned_at_ms": int(time.time() * 1000),
        }
        producer.produce(topics.assignments, codec(ASSIGNMENT).encode(record), key=b"back")
        assert producer.flush(10) == 0

    try:
        first = [request_record("back", i, max_tokens=4) for i in range(50)]
        publish_to(bootstrap, topics, first, [1])
        assign(1, [1])
        wait_for(lambda: outcomes(bootstrap, topics, 0, timeout_s=0).total >= 50, 60)
        assign(2, [])
        wait_for(lambda: "partition released" in worker.log(), 30, "the release")
        second = [request_record("back", i, max_tokens=4) for i in range(50, 100)]
        publish_to(bootstrap, topics, second, [1])
        assign(3, [1])
        found = outcomes(bootstrap, topics, expect=100, timeout_s=60)
    finally:
        assert worker.terminate() == 0, worker.log()
    assert found.total == 100, f"{100 - found.total} records never consumed after the take-back"
