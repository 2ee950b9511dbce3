"""Kafka-native submissions, the pure parts: envelopes from headers, and the JSON
schemas that other languages' producers and consumers are given."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
from hypothesis import given
from hypothesis import strategies as st

from services.ingest.admission.submissions import Envelope, envelope_of, rejection_value
from services.ingest.admission.validation import BatchLine, Rejection
from services.lanes import Lane

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"


def test_an_envelope_names_job_tenant_priority_and_seal() -> None:
    headers = {
        "kbatch-job": b"job-1",
        "kbatch-tenant": b"acme",
        "kbatch-priority": b"high",
        "kbatch-seal": b"TRUE",
    }
    assert envelope_of(headers, "default") == Envelope("job-1", "acme", Lane.HIGH, True)


def test_defaults_fill_what_the_headers_leave_out() -> None:
    assert envelope_of({"kbatch-job": b"j"}, "default") == Envelope(
        "j", "default", Lane.NORMAL, False
    )


@given(st.dictionaries(st.sampled_from(["kbatch-tenant", "kbatch-seal", "x"]), st.binary()))
def test_a_submission_without_a_job_is_refused_with_a_reason(headers: dict[str, bytes]) -> None:
    reason = envelope_of(headers, "default")
    assert isinstance(reason, str) and "kbatch-job" in reason


def test_an_unknown_priority_is_refused_with_a_reason() -> None:
    reason = envelope_of({"kbatch-job": b"j", "kbatch-priority": b"urgent"}, "default")
    assert isinstance(reason, str) and "urgent" in reason


def test_the_submission_schema_is_the_line_model() -> None:
    published = json.loads((SCHEMAS / "submission.schema.json").read_text())
    generated = BatchLine.model_json_schema()
    assert published["properties"] == generated["properties"]
    assert published["required"] == generated["required"]
    line = {"custom_id": "a", "method": "POST", "url": "/v1/completions", "body": {}}
    jsonschema.validate(line, published)


class Refused:
    """The parts of a consumed record a rejection quotes."""

    def value(self) -> bytes:
        return b'{"custom_id": "\xc3\xa9t\xc3\xa9"'

    def topic(self) -> str:
        return "kbatch.submissions"

    def partition(self) -> int:
        return 2

    def offset(self) -> int:
        return 41


def test_a_rejection_is_json_that_its_schema_accepts() -> None:
    rejection = Rejection(41, "invalid_json", "EOF while parsing", None)
    value = rejection_value(Refused(), "job-1", rejection)  # type: ignore[arg-type]
    record = json.loads(value)
    jsonschema.validate(record, json.loads((SCHEMAS / "rejection.schema.json").read_text()))
    assert record["submission"] == "kbatch.submissions:2:41"
    assert record["line"] == '{"custom_id": "été"'
    assert (record["job_id"], record["code"]) == ("job-1", "invalid_json")
