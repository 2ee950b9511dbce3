"""Output lines (pure): each endpoint's body is what the official `openai` package reads."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from openai.types import Completion, CreateEmbeddingResponse
from openai.types.chat import ChatCompletion
from openai.types.responses import Response
from pydantic import BaseModel

from services.collector.openai_format import response_body, result_line

MODELS: dict[str, type[BaseModel]] = {
    "/v1/chat/completions": ChatCompletion,
    "/v1/completions": Completion,
    "/v1/embeddings": CreateEmbeddingResponse,
    "/v1/responses": Response,
}


def result(endpoint: str, text: str, finish_reason: str, prompt: int, completion: int) -> Any:
    embedding = [0.25, -1.0] if endpoint == "/v1/embeddings" else None
    return {
        "request_id": "req_1",
        "job_id": "job",
        "custom_id": "c1",
        "endpoint": endpoint,
        "model": "tiny",
        "engine": "llamacpp",
        "worker_id": "w1",
        "output": {"text": text, "embedding": embedding, "finish_reason": finish_reason},
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        },
        "error": None,
        "completed_at_ms": 1_700_000_000_123,
    }


@pytest.mark.parametrize("endpoint", sorted(MODELS))
# The openai models build their validators on first use: slow once, under load.
@settings(deadline=None)
@given(
    text=st.text(max_size=50),
    finish_reason=st.sampled_from(["stop", "length"]),
    prompt=st.integers(0, 10**6),
    completion=st.integers(0, 10**6),
)
def test_every_body_validates_as_the_official_model(
    endpoint: str, text: str, finish_reason: str, prompt: int, completion: int
) -> None:
    record = result(endpoint, text, finish_reason, prompt, completion)
    body = response_body(record)
    parsed = MODELS[endpoint].model_validate(body, strict=True)
    assert body["model"] == "tiny" and body["kbatch"]["engine"] == "llamacpp"
    if isinstance(parsed, Response):
        assert parsed.output_text == text
        assert parsed.usage is not None and parsed.usage.total_tokens == prompt + completion
        assert parsed.status == ("incomplete" if finish_reason == "length" else "completed")
    elif isinstance(parsed, ChatCompletion):
        assert parsed.choices[0].message.content == text
    elif isinstance(parsed, Completion):
        assert parsed.choices[0].text == text
    else:
        assert isinstance(parsed, CreateEmbeddingResponse)
        assert parsed.data[0].embedding == [0.25, -1.0]


def test_a_failed_result_is_an_error_line_without_a_body() -> None:
    record = result("/v1/responses", "", "stop", 1, 0)
    record["error"] = {"code": "invalid_request", "message": "too long"}
    is_error, line = result_line(record)
    assert is_error and line["response"]["body"] is None
    assert line["error"] == {"code": "invalid_request", "message": "too long"}
