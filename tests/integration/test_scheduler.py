"""The scheduler with real worker processes on the real broker (simulated engine)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx

from services.harness.kafka import unique_topics, wait_for
from services.harness.pipeline import (
    outcomes,
    owned_partitions,
    publish_to,
    request_record,
    start_follower,
    start_scheduler,
)
from services.lanes import Lane

LANES = {"high_partitions": 2, "normal_partitions": 2, "low_partitions": 2}
FAST = {"SIMULATED__STEP_S": "0.002", "SIMULATED__MAX_NUM_SEQS": "16"}


def owned_by(scheduler_url: str) -> dict[str, list[int]]:
    """The partitions of the one model each live worker reports holding."""
    owned = owned_partitions(scheduler_url)
    return {worker: sorted(p.partition for p in held) for worker, held in owned.items()}


def waiting_partitions(scheduler_url: str) -> set[int]:
    """The partitions of the one model waiting for capacity."""
    return {w["partition"] for w in assignments(scheduler_url)["waiting"]}


def assignments(scheduler_url: str) -> dict[str, Any]:
    return dict(httpx.get(f"{scheduler_url}/assignments", timeout=5).json())


def next_pass(scheduler_url: str, after_ms: int, timeout_s: float = 30) -> int:
    """The time of the first assignment pass after `after_ms`, once there is one."""

    def later() -> int:
        at = int(assignments(scheduler_url)["pass_at_ms"])
        return at if at > after_ms else 0

    return int(wait_for(later, timeout_s, f"an assignment pass after {after_ms}"))


def lane_records(job: str, lane: Lane, count: int) -> list[dict[str, Any]]:
    return [request_record(job, i, lane=lane.value, max_tokens=8) for i in range(count)]


def test_high_lane_drains_before_normal_before_low(bootstrap: str, tmp_path: Path) -> None:
    topics = unique_topics(bootstrap, **LANES)
    layout = topics.lane_layout()
    per_lane = {lane: lane_records(f"job-{lane.value}", lane, 300) for lane in Lane}
    for lane, records in per_lane.items():
        publish_to(bootstrap, topics, records, layout.partitions(lane))
    scheduler, url = start_scheduler(bootstrap, topics, tmp_path)
    # Room for one lane at a time: the order of lanes is the scheduler's alone.
    worker, _ = start_follower(bootstrap, topics, tmp_path, "d1", "dedicated", 2, **FAST)
    try:
        found = outcomes(bootstrap, topics, expect=900, timeout_s=120)
        job = wait_for(
            lambda: _job_if_counted(url, "job-low", 300), 30, "job progress never reached 300"
        )
    finally:
        assert worker.terminate() == 0, worker.log()
        assert scheduler.terminate() == 0, scheduler.log()
    assert len(found.results) == 900 and max(found.result_ids().values()) == 1
    done_at = {
        lane: sorted(r["completed_at_ms"] for r in found.results if r["priority"] == lane.value)
        for lane in Lane
    }
    assert done_at[Lane.HIGH][-1] <= done_at[Lane.NORMAL][0]
    assert done_at[Lane.NORMAL][-1] <= done_at[Lane.LOW][0]
    assert job["completed"] == 300 and job["failed"] == 0


def _job_if_counted(url: str, job_id: str, total: int) -> dict[str, Any] | None:
    job = httpx.get(f"{url}/jobs/{job_id}", timeout=5).json()
    return dict(job) if job["completed"] + job["failed"] >= total else None


def test_waiting_low_lane_is_taken_when_a_worker_joins_and_a_restart_moves_nothing(
    bootstrap: str, tmp_path: Path
) -> None:
    topics = unique_topics(bootstrap, **LANES)
    layout = topics.lane_layout()
    slow = {"SIMULATED__STEP_S": "0.02", "SIMULATED__MAX_NUM_SEQS": "4"}
    busy = [*layout.partitions(Lane.HIGH), *layout.partitions(Lane.NORMAL)]
    publish_to(bootstrap, topics, lane_records("job-busy", Lane.HIGH, 4000), busy)
    publish_to(
        bootstrap, topics, lane_records("job-low", Lane.LOW, 100), layout.partitions(Lane.LOW)
    )
    scheduler, url = start_scheduler(bootstrap, topics, tmp_path)
    dedicated, _ = start_follower(bootstrap, topics, tmp_path, "d1", "dedicated", 4, **slow)
    low = set(layout.partitions(Lane.LOW))
    spot = None
    try:
        wait_for(lambda: waiting_partitions(url) == low, 30, "low lane never waited")
        joined_at = time.monotonic()
        spot, _ = start_follower(bootstrap, topics, tmp_path, "s1", "spot", 2, **slow)
        wait_for(lambda: set(owned_by(url).get("s1", [])) == low, 30, "joined worker idle")
        assert time.monotonic() - joined_at < 20
        before = assignments(url)
        assert scheduler.terminate() == 0, scheduler.log()

        scheduler, url = start_scheduler(bootstrap, topics, tmp_path, "scheduler-2")
        first = next_pass(url, after_ms=0, timeout_s=60)
        # Two passes more: the restarted scheduler has seen every worker's heartbeat.
        next_pass(url, after_ms=next_pass(url, after_ms=first))
        after = assignments(url)
        assert after["generation"] == before["generation"]
        assert after["published"] == before["published"]
    finally:
        for process in (spot, dedicated):
            if process is not None:
                assert process.terminate() == 0, process.log()
        assert scheduler.terminate() == 0, scheduler.log()
    assert "partition released" not in dedicated.log()


def test_kill_9_worker_partitions_owned_again_and_nothing_lost(
    bootstrap: str, tmp_path: Path
) -> None:
    topics = unique_topics(bootstrap, **LANES)
    records = [request_record("job-f", i, max_tokens=16) for i in range(1000)]
    publish_to(bootstrap, topics, records, range(topics.lane_layout().total))
    scheduler, url = start_scheduler(bootstrap, topics, tmp_path)
    options = {"SIMULATED__STEP_S": "0.01", "SIMULATED__MAX_NUM_SEQS": "16"}
    victim, _ = start_follower(bootstrap, topics, tmp_path, "d1", "dedicated", 6, **options)
    heir, _ = start_follower(bootstrap, topics, tmp_path, "d2", "dedicated", 6, **options)
    try:
        wait_for(lambda: len(owned_by(url).get("d1", [])) == 3, 30, "victim never got work")
        lost = set(owned_by(url)["d1"])
        wait_for(lambda: outcomes(bootstrap, topics, 0, timeout_s=0).total > 300, 60)
        victim.kill()
        killed_at = time.monotonic()
        wait_for(lambda: lost <= set(owned_by(url).get("d2", [])), 30, "partitions not taken over")
        failover_s = time.monotonic() - killed_at
        found = outcomes(bootstrap, topics, expect=len(records), timeout_s=120)
    finally:
        assert heir.terminate() == 0, heir.log()
        assert scheduler.terminate() == 0, scheduler.log()
    assert failover_s < 4 + 5, f"failover took {failover_s:.1f}s"
    assert found.total == len(records)
    assert max(found.result_ids().values()) == 1
    assert set(found.result_ids()) == {r["request_id"] for r in records}
