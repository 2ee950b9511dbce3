"""Batch lines (pure): the Responses API's text subset served as a chat, and a batch's
lines held to its endpoint."""

from __future__ import annotations

import json
from typing import Any

from services.ingest.admission.validation import Limits, Rejection, RequestContext, parse_line
from services.lanes import Lane

LIMITS = Limits(frozenset({"tiny"}), max_max_tokens=512)
ANY = RequestContext("job", "acme", Lane.NORMAL, 1)


def line(url: str, body: dict[str, Any], custom_id: str = "c1") -> bytes:
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": url, "body": body}).encode()


def parsed(data: bytes, context: RequestContext = ANY) -> dict[str, Any]:
    outcome = parse_line(1, data, context, LIMITS)
    assert not isinstance(outcome, Rejection), outcome
    return outcome


def refused(data: bytes, context: RequestContext = ANY) -> Rejection:
    outcome = parse_line(1, data, context, LIMITS)
    assert isinstance(outcome, Rejection), outcome
    return outcome


def test_a_responses_line_becomes_a_chat_with_its_instructions_first() -> None:
    record = parsed(
        line(
            "/v1/responses",
            {
                "model": "tiny",
                "instructions": "Answer in French.",
                "input": [
                    {"role": "user", "content": "Hello"},
                    {
                        "type": "message",
                        "role": "assistant",
                        "content": [{"type": "output_text", "text": "Bonjour"}],
                    },
                    {"role": "user", "content": [{"type": "input_text", "text": "And bye?"}]},
                ],
                "max_output_tokens": 32,
                "temperature": 0.5,
            },
        )
    )
    assert record["endpoint"] == "/v1/responses"
    assert [(m["role"], m["content"]) for m in record["body"]["messages"]] == [
        ("system", "Answer in French."),
        ("user", "Hello"),
        ("assistant", "Bonjour"),
        ("user", "And bye?"),
    ]
    body = record["body"]
    assert (body["max_tokens"], body["temperature"], body["prompt"]) == (32, 0.5, None)
    plain = parsed(line("/v1/responses", {"model": "tiny", "input": "Hi"}))
    assert [(m["role"], m["content"]) for m in plain["body"]["messages"]] == [("user", "Hi")]


def test_responses_features_kbatch_cannot_honour_are_refused_by_name() -> None:
    for extra in (
        {"tools": [{"type": "web_search"}]},
        {"previous_response_id": "resp_1"},
        {"reasoning": {"effort": "high"}},
        {"input": [{"type": "input_image", "image_url": "http://x"}]},
        {"max_output_tokens": 513},
        {"input": ""},
    ):
        rejection = refused(line("/v1/responses", {"model": "tiny", "input": "Hi", **extra}))
        assert (rejection.code, rejection.custom_id) == ("invalid_body", "c1")
        assert rejection.reason


def test_an_unknown_endpoint_is_named_as_such_with_its_custom_id() -> None:
    rejection = refused(line("/v1/images/generations", {"model": "tiny"}, custom_id="img-7"))
    assert (rejection.code, rejection.custom_id) == ("unsupported_endpoint", "img-7")
    assert "/v1/responses" in rejection.reason  # the reason lists what is served
    whole = refused(b'{"custom_id": "x", "method": "GET", "url": "/v1/images", "body": {}}')
    assert (whole.code, whole.custom_id) == ("invalid_line", "x")


def test_a_batch_takes_only_lines_for_its_own_endpoint() -> None:
    chat_batch = RequestContext("batch_1", "acme", Lane.NORMAL, 1, endpoint="/v1/chat/completions")
    completion = line("/v1/completions", {"model": "tiny", "prompt": "Hi"}, custom_id="p")
    rejection = refused(completion, chat_batch)
    assert (rejection.code, rejection.custom_id) == ("endpoint_mismatch", "p")
    assert parsed(completion)["endpoint"] == "/v1/completions"  # a streamed job takes any
    chat = line(
        "/v1/chat/completions", {"model": "tiny", "messages": [{"role": "user", "content": "Hi"}]}
    )
    assert parsed(chat, chat_batch)["endpoint"] == "/v1/chat/completions"
