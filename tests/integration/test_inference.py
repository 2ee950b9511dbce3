"""Inference workers against the real broker: exactly once through crashes and fencing."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import httpx
import pytest
from confluent_kafka import Producer

from services.codec import ASSIGNMENT, MARKER, REQUEST, codec
from services.harness.kafka import unique_topics, wait_for
from services.harness.pipeline import (
    outcomes,
    publish,
    publish_to,
    request_record,
    start_follower,
    start_worker,
)

pytestmark = pytest.mark.integration

SMALL = {"high_partitions": 1, "normal_partitions": 2, "low_partitions": 1}


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
    by_class = {}
    for letter, headers in found.dead:
        by_class.setdefault(letter["error_class"], []).append(letter)
        assert headers["kbatch-dlq-error-class"].decode() == letter["error_class"]
        assert headers["kbatch-dlq-original-topic"].decode() == topics.requests
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
    topics = unique_topics(bootstrap, **SMALL)
    records = [request_record("job-k", i, max_tokens=8) for i in range(1500)]
    publish(bootstrap, topics, records)
    # ~200 requests/s ideal: the run lasts several seconds, so the kill lands mid-run.
    options = {"SIMULATED__STEP_S": "0.01", "SIMULATED__MAX_NUM_SEQS": "8"}
    first, _ = start_worker(bootstrap, topics, tmp_path, "k1", "0-3", **options)
    wait_for(lambda: len(outcomes(bootstrap, topics, 0, timeout_s=0).results) >= 100, 60)
    first.kill()
    partial = outcomes(bootstrap, topics, 0, timeout_s=0).total
    assert partial < 1500, "the crash should land mid-run"

    second, _ = start_worker(bootstrap, topics, tmp_path, "k2", "0-3", **options)
    try:
        found = outcomes(bootstrap, topics, expect=1500, timeout_s=90)
    finally:
        assert second.terminate() == 0, second.log()
    assert found.total == 1500
    assert set(found.result_ids()) == {r["request_id"] for r in records}
    assert max(found.result_ids().values()) == 1


def test_a_zombie_whose_partitions_moved_cannot_commit(bootstrap: str, tmp_path: Path) -> None:
    topics = unique_topics(bootstrap, **SMALL)
    records = [request_record("job-z", i, max_tokens=16) for i in range(1600)]
    publish(bootstrap, topics, records)
    options = {"SIMULATED__STEP_S": "0.01", "SIMULATED__MAX_NUM_SEQS": "16"}
    zombie, zombie_url = start_worker(bootstrap, topics, tmp_path, "zombie", "0-3", **options)
    wait_for(lambda: outcomes(bootstrap, topics, 0, timeout_s=0).results, 60)
    os.kill(zombie.process.pid, signal.SIGSTOP)  # frozen mid-work, holding uncommitted results
    try:
        heir, _ = start_worker(bootstrap, topics, tmp_path, "heir", "0-3", **options)
        time.sleep(1)
        os.kill(zombie.process.pid, signal.SIGCONT)  # wakes up and tries to commit
        found = outcomes(bootstrap, topics, expect=1600, timeout_s=120)

        def zombie_was_fenced() -> bool:
            # A partition leaves the zombie when its commit is refused for the new owner's epoch.
            owned = httpx.get(f"{zombie_url}/healthz").json()["owned_partitions"]
            return len(owned) < 4 and "partition fenced by a new owner" in zombie.log()

        wait_for(zombie_was_fenced, 30)
    finally:
        os.kill(zombie.process.pid, signal.SIGCONT)
        zombie.terminate()
        assert heir.terminate() == 0, heir.log()
    assert found.total == 1600
    assert max(found.result_ids().values()) == 1
    assert set(found.result_ids()) == {r["request_id"] for r in records}


def test_sigterm_drains_commits_and_exits_zero(bootstrap: str, tmp_path: Path) -> None:
    topics = unique_topics(bootstrap, **SMALL)
    records = [request_record("job-t", i, max_tokens=20) for i in range(3000)]
    publish(bootstrap, topics, records)
    # ~80 requests/s: the SIGTERM lands with most of the job still waiting.
    options = {"SIMULATED__STEP_S": "0.01", "SIMULATED__MAX_NUM_SEQS": "16"}
    worker, _ = start_worker(bootstrap, topics, tmp_path, "t1", "0-3", **options)
    wait_for(lambda: outcomes(bootstrap, topics, 0, timeout_s=0).results, 60)
    assert worker.terminate() == 0, worker.log()
    assert "drained" in worker.log()
    after_stop = outcomes(bootstrap, topics, 0, timeout_s=0)
    assert 0 < after_stop.total < 3000

    rest, _ = start_worker(bootstrap, topics, tmp_path, "t2", "0-3", **options)
    try:
        found = outcomes(bootstrap, topics, expect=3000, timeout_s=120)
    finally:
        assert rest.terminate() == 0, rest.log()
    assert set(found.result_ids()) == {r["request_id"] for r in records}
    assert max(found.result_ids().values()) == 1


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
            return sum(r["job_id"] == "backlog" for r in found.results)

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
            "partitions": partitions,
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
