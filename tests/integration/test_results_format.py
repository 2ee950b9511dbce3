"""KBATCH_TOPICS__RESULTS_FORMAT=json: results that tools with no Avro decoder read (Debian's
kcat, jq), and that kbatch's own readers read alongside Avro ones on the same topic."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest

from services.client.results import job_result_lines
from services.codec import MARKER
from services.harness.kafka import read_topic, unique_topics, wait_for
from services.harness.pipeline import (
    Outcomes,
    batch_line,
    ingest_env,
    outcomes,
    publish,
    request_record,
    start_follower,
    start_ingest_process,
    start_scheduler,
    start_worker,
    submit_batch,
)
from services.harness.processes import ServiceProcess, stop_all
from services.resources import data_dir
from services.settings import TopicSettings

pytestmark = pytest.mark.integration

KCAT = shutil.which("kcat")
JQ = shutil.which("jq")
SMALL = {"high_partitions": 1, "normal_partitions": 2, "low_partitions": 1}
# What jq keeps of each result line: a missing field would show as null.
PROJECTION = (
    "{request_id, job_id, custom_id, priority, model, engine, worker_id, error,"
    " text: .output.text, usage, attempt, source_partition, completed_at_ms}"
)


def json_topics(bootstrap: str) -> TopicSettings:
    return unique_topics(bootstrap, **SMALL).model_copy(update={"results_format": "json"})


def run_job(
    bootstrap: str,
    topics: TopicSettings,
    tmp_path: Path,
    job: str,
    count: int,
    raw: int = 0,
    earlier: int = 0,
) -> tuple[list[dict[str, Any]], Outcomes]:
    """`count` requests (and `raw` undecodable ones) through one worker, until they and
    the `earlier` outcomes already on the topics are committed."""
    records = [request_record(job, i, max_tokens=4) for i in range(count)]
    publish(bootstrap, topics, records, raw=[b"not a request"] * raw)
    worker, _ = start_worker(
        bootstrap, topics, tmp_path, f"{job}-worker", "0-3", SIMULATED__STEP_S="0.001"
    )
    try:
        found = outcomes(bootstrap, topics, expect=earlier + count + raw)
    finally:
        assert worker.terminate() == 0, worker.log()
    return records, found


def kcat_lines(bootstrap: str, topic: str) -> list[str]:
    """The committed values of `topic`, one a line, as kcat prints them."""
    assert KCAT is not None
    command = [KCAT, "-C", "-b", bootstrap, "-t", topic, "-e", "-o", "beginning", "-q"]
    command += ["-f", "%s\n", "-X", "isolation.level=read_committed"]
    done = subprocess.run(command, capture_output=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout.decode("utf-8").splitlines()


def parsed(lines: list[str]) -> list[dict[str, Any]]:
    """Each line parsed by jq when installed (projected to the fields checked), else by
    Python's json."""
    if JQ is None:
        return [json.loads(line) for line in lines]
    done = subprocess.run(
        [JQ, "-c", PROJECTION],
        input="\n".join(lines) + "\n",
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


def assert_one_result_each(
    results: list[dict[str, Any]], records: list[dict[str, Any]], worker_id: str
) -> None:
    assert Counter(r["request_id"] for r in results) == Counter(r["request_id"] for r in records)
    by_id = {r["request_id"]: r for r in records}
    for result in results:
        request = by_id[result["request_id"]]
        assert (result["job_id"], result["custom_id"]) == (request["job_id"], request["custom_id"])
        assert (result["priority"], result["model"]) == (request["priority"], "kbatch-sim")
        assert (result["engine"], result["worker_id"]) == ("simulated", worker_id)
        assert result["error"] is None
        text = result["text"] if "text" in result else result["output"]["text"]  # jq: flat
        assert isinstance(text, str) and text
        usage = result["usage"]
        assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"] > 0
        assert result["attempt"] == 1 and result["completed_at_ms"] > 0


@pytest.mark.skipif(KCAT is None, reason="kcat not installed (Debian package kcat)")
def test_json_results_are_read_by_kcat_and_jq(bootstrap: str, tmp_path: Path) -> None:
    topics = json_topics(bootstrap)
    records, found = run_job(bootstrap, topics, tmp_path, "plain", 12, raw=1)
    # kbatch's own reader takes the JSON results; the dead letter stays Avro.
    assert_one_result_each(found.results, records, "plain-worker")
    assert [d["stage"] for d, _ in found.dead] == ["decode"]
    assert all((m.value() or b"").startswith(MARKER) for m in read_topic(bootstrap, topics.dlq))

    lines = kcat_lines(bootstrap, topics.results)
    assert len(lines) == len(records)
    assert all(line.startswith("{") for line in lines)
    assert_one_result_each(parsed(lines), records, "plain-worker")

    jsonschema = pytest.importorskip("jsonschema", reason="jsonschema is not installed")
    schema_path = data_dir("schemas") / "kbatch.InferenceResult.v2.schema.json"
    validator = jsonschema.Draft202012Validator(json.loads(schema_path.read_text()))
    for line in lines:
        validator.validate(json.loads(line))


def test_the_format_of_a_live_results_topic_can_be_switched(bootstrap: str, tmp_path: Path) -> None:
    """Avro results, then a worker writing JSON to the same topic: every reader reads both."""
    as_avro = unique_topics(bootstrap, **SMALL)
    first, _ = run_job(bootstrap, as_avro, tmp_path, "before", 6)
    as_json = as_avro.model_copy(update={"results_format": "json"})
    second, found = run_job(bootstrap, as_json, tmp_path, "after", 6, earlier=len(first))

    assert found.result_ids() == Counter(r["request_id"] for r in [*first, *second])
    job_of = {r["request_id"]: r["job_id"] for r in found.results}
    worker_of = {"before": "before-worker", "after": "after-worker"}
    for records in (first, second):
        job = records[0]["job_id"]
        results = [r for r in found.results if job_of[r["request_id"]] == job]
        assert_one_result_each(results, records, worker_of[job])

    # On the topic: the first job's results in Avro, the second's in JSON.
    for message in read_topic(bootstrap, as_json.results):
        pairs: Any = message.headers() or ()
        header = [v for k, v in pairs if k == "kbatch-job-id"]
        assert header in ([b"before"], [b"after"])
        assert (message.value() or b"").startswith(MARKER if header == [b"before"] else b"{")


def test_a_batch_through_json_results_ends_complete(bootstrap: str, tmp_path: Path) -> None:
    """The collector (output file), the job progress (counts) and `kbatch results` read
    JSON results."""
    topics = json_topics(bootstrap)
    processes: list[ServiceProcess] = []
    try:
        scheduler, scheduler_url = start_scheduler(bootstrap, topics, tmp_path)
        processes.append(scheduler)
        worker, _ = start_follower(
            bootstrap, topics, tmp_path, "w1", "dedicated", 4, SIMULATED__STEP_S="0.001"
        )
        processes.append(worker)
        env = ingest_env(bootstrap, topics, tmp_path / "files", scheduler_url)
        ingest, url = start_ingest_process(env, tmp_path / "ingest.log")
        processes.append(ingest)
        custom_ids = [f"c{i}" for i in range(10)]
        content = "\n".join(batch_line(c) for c in custom_ids).encode() + b"\n"
        with httpx.Client(base_url=url, timeout=30) as client:
            batch_id = submit_batch(client, content, "input.jsonl", "normal")

            def finished() -> dict[str, Any] | None:
                batch: dict[str, Any] = client.get(f"/v1/batches/{batch_id}").json()
                return batch if batch["status"] in ("completed", "failed") else None

            batch = wait_for(finished, 120, f"batch {batch_id} finishing")
            assert batch["status"] == "completed", batch
            assert batch["request_counts"] == {"total": 10, "completed": 10, "failed": 0}
            output = client.get(f"/v1/files/{batch['output_file_id']}/content").text
        lines = [json.loads(line) for line in output.splitlines()]
        assert sorted(line["custom_id"] for line in lines) == custom_ids
        assert all(line["error"] is None for line in lines)
        from_topic = job_result_lines({"bootstrap.servers": bootstrap}, topics.results, batch_id)
        assert sorted(json.loads(line)["custom_id"] for line in from_topic) == custom_ids
        values = [m.value() or b"" for m in read_topic(bootstrap, topics.results)]
        assert len(values) == 10 and all(v.startswith(b"{") for v in values)
    finally:
        stop_all(reversed(processes))
