from __future__ import annotations

import contextlib
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.codec import MARKER, REQUEST, RESULT, Codec, codec, default_catalog
from services.errors import DecodeError


def request(**overrides: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "request_id": "req_1",
        "job_id": "job",
        "custom_id": "c-1",
        "tenant": "acme",
        "priority": "normal",
        "endpoint": "/v1/chat/completions",
        "model": "kbatch-sim",
        "body": {"messages": [{"role": "user", "content": "hello"}], "max_tokens": 8},
        "submitted_at_ms": 1_700_000_000_000,
        "attempt": 0,
    }
    record.update(overrides)
    return record


def test_round_trip_names_the_writer_schema() -> None:
    data = codec(REQUEST).encode(request())
    assert data.startswith(MARKER)
    assert data[2:10] == codec(REQUEST).writer.fingerprint
    decoded = codec(REQUEST).decode(data)
    assert decoded["body"]["messages"][0]["content"] == "hello"
    assert decoded["body"]["max_tokens"] == 8


def test_a_v1_record_decodes_with_the_v2_reader() -> None:
    v1 = Codec(REQUEST, writer_version=1)
    assert v1.writer.fingerprint != codec(REQUEST).writer.fingerprint
    decoded = codec(REQUEST).decode(v1.encode(request()))
    assert decoded["trace_id"] is None
    assert decoded["custom_id"] == "c-1"


def test_a_record_of_another_type_is_refused() -> None:
    with pytest.raises(DecodeError, match=r"expected kbatch\.InferenceResult"):
        codec(RESULT).decode(codec(REQUEST).encode(request()))


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (None, "tombstone"),
        (b"", "marker"),
        (b'{"json": true}', "marker"),
        (MARKER + b"\x00" * 8 + b"xx", "unknown schema fingerprint"),
    ],
)
def test_undecodable_records_say_why(data: bytes | None, reason: str) -> None:
    with pytest.raises(DecodeError, match=reason):
        codec(REQUEST).decode(data)


def test_a_truncated_record_is_a_decode_error() -> None:
    data = codec(REQUEST).encode(request())
    with pytest.raises(DecodeError, match="corrupt"):
        codec(REQUEST).decode(data[:-5])


@given(st.binary(max_size=200))
def test_any_bytes_after_a_valid_header_decode_or_fail_cleanly(body: bytes) -> None:
    data = MARKER + codec(REQUEST).writer.fingerprint + body
    with contextlib.suppress(DecodeError):  # the only failure allowed
        codec(REQUEST).decode(data)


def test_every_shipped_schema_parses() -> None:
    assert default_catalog().names() == [
        "kbatch.DeadLetter",
        "kbatch.InferenceRequest",
        "kbatch.InferenceResult",
        "kbatch.JobRecord",
        "kbatch.WorkerAssignment",
        "kbatch.WorkerHeartbeat",
    ]
