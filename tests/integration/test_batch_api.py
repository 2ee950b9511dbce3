"""The OpenAI Batch API, driven by the official `openai` client, through running services."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai.types import BatchUsage, FileObject
from openai.types.batch_usage import InputTokensDetails, OutputTokensDetails
from openai.types.responses import Response

from services.harness.kafka import unique_topics, wait_for
from services.harness.pipeline import (
    batch_line,
    ingest_env,
    start_follower,
    start_ingest_process,
    start_scheduler,
)
from services.harness.processes import ServiceProcess, stop_all
from services.settings import TopicSettings


@dataclass
class Stack:
    topics: TopicSettings
    client: openai.OpenAI
    processes: list[ServiceProcess]
    ingest_env: dict[str, str]
    ingest_url: str
    worker_url: str


@pytest.fixture
def stack(bootstrap: str, tmp_path: Path) -> Iterator[Stack]:
    topics = unique_topics(bootstrap, high_partitions=1, normal_partitions=2, low_partitions=1)
    scheduler, scheduler_url = start_scheduler(bootstrap, topics, tmp_path)
    worker, worker_url = start_follower(
        bootstrap, topics, tmp_path, "w1", "dedicated", 4, SIMULATED__STEP_S="0.01"
    )
    env = ingest_env(bootstrap, topics, tmp_path / "files", scheduler_url)
    ingest, url = start_ingest_process(env, tmp_path / "ingest.log")
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
    built = Stack(topics, client, [ingest, worker, scheduler], env, url, worker_url)
    yield built
    stop_all(built.processes)


def upload(client: openai.OpenAI, tmp_path: Path, lines: list[str]) -> str:
    path = tmp_path / f"input-{time.monotonic_ns()}.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with path.open("rb") as handle:
        return client.files.create(file=handle, purpose="batch").id


def create_batch(client: openai.OpenAI, tmp_path: Path, lines: list[str]) -> openai.types.Batch:
    """Upload `lines` as a file and create a chat-completions batch of it."""
    return client.batches.create(
        input_file_id=upload(client, tmp_path, lines),
        endpoint="/v1/chat/completions",
        completion_window="24h",
    )


def wait_status(
    client: openai.OpenAI, batch_id: str, wanted: set[str], timeout_s: float = 120
) -> Any:
    return wait_for(
        lambda: (b := client.batches.retrieve(batch_id)).status in wanted and b,
        timeout_s,
        f"batch {batch_id} reaching {wanted}",
        interval_s=0.5,
    )


def completed(client: openai.OpenAI, batch_id: str) -> int:
    counts = client.batches.retrieve(batch_id).request_counts
    assert counts is not None
    return counts.completed


def jsonl(client: openai.OpenAI, file_id: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in client.files.content(file_id).text.splitlines()]


def test_a_whole_batch_with_invalid_lines(stack: Stack, tmp_path: Path) -> None:
    lines = [batch_line(f"c{i}") for i in range(40)]
    lines[7] = "{this is not json"
    lines[20] = batch_line("bad-model", model="no-such-model")
    file_id = upload(stack.client, tmp_path, lines)
    batch = stack.client.batches.create(
        input_file_id=file_id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata={"purpose": "test"},
    )
    assert batch.status == "validating"
    done = wait_status(stack.client, batch.id, {"completed", "failed"})
    assert done.status == "completed", done
    assert done.request_counts.total == 38
    assert (done.request_counts.completed, done.request_counts.failed) == (38, 0)
    assert sorted(e.line for e in done.errors.data) == [8, 21]
    output = jsonl(stack.client, done.output_file_id)
    assert sorted(o["custom_id"] for o in output) == sorted(
        f"c{i}" for i in range(40) if i not in (7, 20)
    )
    first = output[0]
    assert first["response"]["status_code"] == 200 and first["error"] is None
    assert first["response"]["body"]["system_fingerprint"] == "kbatch-simulated"
    assert first["response"]["body"]["choices"][0]["message"]["content"].startswith("[simulated]")
    assert done.error_file_id is None
    listed = stack.client.batches.list(limit=10)
    assert [b.id for b in listed.data] == [batch.id]


def test_a_batch_nobody_fetches_moves_on_by_itself(stack: Stack, tmp_path: Path) -> None:
    file_id = upload(stack.client, tmp_path, [batch_line(f"u{i}") for i in range(30)])
    watched, unwatched = (
        stack.client.batches.create(
            input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        for _ in range(2)
    )
    wait_status(stack.client, watched.id, {"completed"})

    def listed_completed() -> Any:
        listed = {b.id: b for b in stack.client.batches.list(limit=100).data}
        return listed[unwatched.id].status == "completed" and listed[unwatched.id]

    # `unwatched` is never fetched by id: only the list shows it.
    done = wait_for(listed_completed, 60, f"{unwatched.id} completed in the list", 0.5)
    assert done.request_counts is not None
    counts = done.request_counts
    assert (counts.total, counts.completed, counts.failed) == (30, 30, 0)
    assert done.completed_at is not None and done.error_file_id is None
    assert done.output_file_id == f"file-{unwatched.id}-output"
    output = stack.client.files.retrieve(done.output_file_id)
    assert (output.purpose, output.filename) == ("batch_output", f"{unwatched.id}_output.jsonl")
    lines = jsonl(stack.client, done.output_file_id)
    assert sorted(line["custom_id"] for line in lines) == sorted(f"u{i}" for i in range(30))


def ids(files: Iterable[FileObject]) -> list[str]:
    return [file.id for file in files]


def test_files_list_like_openai(stack: Stack, tmp_path: Path) -> None:
    client = stack.client
    inputs = [upload(client, tmp_path, [batch_line(f"f{i}")]) for i in range(3)]
    batch = client.batches.create(
        input_file_id=inputs[0], endpoint="/v1/chat/completions", completion_window="24h"
    )
    output_id = wait_status(client, batch.id, {"completed"}).output_file_id
    everything = client.files.list()
    newest_first = ids(everything.data)
    assert sorted(newest_first) == sorted([*inputs, output_id]) and everything.has_more is False
    created = [file.created_at for file in everything.data]
    assert created == sorted(created, reverse=True)
    assert ids(client.files.list(order="asc").data) == newest_first[::-1]
    assert ids(client.files.list(order="desc").data) == newest_first
    # purpose: only files with it.
    assert sorted(ids(client.files.list(purpose="batch").data)) == sorted(inputs)
    assert ids(client.files.list(purpose="batch_output").data) == [output_id]
    assert client.files.list(purpose="fine-tune").data == []
    # limit and after: pages that follow one another; the SDK's own paging walks them all.
    first = client.files.list(limit=3)
    assert ids(first.data) == newest_first[:3] and first.has_more is True
    rest = client.files.list(limit=3, after=first.data[-1].id)
    assert ids(rest.data) == newest_first[3:] and rest.has_more is False
    assert ids(client.files.list(limit=1)) == newest_first  # iterating follows `after`
    asc = ids(client.files.list(limit=2, order="asc", after=newest_first[-1]).data)
    assert asc == newest_first[::-1][1:3]
    assert client.files.list(after="file-nosuchfile").data == []
    page = httpx.get(f"{stack.ingest_url}/v1/files", params={"limit": 2}, timeout=10).json()
    assert (page["object"], page["first_id"], page["last_id"]) == ("list", *newest_first[:2])
    # A deleted file is gone from the list.
    client.files.delete(inputs[1])
    assert inputs[1] not in ids(client.files.list().data)
    for bad in ({"limit": 0}, {"limit": 10_001}, {"extra_query": {"order": "sideways"}}):
        with pytest.raises(openai.BadRequestError):
            client.files.list(**bad)


def test_a_cancelled_batch_ends_cancelled_with_partial_output(stack: Stack, tmp_path: Path) -> None:
    lines = [batch_line(f"k{i}", max_tokens=40) for i in range(3000)]
    batch = create_batch(stack.client, tmp_path, lines)
    wait_status(stack.client, batch.id, {"in_progress"})
    wait_for(lambda: completed(stack.client, batch.id) > 0, 60)
    assert stack.client.batches.cancel(batch.id).status == "cancelling"
    done = wait_status(stack.client, batch.id, {"cancelled"}, timeout_s=120)
    counts = done.request_counts
    assert counts.total == 3000 and counts.completed + counts.failed == 3000
    assert 0 < counts.completed < 3000
    output = jsonl(stack.client, done.output_file_id)
    errors = jsonl(stack.client, done.error_file_id)
    assert len(output) == counts.completed and len(errors) == counts.failed
    assert {e["error"]["code"] for e in errors} == {"batch_cancelled"}
    assert len({line["custom_id"] for line in output + errors}) == 3000


def in_flight(worker_url: str) -> float:
    """The worker's kbatch_inference_in_flight_requests gauge."""
    for line in httpx.get(f"{worker_url}/metrics", timeout=5).text.splitlines():
        if line.startswith("kbatch_inference_in_flight_requests "):
            return float(line.split()[1])
    raise AssertionError("the worker exports no in-flight gauge")


def test_cancelling_stops_the_requests_already_in_the_engine(stack: Stack, tmp_path: Path) -> None:
    # 1,500 tokens at 10 ms a step: each request would take 15 s to run out.
    lines = [batch_line(f"long{i}", max_tokens=1500) for i in range(100)]
    batch = create_batch(stack.client, tmp_path, lines)
    wait_for(lambda: in_flight(stack.worker_url) > 0, 60, "requests in the engine")
    cancelled_at = time.monotonic()
    stack.client.batches.cancel(batch.id)
    done = wait_status(stack.client, batch.id, {"cancelled"}, timeout_s=60)
    # Time is what is tested: the in-flight requests end long before they could finish.
    assert time.monotonic() - cancelled_at < 10
    assert done.request_counts is not None
    assert (done.request_counts.completed, done.request_counts.failed) == (0, 100)
    assert done.error_file_id
    errors = jsonl(stack.client, done.error_file_id)
    assert {e["error"]["code"] for e in errors} == {"batch_cancelled"}
    assert in_flight(stack.worker_url) == 0


def test_collector_killed_mid_job_resumes_without_duplicates(stack: Stack, tmp_path: Path) -> None:
    lines = [batch_line(f"r{i}", max_tokens=20) for i in range(1500)]
    batch = create_batch(stack.client, tmp_path, lines)
    wait_for(lambda: completed(stack.client, batch.id) > 200, 60)
    stack.processes[0].kill()  # ingest, and the collector inside it, die mid-job
    stack.processes[0] = start_ingest_process(stack.ingest_env, tmp_path / "ingest-2.log")[0]
    done = wait_status(stack.client, batch.id, {"completed"})
    output = jsonl(stack.client, done.output_file_id)
    custom_ids = [line["custom_id"] for line in output]
    assert len(custom_ids) == 1500 and len(set(custom_ids)) == 1500
    # Usage is summed in the collector's checkpoint with the lines: counted exactly once too.
    assert done.usage is not None and done.usage == usage_of(output)
    assert done.model == output[0]["response"]["body"]["model"]


def usage_of(output: list[dict[str, Any]]) -> BatchUsage:
    """The batch usage OpenAI would report for these output lines."""
    usages = [line["response"]["body"]["usage"] for line in output]
    # Chat and completion bodies count prompt/completion tokens, Responses input/output.
    input_tokens = sum(u.get("prompt_tokens", u.get("input_tokens", 0)) for u in usages)
    output_tokens = sum(u.get("completion_tokens", u.get("output_tokens", 0)) for u in usages)
    assert input_tokens > 0 and output_tokens > 0
    return BatchUsage(
        input_tokens=input_tokens,
        input_tokens_details=InputTokensDetails(cached_tokens=0),
        output_tokens=output_tokens,
        output_tokens_details=OutputTokensDetails(reasoning_tokens=0),
        total_tokens=input_tokens + output_tokens,
    )


def results_so_far(stack: Stack, batch_id: str) -> tuple[str, list[dict[str, Any]]]:
    """The batch's status when its results stream began, and the lines streamed."""
    with httpx.stream("GET", f"{stack.ingest_url}/v1/batches/{batch_id}/results") as reply:
        assert reply.status_code == 200, reply.read()
        assert reply.headers["content-type"] == "application/jsonl"
        body = b"".join(reply.iter_bytes())
    lines = [json.loads(line) for line in body.splitlines()]
    return reply.headers["x-kbatch-batch-status"], lines


def test_results_stream_as_they_finish_and_usage_follows_them(stack: Stack, tmp_path: Path) -> None:
    n = 400
    wanted = {f"s{i}" for i in range(n)}
    batch = create_batch(
        stack.client, tmp_path, [batch_line(f"s{i}", max_tokens=40) for i in range(n)]
    )

    def some_results_while_running() -> Any:
        status, lines = results_so_far(stack, batch.id)
        return status == "in_progress" and 0 < len(lines) < n and lines

    early = wait_for(some_results_while_running, 60, "results streamed mid-batch", 0.2)
    assert {line["custom_id"] for line in early} < wanted

    def usage_while_running() -> Any:
        seen = stack.client.batches.retrieve(batch.id)
        return seen.status == "in_progress" and seen.usage and seen.usage.total_tokens and seen

    running = wait_for(usage_while_running, 30, "usage counted mid-batch", 0.2)
    done = wait_status(stack.client, batch.id, {"completed"})
    status, lines = results_so_far(stack, batch.id)
    assert status == "completed"
    assert lines == jsonl(stack.client, done.output_file_id)
    assert sorted(line["custom_id"] for line in lines) == sorted(wanted)
    assert done.usage == usage_of(lines)
    assert running.usage.total_tokens < done.usage.total_tokens
    assert done.model == lines[0]["response"]["body"]["model"] == "kbatch-sim"


def test_a_file_past_openais_50000_request_limit(stack: Stack, tmp_path: Path) -> None:
    """OpenAI refuses input files of more than 50,000 requests; kbatch's backlog is Kafka and
    its limit a setting (KBATCH_INGEST__MAX_LINES_PER_JOB, 500,000): 60,000 lines through
    the official client are all accepted, and every one ends in the output or error file.
    The batch is cancelled once all are published, so the test does not wait on inference."""
    n = 60_000
    batch = create_batch(stack.client, tmp_path, [batch_line(f"big{i}") for i in range(n)])

    def all_published() -> Any:
        counts = stack.client.batches.retrieve(batch.id).request_counts
        return counts is not None and counts.total == n

    wait_for(all_published, 120, "all 60,000 lines published", interval_s=0.5)
    stack.client.batches.cancel(batch.id)
    done = wait_status(stack.client, batch.id, {"cancelled"}, timeout_s=180)
    counts = done.request_counts
    assert counts is not None and counts.total == n
    assert counts.completed + counts.failed == n
    lines = jsonl(stack.client, done.error_file_id)
    if done.output_file_id is not None:
        lines += jsonl(stack.client, done.output_file_id)
    assert sorted(line["custom_id"] for line in lines) == sorted(f"big{i}" for i in range(n))


def responses_line(custom_id: str) -> str:
    body = {"model": "kbatch-sim", "instructions": "Be brief.", "input": f"Rate {custom_id}"}
    return json.dumps(
        {"custom_id": custom_id, "method": "POST", "url": "/v1/responses", "body": body}
    )


def test_a_responses_batch_answers_with_response_objects(stack: Stack, tmp_path: Path) -> None:
    """`/v1/responses` lines are served as chats and answered as Responses API objects; a
    line for another endpoint than the batch's is an error, as at OpenAI."""
    lines = [responses_line(f"r{i}") for i in range(12)]
    lines[5] = batch_line("chat-in-a-responses-batch")
    batch = stack.client.batches.create(
        input_file_id=upload(stack.client, tmp_path, lines),
        endpoint="/v1/responses",
        completion_window="24h",
    )
    done = wait_status(stack.client, batch.id, {"completed", "failed"})
    assert done.status == "completed" and done.request_counts is not None
    assert (done.request_counts.total, done.request_counts.completed) == (11, 11)
    assert done.errors is not None and done.errors.data is not None
    [mismatch] = done.errors.data
    assert (mismatch.code, mismatch.line) == ("endpoint_mismatch", 6)
    output = jsonl(stack.client, done.output_file_id)
    assert sorted(line["custom_id"] for line in output) == sorted(
        f"r{i}" for i in range(12) if i != 5
    )
    for line in output:
        response = Response.model_validate(line["response"]["body"], strict=True)
        assert response.object == "response" and response.model == "kbatch-sim"
        assert response.output_text.startswith("[simulated]")
        assert response.usage is not None and response.usage.input_tokens > 0
    assert done.usage == usage_of(output)
