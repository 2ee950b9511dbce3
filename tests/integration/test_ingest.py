"""Ingest against the real broker, run as a real `kbatch ingest` process."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from confluent_kafka import Consumer, TopicPartition

from services.codec import JOB, REQUEST, Codec, codec
from services.harness.kafka import read_topic, unique_topics, wait_for
from services.harness.pipeline import registered
from services.harness.ports import free_port
from services.harness.processes import ServiceProcess
from services.ingest.admission.validation import request_id_for
from services.lanes import Lane
from services.settings import TopicSettings

pytestmark = pytest.mark.integration


def chat_line(custom_id: str, model: str = "kbatch-sim", **body: Any) -> bytes:
    payload = {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {
            "model": model,
            "messages": [{"role": "user", "content": f"hi {custom_id}"}],
            **body,
        },
    }
    return json.dumps(payload).encode()


class Ingest:
    def __init__(self, process: ServiceProcess, url: str, topics: TopicSettings) -> None:
        self.process = process
        self.url = url
        self.topics = topics

    def upload(self, job: str, lines: list[bytes], **params: Any) -> httpx.Response:
        return httpx.post(
            f"{self.url}/v1/jobs/{job}/requests",
            params=params,
            content=b"\n".join(lines) + b"\n",
            timeout=60,
        )


def start_ingest(
    bootstrap: str, tmp_path: Path, topics: TopicSettings | None = None, **options: str
) -> Ingest:
    topics = topics or unique_topics(
        bootstrap, high_partitions=2, normal_partitions=3, low_partitions=2
    )
    port = free_port()
    env = {
        "KBATCH_BOOTSTRAP_SERVERS": bootstrap,
        "KBATCH_TOPICS__PREFIX": topics.prefix,
        "KBATCH_TOPICS__HIGH_PARTITIONS": "2",
        "KBATCH_TOPICS__NORMAL_PARTITIONS": "3",
        "KBATCH_TOPICS__LOW_PARTITIONS": "2",
        "KBATCH_INGEST__HTTP_PORT": str(port),
        "KBATCH_INGEST__MAX_LINE_BYTES": "2000",
        **{f"KBATCH_INGEST__{k.upper()}": v for k, v in options.items()},
    }
    process = ServiceProcess(["ingest"], env, tmp_path / f"ingest-{port}.log")
    url = f"http://127.0.0.1:{port}"
    process.wait_healthy(f"{url}/healthz")
    return Ingest(process, url, topics)


@pytest.fixture
def ingest(bootstrap: str, tmp_path: Path) -> Iterator[Ingest]:
    service = start_ingest(bootstrap, tmp_path)
    yield service
    assert service.process.terminate() == 0, service.process.log()


def test_valid_file_lands_on_its_lanes_and_decodes(bootstrap: str, ingest: Ingest) -> None:
    high = ingest.upload("job-a", [chat_line(f"h{i}") for i in range(120)], priority="high")
    low = ingest.upload("job-a", [chat_line(f"l{i}") for i in range(80)], priority="low")
    assert (high.status_code, high.json()["accepted"]) == (200, 120), high.text
    assert (low.status_code, low.json()["accepted"]) == (200, 80), low.text

    messages = read_topic(bootstrap, ingest.topics.requests_of("kbatch-sim"), expect=200)
    layout = ingest.topics.lane_layout()
    decoded = [(m.partition() or 0, m.key(), codec(REQUEST).decode(m.value())) for m in messages]
    assert len(decoded) == 200
    for partition, key, record in decoded:
        assert layout.lane_of(partition) == Lane(record["priority"])
        assert key == record["request_id"].encode()
        assert record["request_id"] == request_id_for("job-a", record["custom_id"])
        assert record["body"]["messages"][0]["content"] == f"hi {record['custom_id']}"
    assert {r["custom_id"] for _, _, r in decoded} == {f"h{i}" for i in range(120)} | {
        f"l{i}" for i in range(80)
    }
    # Spread by key: every partition of each lane got some of the lane's records.
    used = {p for p, _, _ in decoded}
    assert used == set(layout.partitions(Lane.HIGH)) | set(layout.partitions(Lane.LOW))


def test_every_kind_of_bad_line_is_rejected_with_its_line_number(
    bootstrap: str, ingest: Ingest
) -> None:
    lines = [
        chat_line("ok-1"),  # 1
        b"{not json",  # 2
        b"\xff\xfe\x00 bad utf8",  # 3
        chat_line("big", filler="x" * 3000),  # 4 over max_line_bytes=2000
        chat_line("unknown-model", model="gpt-nope"),  # 5
        chat_line("neg-temp", temperature=-1),  # 6
        chat_line("huge-max-tokens", max_tokens=10_000_000),  # 7
        chat_line("ok-1"),  # 8 duplicate custom_id
        json.dumps({"custom_id": "u", "method": "POST", "url": "/v1/images", "body": {}}).encode(),
        json.dumps({"custom_id": "m", "method": "POST", "url": "/v1/completions"}).encode(),  # 10
        chat_line("unknown-param", logit_bias={"1": 2}),  # 11
        b"",  # 12 blank: skipped, still numbered
        chat_line("ok-2"),  # 13
    ]
    response = ingest.upload("job-bad", lines)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["accepted"] == 2
    got = {(r["line"], r["code"]) for r in body["rejected"]}
    assert got == {
        (2, "invalid_json"),
        (3, "invalid_utf8"),
        (4, "line_too_long"),
        (5, "model_not_found"),
        (6, "invalid_body"),
        (7, "invalid_body"),
        (8, "duplicate_custom_id"),
        (9, "unsupported_endpoint"),
        (10, "invalid_line"),
        (11, "invalid_body"),
    }
    assert all(r["reason"] for r in body["rejected"])
    published = read_topic(bootstrap, ingest.topics.requests_of("kbatch-sim"), expect=2)
    assert sorted(codec(REQUEST).decode(m.value())["custom_id"] for m in published) == [
        "ok-1",
        "ok-2",
    ]


def _commit_all(bootstrap: str, topics: TopicSettings, group: str = "kbatch-inference") -> None:
    """Act as the inference group: mark everything consumed, as workers would."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    ends = []
    for p in range(topics.lane_layout().total):
        _, high = consumer.get_watermark_offsets(
            TopicPartition(topics.requests_of("kbatch-sim"), p), timeout=10
        )
        ends.append(TopicPartition(topics.requests_of("kbatch-sim"), p, high))
    consumer.commit(offsets=ends, asynchronous=False)
    consumer.close()


def test_backpressure_answers_429_and_accepts_again_after_drain(
    bootstrap: str, tmp_path: Path
) -> None:
    service = start_ingest(
        bootstrap, tmp_path, lane_backlog_limit="50", chunk_lines="10", backlog_refresh_s="0.2"
    )
    try:
        lines = [chat_line(f"c{i}") for i in range(100)]
        first = service.upload("job-bp", lines)
        assert first.status_code == 429, first.text
        assert int(first.headers["Retry-After"]) >= 1
        body = first.json()
        resume = body["resume_from_line"]
        assert body["refused"]["reason"] == "backlog"
        assert 50 <= body["accepted"] <= 60
        assert resume == body["accepted"] + 1
        # Nothing of the refused part was published.
        assert (
            len(read_topic(bootstrap, service.topics.requests_of("kbatch-sim"))) == body["accepted"]
        )

        again = service.upload("job-bp", lines[resume - 1 :], first_line=resume)
        assert again.status_code == 429
        assert again.json()["accepted"] == 0

        _commit_all(bootstrap, service.topics)

        def drained() -> httpx.Response | None:
            reply = service.upload("job-bp", lines[resume - 1 :], first_line=resume)
            return reply if reply.status_code == 200 else None

        final = wait_for(drained, timeout_s=20, interval_s=0.5)
        assert final.json()["accepted"] == 100 - body["accepted"]
        published = read_topic(bootstrap, service.topics.requests_of("kbatch-sim"), expect=100)
        custom_ids = [codec(REQUEST).decode(m.value())["custom_id"] for m in published]
        assert sorted(custom_ids) == sorted(f"c{i}" for i in range(100))
    finally:
        assert service.process.terminate() == 0, service.process.log()


def test_records_of_the_previous_schema_version_decode_through_the_broker(
    bootstrap: str,
) -> None:
    from confluent_kafka import Producer

    topics = unique_topics(bootstrap)
    old = Codec(REQUEST, writer_version=1)
    record = {
        "request_id": "r1",
        "job_id": "j",
        "custom_id": "c",
        "tenant": "t",
        "priority": "low",
        "endpoint": "/v1/completions",
        "model": "kbatch-sim",
        "body": {"prompt": "hello"},
        "submitted_at_ms": 1,
        "attempt": 0,
    }
    producer = Producer({"bootstrap.servers": bootstrap})
    registered(bootstrap, topics, ["kbatch-sim"])
    producer.produce(topics.requests_of("kbatch-sim"), old.encode(record), partition=0)
    producer.flush(10)
    [message] = read_topic(bootstrap, topics.requests_of("kbatch-sim"), expect=1)
    decoded = codec(REQUEST).decode(message.value())
    assert codec(REQUEST).writer.version == 2
    assert decoded["trace_id"] is None  # the field v2 added, filled from its default
    assert decoded["body"]["prompt"] == "hello"


def test_job_totals_are_published_and_survive_a_restart(bootstrap: str, tmp_path: Path) -> None:
    first = start_ingest(bootstrap, tmp_path)
    try:
        lines = [chat_line(f"c{i}") for i in range(30)] + [b"{not json"]
        assert first.upload("job-t", lines).json()["job"] == {
            "accepted": 30,
            "rejected": 1,
            "sealed": False,
        }
    finally:
        assert first.process.terminate() == 0, first.process.log()
    again = start_ingest(bootstrap, tmp_path, topics=first.topics)
    try:
        more = again.upload("job-t", [chat_line(f"d{i}") for i in range(5)], seal="true")
        assert more.json()["job"] == {"accepted": 35, "rejected": 1, "sealed": True}
        missing = httpx.post(f"{again.url}/v1/jobs/no-such-job/seal", timeout=10)
        assert missing.status_code == 404
    finally:
        assert again.process.terminate() == 0, again.process.log()
    records = read_topic(bootstrap, first.topics.jobs, expect=2)
    last = codec(JOB).decode(records[-1].value())
    assert (last["job_id"], last["accepted"], last["sealed"]) == ("job-t", 35, True)


def test_bearer_tokens_name_the_tenant_and_are_never_logged(bootstrap: str, tmp_path: Path) -> None:
    tokens = json.dumps({"acme": "tok-acme-123", "beta": "tok-beta-456"})
    service = start_ingest(bootstrap, tmp_path, tenant_tokens=tokens)
    try:
        lines = [chat_line("a1"), chat_line("a2")]
        url = f"{service.url}/v1/jobs/job-auth/requests"
        assert httpx.post(url, content=b"\n".join(lines), timeout=10).status_code == 401
        wrong = {"Authorization": "Bearer tok-acme-12"}
        assert (
            httpx.post(url, content=b"\n".join(lines), headers=wrong, timeout=10).status_code == 401
        )
        claims_acme = {"Authorization": "Bearer tok-beta-456", "X-Kbatch-Tenant": "acme"}
        reply = httpx.post(url, content=b"\n".join(lines), headers=claims_acme, timeout=10)
        assert reply.status_code == 200 and reply.json()["accepted"] == 2
        assert httpx.get(f"{service.url}/healthz", timeout=10).status_code == 200
        metrics = httpx.get(f"{service.url}/metrics", timeout=10).text
    finally:
        assert service.process.terminate() == 0, service.process.log()
    published = read_topic(bootstrap, service.topics.requests_of("kbatch-sim"), expect=2)
    assert {codec(REQUEST).decode(m.value())["tenant"] for m in published} == {"beta"}
    for secret in ("tok-acme-123", "tok-beta-456"):
        assert secret not in service.process.log() and secret not in metrics
