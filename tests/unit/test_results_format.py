"""KBATCH_TOPICS__RESULTS_FORMAT: results as Avro or plain JSON, the same record either way;
every reader takes both, so the format of a live topic can be switched."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.codec import MARKER, RESULT, ResultsFormat, codec, results_codec
from services.errors import DecodeError
from services.harness.pipeline import request_record
from services.inference.engines.base import EngineOutput
from services.inference.engines.simulated import SimulatedEngine
from services.inference.outputs import (
    Origin,
    cancelled_record,
    result_record,
)
from services.inference.settings import SimulatedEngineOptions
from services.resources import data_dir
from services.settings import CommonSettings

JSON_SCHEMA = data_dir("schemas") / "kbatch.InferenceResult.v2.schema.json"
FORMATS: list[ResultsFormat] = ["avro", "json"]


def result(**overrides: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "request_id": "req_1",
        "job_id": "job",
        "custom_id": "c-1",
        "tenant": "acme",
        "priority": "high",
        "endpoint": "/v1/embeddings",
        "model": "kbatch-sim",
        "engine": "simulated",
        "worker_id": "w-1",
        "output": {"text": None, "embedding": [0.1, -2.5, 3e-8], "finish_reason": "stop"},
        "usage": {"prompt_tokens": 3, "completion_tokens": 0, "total_tokens": 3},
        "timings": {"queue_wait_ms": 1.25, "inference_ms": 20.5},
        "error": None,
        "attempt": 1,
        "source_partition": 2,
        "source_offset": 2**40,
        "completed_at_ms": 1_700_000_000_123,
    }
    record.update(overrides)
    return record


def validator() -> Any:
    jsonschema = pytest.importorskip("jsonschema", reason="jsonschema is not installed")
    schema = json.loads(JSON_SCHEMA.read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def test_a_json_result_is_a_plain_object_with_the_avro_field_names() -> None:
    data = results_codec("json").encode(result())
    assert data.startswith(b"{")
    plain = json.loads(data.decode("utf-8"))
    avro_fields = [f["name"] for f in codec(RESULT).reader.parsed["fields"]]
    assert list(plain) == avro_fields  # no schema/payload envelope, every field present
    assert plain["output"]["text"] is None
    assert plain["source_offset"] == 2**40


@pytest.mark.parametrize(
    "record",
    [
        result(),
        result(output={"text": "héllo ☃", "embedding": None, "finish_reason": "length"}),
        result(output=None, error={"code": "batch_cancelled", "message": "cancelled"}),
    ],
)
def test_json_results_validate_against_the_json_schema(record: dict[str, Any]) -> None:
    validator().validate(json.loads(results_codec("json").encode(record)))


def test_the_json_schema_refuses_what_the_avro_schema_refuses() -> None:
    plain = json.loads(results_codec("json").encode(result()))
    for broken in (
        {**plain, "priority": "urgent"},
        {**plain, "attempt": 2**31},
        {**plain, "usage": {"prompt_tokens": 3}},
        {k: v for k, v in plain.items() if k != "job_id"},
    ):
        assert not validator().is_valid(broken)


def _json_type(avro: Any) -> Any:
    """What an Avro type becomes in the JSON Schema (the file is checked against this)."""
    if isinstance(avro, list):
        return {"anyOf": [_json_type(branch) for branch in avro]}
    if isinstance(avro, str):
        bits = {"int": 31, "long": 63}
        if avro in bits:
            return {
                "type": "integer",
                "minimum": -(2 ** bits[avro]),
                "maximum": 2 ** bits[avro] - 1,
            }
        return {"type": {"float": "number", "double": "number"}.get(avro, avro)}
    if avro["type"] == "enum":
        return {"enum": avro["symbols"]}
    if avro["type"] == "array":
        return {"type": "array", "items": _json_type(avro["items"])}
    properties = {}
    for field in avro["fields"]:
        described = {"description": field["doc"]} if "doc" in field else {}
        properties[field["name"]] = {**described, **_json_type(field["type"])}
    return {
        "type": "object",
        "properties": properties,
        "required": [field["name"] for field in avro["fields"]],
        "additionalProperties": False,
    }


def test_the_json_schema_agrees_with_the_avro_schema() -> None:
    avro = json.loads((data_dir("schemas") / "kbatch.InferenceResult.v2.avsc").read_text())
    schema = json.loads(JSON_SCHEMA.read_text(encoding="utf-8"))
    shape = {
        k: v
        for k, v in schema.items()
        if not k.startswith("$") and k not in ("title", "description")
    }
    assert shape == _json_type(avro)


finite_float32 = st.floats(width=32, allow_nan=False, allow_infinity=False)


@given(
    text=st.none() | st.text(),
    embedding=st.none() | st.lists(finite_float32, max_size=8),
    error=st.none() | st.fixed_dictionaries({"code": st.text(), "message": st.text()}),
    offset=st.integers(0, 2**63 - 1),
    wait_ms=st.floats(allow_nan=False, allow_infinity=False),
)
def test_json_and_avro_decode_to_equal_records(
    text: str | None,
    embedding: list[float] | None,
    error: dict[str, str] | None,
    offset: int,
    wait_ms: float,
) -> None:
    record = result(
        output={"text": text, "embedding": embedding, "finish_reason": None},
        error=error,
        source_offset=offset,
        timings={"queue_wait_ms": wait_ms, "inference_ms": 0.0},
    )
    as_avro = results_codec("avro").encode(record)
    as_json = results_codec("json").encode(record)
    assert as_avro.startswith(MARKER)
    assert as_json.startswith(b"{")
    # Each reader reads both formats, by their first byte, to the same record.
    decoded = [results_codec(f).decode(data) for f in FORMATS for data in (as_avro, as_json)]
    assert all(d == decoded[0] for d in decoded)
    assert decoded[0]["source_offset"] == offset


def test_a_json_result_is_resolved_like_an_avro_one() -> None:
    """Defaults fill absent fields, unknown fields are dropped: an older or newer writer's
    JSON reads as its Avro would."""
    plain = json.loads(results_codec("json").encode(result()))
    del plain["attempt"]  # has a default (0)
    plain["added_later"] = "x"
    decoded = results_codec().decode(json.dumps(plain).encode())
    assert decoded == results_codec().decode(results_codec("avro").encode(result(attempt=0)))


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (None, "tombstone"),
        (b"", "neither Avro"),
        (b"[1, 2]", "neither Avro"),
        (b"\x00\x01", "neither Avro"),
        (b"{not json", "corrupt kbatch.InferenceResult JSON"),
        (b'{"request_id": "r"}', "does not match its schema"),
        (json.dumps(result(priority="urgent")).encode(), "does not match its schema"),
        (json.dumps(result(attempt="1")).encode(), "does not match its schema"),
        (MARKER + b"\x00" * 8 + b"xx", "unknown schema fingerprint"),
    ],
)
def test_what_is_neither_format_is_a_decode_error(data: bytes | None, reason: str) -> None:
    for results_format in FORMATS:
        with pytest.raises(DecodeError, match=reason):
            results_codec(results_format).decode(data)


def _written(results_format: ResultsFormat) -> list[tuple[bytes, list[Any]]]:
    engine = SimulatedEngine(SimulatedEngineOptions())
    request = request_record("job", 1)
    origin = Origin("requests", 3, 17, b"k", b"v")
    output = EngineOutput(4, 2, text="ok", finish_reason="stop")
    done = result_record(
        "results",
        request,
        output,
        engine,
        "w-1",
        origin,
        0.5,
        0.25,
        1,
        results_format=results_format,
    )
    cancelled = cancelled_record(
        "results", request, engine, "w-1", origin, results_format=results_format
    )
    return [(r.value, r.headers) for r in (done, cancelled)]


@pytest.mark.parametrize("results_format", FORMATS)
def test_workers_write_results_in_the_chosen_format(results_format: ResultsFormat) -> None:
    written = _written(results_format)
    first_bytes = {"avro": MARKER, "json": b"{"}[results_format]
    assert all(value.startswith(first_bytes) for value, _ in written)
    done, cancelled = (results_codec().decode(value) for value, _ in written)
    assert (done["output"]["text"], done["usage"]["total_tokens"]) == ("ok", 6)
    assert (done["source_partition"], done["source_offset"], done["attempt"]) == (3, 17, 1)
    assert cancelled["error"]["code"] == "batch_cancelled"
    # The headers do not change with the format.
    assert [h for _, h in written] == [h for _, h in _written("avro")]


def test_the_setting_defaults_to_avro_and_refuses_other_formats(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("KBATCH_TOPICS__RESULTS_FORMAT", raising=False)
    assert CommonSettings().topics.results_format == "avro"
    monkeypatch.setenv("KBATCH_TOPICS__RESULTS_FORMAT", "json")
    assert CommonSettings().topics.results_format == "json"
    monkeypatch.setenv("KBATCH_TOPICS__RESULTS_FORMAT", "protobuf")
    with pytest.raises(ValueError, match="results_format"):
        CommonSettings()
