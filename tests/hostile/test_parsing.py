"""Hostile input against ingest's parsing and validation (property-based fuzzing).

Whatever bytes arrive, parse_line returns either a record that encodes under the
request schema or a Rejection with a code from the fixed vocabulary; it never raises.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.codec import REQUEST, codec
from services.ingest.admission.validation import Limits, Rejection, RequestContext, parse_line
from services.lanes import Lane

CONTEXT = RequestContext("job-h", "tenant", Lane.NORMAL, 1)
LIMITS = Limits(frozenset({"kbatch-sim"}), max_max_tokens=4096)
CODES = {
    "invalid_json",
    "invalid_utf8",
    "invalid_line",
    "unsupported_endpoint",
    "invalid_body",
    "model_not_found",
}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=30,
)


def outcome_is_sound(outcome: dict[str, Any] | Rejection) -> None:
    if isinstance(outcome, Rejection):
        assert outcome.code in CODES and outcome.reason
        return
    decoded = codec(REQUEST).decode(codec(REQUEST).encode(outcome))
    assert decoded["custom_id"] == outcome["custom_id"]


@given(st.binary(max_size=2000))
def test_arbitrary_bytes(data: bytes) -> None:
    outcome_is_sound(parse_line(1, data, CONTEXT, LIMITS))


@given(json_values)
def test_arbitrary_json_documents(document: Any) -> None:
    outcome_is_sound(parse_line(1, json.dumps(document).encode(), CONTEXT, LIMITS))


@given(
    st.fixed_dictionaries(
        {
            "custom_id": st.one_of(st.text(max_size=70), st.integers(), st.none()),
            "method": st.sampled_from(["POST", "GET", "post", ""]),
            "url": st.sampled_from(
                ["/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v2/x", ""]
            ),
            "body": st.fixed_dictionaries(
                {"model": st.sampled_from(["kbatch-sim", "gpt-4", "", None])},
                optional={
                    "messages": json_values,
                    "prompt": json_values,
                    "input": json_values,
                    "max_tokens": st.one_of(
                        st.integers(-(10**12), 10**12), st.floats(), st.text(max_size=5)
                    ),
                    "temperature": st.one_of(st.floats(), st.integers(-100, 100)),
                    "top_p": st.one_of(st.floats(), st.integers(-5, 5)),
                    "n": st.integers(-5, 10**9),
                    "seed": st.integers(-(2**70), 2**70),
                },
            ),
        }
    )
)
@settings(suppress_health_check=[HealthCheck.too_slow])
def test_batch_lines_with_hostile_fields(line: dict[str, Any]) -> None:
    outcome = parse_line(1, json.dumps(line).encode(), CONTEXT, LIMITS)
    outcome_is_sound(outcome)
    if not isinstance(outcome, Rejection):
        tokens = outcome["body"].get("max_tokens")
        assert tokens is None or 1 <= tokens <= LIMITS.max_max_tokens


def test_deeply_nested_and_huge_bodies_are_rejected_not_crashed() -> None:
    nested = "[" * 100_000 + '"x"' + "]" * 100_000  # deeper than any JSON encoder writes
    deep = (
        '{"custom_id": "d", "method": "POST", "url": "/v1/chat/completions", '
        '"body": {"model": "kbatch-sim", "messages": ' + nested + "}}"
    ).encode()
    outcome = parse_line(1, deep, CONTEXT, LIMITS)
    assert isinstance(outcome, Rejection)
    invalid_utf8 = b'{"custom_id": "\xff\xfe", "body": {}}'
    rejected = parse_line(2, invalid_utf8, CONTEXT, LIMITS)
    assert isinstance(rejected, Rejection) and rejected.code == "invalid_utf8"
