"""Kafka-native submissions written by a producer no one here wrote (Debian's kcat):
every valid line yields exactly one result, every bad one a rejection with its reason,
and the job's totals count both."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections import Counter
from pathlib import Path

import pytest

from services.codec import JOB, REQUEST, codec
from services.harness.kafka import read_topic, unique_topics, wait_for
from services.harness.pipeline import batch_line, outcomes, shared_env, start_worker
from services.harness.ports import free_port
from services.harness.processes import ServiceProcess

pytestmark = pytest.mark.integration

KCAT = shutil.which("kcat")
VALID = 60


def kcat_produce(
    bootstrap: str, topic: str, lines: list[str], *headers: str, key: str | None = None
) -> None:
    """One kcat run: each line a record (keyed `key`: one job's lines stay in order on
    one partition), every header on each."""
    assert KCAT is not None
    command = [KCAT, "-P", "-b", bootstrap, "-t", topic, "-z", "snappy"]
    for header in headers:
        command += ["-H", header]
    if key is not None:
        command += ["-K", "\t"]
        lines = [f"{key}\t{line}" for line in lines]
    done = subprocess.run(
        command, input="\n".join(lines) + "\n", text=True, capture_output=True, timeout=60
    )
    assert done.returncode == 0, done.stderr


@pytest.mark.skipif(KCAT is None, reason="kcat not installed (Debian package kcat)")
def test_kcat_submissions_become_one_result_or_one_reason_each(
    bootstrap: str, tmp_path: Path
) -> None:
    topics = unique_topics(bootstrap, high_partitions=1, normal_partitions=2, low_partitions=1)
    port = free_port()
    ingest = ServiceProcess(
        ["ingest"],
        {**shared_env(bootstrap, topics), "KBATCH_INGEST__HTTP_PORT": str(port)},
        tmp_path / "ingest.log",
    )
    worker = None
    try:
        ingest.wait_healthy(f"http://127.0.0.1:{port}/healthz")
        worker, _ = start_worker(bootstrap, topics, tmp_path, "w", "0-3")
        valid = [batch_line(f"ok-{i}", max_tokens=4) for i in range(VALID)]
        hostile = {
            "invalid_json": '{"custom_id": "broken", ',
            "model_not_found": batch_line("who", model="no-such-model"),
            "duplicate_custom_id": batch_line("ok-0"),
            "invalid_line": json.dumps({"custom_id": "x", "method": "GET", "url": "/", "body": {}}),
        }
        job = ["kbatch-job=kcat-job", "kbatch-priority=high", "kbatch-tenant=acme"]
        into = {"key": "kcat-job"}
        kcat_produce(bootstrap, topics.submissions, valid[:30], *job, **into)
        kcat_produce(
            bootstrap, topics.submissions, [*hostile.values(), *valid[30:-1]], *job, **into
        )
        kcat_produce(bootstrap, topics.submissions, valid[-1:], *job, "kbatch-seal=true", **into)
        kcat_produce(bootstrap, topics.submissions, [batch_line("late")], *job, **into)
        kcat_produce(bootstrap, topics.submissions, [batch_line("orphan")])  # no job header
        hostile["job_sealed"] = "late"
        found = outcomes(bootstrap, topics, expect=VALID, timeout_s=90)
        assert found.result_ids() and max(found.result_ids().values()) == 1
        assert sorted(r["custom_id"] for r in found.results) == sorted(
            f"ok-{i}" for i in range(VALID)
        )
        assert {r["priority"] for r in found.results} == {"high"}
        assert {r["tenant"] for r in found.results} == {"acme"}

        rejections = [
            json.loads(m.value() or b"")
            for m in read_topic(bootstrap, topics.rejections, expect=len(hostile) + 1)
        ]
        codes = Counter(r["code"] for r in rejections)
        assert codes == Counter([*hostile, "invalid_envelope"]), rejections
        assert all(
            r["reason"] and r["submission"].startswith(topics.submissions) for r in rejections
        )

        def totals() -> dict[str, object] | None:
            records = [
                codec(JOB).decode(m.value())
                for m in read_topic(bootstrap, topics.jobs, timeout_s=5)
                if m.key() == b"kcat-job"
            ]
            last = records[-1] if records else None
            done = last and last["accepted"] + last["rejected"] == VALID + len(hostile)
            return last if done else None

        last = wait_for(totals, 30, "the job's totals")
        assert (last["accepted"], last["rejected"]) == (VALID, len(hostile))
        assert (last["sealed"], last["tenant"]) == (True, "acme")
    finally:
        if worker is not None:
            assert worker.terminate() == 0, worker.log()
        assert ingest.terminate() == 0, ingest.log()


@pytest.mark.skipif(KCAT is None, reason="kcat not installed (Debian package kcat)")
def test_an_ingest_killed_mid_submissions_publishes_each_line_once(
    bootstrap: str, tmp_path: Path
) -> None:
    topics = unique_topics(bootstrap, high_partitions=1, normal_partitions=2, low_partitions=1)
    lines = [batch_line(f"k-{i}", max_tokens=2) for i in range(6000)]
    kcat_produce(bootstrap, topics.submissions, lines, "kbatch-job=crash-job", key="crash-job")
    env = {
        **shared_env(bootstrap, topics),
        "KBATCH_INGEST__HTTP_PORT": str(free_port()),
        # No worker yet: the consumer pauses near this backlog, so the kill lands mid-job.
        "KBATCH_INGEST__LANE_BACKLOG_LIMIT": "1500",
    }
    first = ServiceProcess(["ingest"], env, tmp_path / "ingest-1.log")
    wait_for(lambda: "submissions paused" in first.log(), 60, "the consumer pausing")
    first.kill()  # whatever it had open is aborted when the next consumer takes over
    published = len(read_topic(bootstrap, topics.requests_of("kbatch-sim"), timeout_s=5))
    assert 0 < published < len(lines), published
    second = ServiceProcess(["ingest"], env, tmp_path / "ingest-2.log")
    worker = None
    try:
        worker, _ = start_worker(bootstrap, topics, tmp_path, "w", "0-3")
        found = outcomes(bootstrap, topics, expect=len(lines), timeout_s=120)
    finally:
        if worker is not None:
            assert worker.terminate() == 0, worker.log()
        assert second.terminate() == 0, second.log()
    assert found.total == len(lines)
    assert max(found.result_ids().values()) == 1
    assert {r["custom_id"] for r in found.results} == {f"k-{i}" for i in range(len(lines))}


@pytest.mark.skipif(KCAT is None, reason="kcat not installed (Debian package kcat)")
def test_a_tenant_over_its_queued_limit_is_refused_line_by_line_and_others_go_on(
    bootstrap: str, tmp_path: Path
) -> None:
    """No worker runs, so nothing finishes: acme's lines past its limit of 10 queued
    requests are rejected with the reason; beta, on the same partition, is unaffected."""
    topics = unique_topics(bootstrap, high_partitions=1, normal_partitions=1, low_partitions=1)
    env = {
        **shared_env(bootstrap, topics),
        "KBATCH_INGEST__HTTP_PORT": str(free_port()),
        "KBATCH_INGEST__MAX_QUEUED_REQUESTS_PER_TENANT": "10",
    }
    ingest = ServiceProcess(["ingest"], env, tmp_path / "ingest.log")
    try:
        acme = [batch_line(f"a-{i}") for i in range(14)]
        beta = [batch_line(f"b-{i}") for i in range(3)]
        into = {"key": "shared"}  # one partition: a pause would stall beta too
        kcat_produce(
            bootstrap, topics.submissions, acme, "kbatch-job=acme-job", "kbatch-tenant=acme", **into
        )
        kcat_produce(
            bootstrap, topics.submissions, beta, "kbatch-job=beta-job", "kbatch-tenant=beta", **into
        )
        rejections = [
            json.loads(m.value() or b"")
            for m in read_topic(bootstrap, topics.rejections, expect=4, timeout_s=60)
        ]
        assert sorted(r["custom_id"] for r in rejections) == [f"a-{i}" for i in range(10, 14)]
        assert {r["code"] for r in rejections} == {"tenant_queue_limit_exceeded"}
        assert all("acme" in r["reason"] and "10" in r["reason"] for r in rejections)
        published = read_topic(bootstrap, topics.requests_of("kbatch-sim"), expect=13, timeout_s=60)
        beyond = read_topic(
            bootstrap, topics.requests_of("kbatch-sim"), timeout_s=3
        )  # and none past those
        assert len(beyond) == len(published)
        requests = [codec(REQUEST).decode(m.value()) for m in published]
        assert Counter(r["tenant"] for r in requests) == {"acme": 10, "beta": 3}
        assert {r["custom_id"] for r in requests if r["tenant"] == "acme"} == {
            f"a-{i}" for i in range(10)
        }
    finally:
        assert ingest.terminate() == 0, ingest.log()
