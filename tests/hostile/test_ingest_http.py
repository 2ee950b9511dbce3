"""Hostile uploads against a running ingest: every case a 4xx or a reasoned rejection,
never a 5xx, a hang or a dead process; nothing published for rejected lines."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from services.harness.kafka import read_topic
from tests.integration.test_ingest import chat_line, start_ingest


def slow_body(lines: list[bytes], pause_s: float) -> Iterator[bytes]:
    for line in lines:
        time.sleep(pause_s)  # a slow client: the pause is the input under test
        yield line + b"\n"


def test_hostile_uploads_end_in_4xx_or_reasons(bootstrap: str, tmp_path: Path) -> None:
    ingest = start_ingest(bootstrap, tmp_path, max_lines_per_job="50", file_dir=str(tmp_path / "f"))
    url = ingest.url
    accepted = 0
    try:

        def post(job: str, body: bytes | Iterator[bytes]) -> httpx.Response:
            reply = httpx.post(f"{url}/v1/jobs/{job}/requests", content=body, timeout=60)
            assert reply.status_code < 500, reply.text
            return reply

        reply = post("j-bytes", os.urandom(5000))
        assert reply.json()["accepted"] == 0 and reply.json()["rejected_count"] >= 1
        reply = post("j-long", b"x" * 10_000_000)  # one 10 MB line, no newline
        assert reply.json()["rejected"][0]["code"] == "line_too_long"
        reply = post("j-dup", b"\n".join([chat_line("same"), chat_line("same")]))
        assert [r["code"] for r in reply.json()["rejected"]] == ["duplicate_custom_id"]
        accepted += reply.json()["accepted"]
        reply = post("j-many", b"\n".join(chat_line(f"m{i}") for i in range(60)))
        assert reply.json()["accepted"] == 50
        assert {r["code"] for r in reply.json()["rejected"]} == {"too_many_lines"}
        accepted += 50
        reply = post("j-slow", slow_body([chat_line(f"s{i}") for i in range(5)], 0.3))
        assert reply.json()["accepted"] == 5
        accepted += 5
        assert post("bad job id!", b"{}").status_code in (400, 404)
        reply = post(
            "j-params", chat_line("p", max_tokens=-5) + b"\n" + chat_line("q", temperature=1e308)
        )
        assert reply.json()["accepted"] == 0

        bad_batches = [
            {"input_file_id": "file-nope", "endpoint": "/v1/chat/completions"},
            {"input_file_id": "x", "endpoint": "/v1/nothing"},
        ]
        for body in bad_batches:
            assert httpx.post(f"{url}/v1/batches", json=body, timeout=10).status_code == 400
        assert httpx.post(f"{url}/v1/batches", content=b"{not json", timeout=10).status_code == 400
        wrong_purpose = httpx.post(
            f"{url}/v1/files", files={"file": b"{}"}, data={"purpose": "fine-tune"}, timeout=10
        )
        assert wrong_purpose.status_code == 400
        assert httpx.get(f"{url}/v1/files/..%2f..%2fetc", timeout=10).status_code < 500
        assert httpx.get(f"{url}/healthz", timeout=10).status_code == 200
    finally:
        assert ingest.process.terminate() == 0, ingest.process.log()
    published = read_topic(
        bootstrap, ingest.topics.requests_of("kbatch-sim"), expect=accepted, timeout_s=20
    )
    assert len(published) == accepted
