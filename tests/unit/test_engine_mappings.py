"""The pure parts every engine shares: OpenAI parameters, refusals, status mapping, retries."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.errors import (
    EngineDeadError,
    InvalidRequestError,
    TransientEngineError,
)
from services.inference.engines.base import EngineRequest
from services.inference.engines.openai_compat import (
    error_for,
    output_of,
    request_body,
    retry_after_s,
)
from services.inference.engines.openai_params import is_context_length_error, sampling_kwargs
from services.inference.engines.vllm_mapping import vllm_priority
from services.inference.retry import engine_retrying
from services.inference.settings import InferenceOptions, served_name_of
from services.ingest.api.models import live_models, models_document
from services.lanes import Lane
from services.routing import Cell


def chat(**sampling: Any) -> EngineRequest:
    return EngineRequest(
        "r1",
        "/v1/chat/completions",
        "m",
        messages=[{"role": "user", "content": "hi", "name": None}],
        sampling=sampling,
    )


@pytest.mark.parametrize(
    "message",
    [
        # vLLM 0.33's input processor
        "The decoder prompt (length 9000) is longer than the maximum model length of 4096.",
        # llama-cpp-python's Llama._create_completion
        "Requested tokens (2004) exceed context window of 512",
        # llama_cpp.server, vLLM serve and OpenAI itself (400 bodies)
        "This model's maximum context length is 512 tokens. However, you requested 2020 tokens",
        '{"error": {"code": "context_length_exceeded"}}',
    ],
)
def test_every_engines_context_length_refusal_is_recognised(message: str) -> None:
    assert is_context_length_error(message)


@pytest.mark.parametrize(
    "message", ["temperature must be non-negative", "unknown model 'x'", "rate limited"]
)
def test_other_refusals_are_not_context_length(message: str) -> None:
    assert not is_context_length_error(message)


def test_sampling_fields_keep_their_names_and_max_tokens_defaults() -> None:
    assert sampling_kwargs(chat(temperature=0.0, seed=3)) == {
        "temperature": 0.0,
        "seed": 3,
        "max_tokens": 16,
    }
    assert sampling_kwargs(chat(max_tokens=5), default_max_tokens=9) == {"max_tokens": 5}


def test_remote_body_carries_the_remote_model_and_the_request() -> None:
    body = request_body(chat(temperature=0.0, stop=["\n"]), "served-by-remote")
    assert body == {
        "model": "served-by-remote",
        "messages": [{"role": "user", "content": "hi"}],
        "temperature": 0.0,
        "stop": ["\n"],
        "max_tokens": 16,
    }
    embed = EngineRequest("r", "/v1/embeddings", "m", input=["a"])
    assert request_body(embed, "e") == {"model": "e", "input": "a"}
    with pytest.raises(InvalidRequestError, match="one input"):
        request_body(EngineRequest("r", "/v1/embeddings", "m", input=["a", "b"]), "e")


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (408, TransientEngineError),
        (429, TransientEngineError),
        (500, TransientEngineError),
        (503, TransientEngineError),
        (400, InvalidRequestError),
        (404, InvalidRequestError),
        (422, InvalidRequestError),
        (401, EngineDeadError),
        (403, EngineDeadError),
    ],
)
def test_server_statuses_map_to_retryable_permanent_or_dead(
    status: int, kind: type[Exception]
) -> None:
    error = error_for(status, "body", retry_after=None)
    assert type(error) is kind
    assert str(status) in str(error)


def test_retry_after_reads_seconds_and_http_dates() -> None:
    now = time.time()
    assert retry_after_s("7", now) == 7.0
    later = datetime.fromtimestamp(now, UTC) + timedelta(seconds=30)
    assert retry_after_s(format_datetime(later, usegmt=True), now) == pytest.approx(30, abs=1)
    assert retry_after_s("soon", now) is None
    assert retry_after_s(None, now) is None
    assert error_for(429, "", retry_after=7.0).retry_after_s == 7.0  # type: ignore[attr-defined]


def test_remote_answers_keep_the_servers_token_counts() -> None:
    answer = {
        "choices": [{"message": {"content": "ok"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 11, "completion_tokens": 2},
    }
    output = output_of("/v1/chat/completions", answer)
    assert (output.text, output.prompt_tokens, output.completion_tokens) == ("ok", 11, 2)
    vector = output_of("/v1/embeddings", {"data": [{"embedding": [1, 2]}], "usage": {}})
    assert vector.embedding == [1.0, 2.0]


async def test_retries_wait_at_least_the_servers_retry_after() -> None:
    tries: list[float] = []
    started = time.monotonic()
    with pytest.raises(TransientEngineError):
        async for attempt in engine_retrying(3, initial_s=0.001, max_s=0.002):
            with attempt:
                tries.append(time.monotonic() - started)
                raise TransientEngineError("busy", retry_after_s=0.3)
    assert len(tries) == 3
    assert tries[1] - tries[0] >= 0.3 and tries[2] - tries[1] >= 0.3


@given(st.sampled_from(["high", "normal", "low"]), st.sampled_from(["high", "normal", "low"]))
def test_vllm_serves_higher_lanes_first(a: str, b: str) -> None:
    order = ["high", "normal", "low"]
    assert (vllm_priority(a) < vllm_priority(b)) == (order.index(a) < order.index(b))


def test_served_model_names() -> None:
    assert served_name_of("/models/qwen2-0.5b.Q4_K_M.gguf") == "qwen2-0.5b.Q4_K_M"
    assert served_name_of("Qwen/Qwen2.5-0.5B-Instruct") == "Qwen/Qwen2.5-0.5B-Instruct"
    options = InferenceOptions(model="/m/tiny.gguf")
    assert options.served_model == "tiny"
    assert InferenceOptions(model="/m/tiny.gguf", served_model_name="x").served_model == "x"


def test_models_listing_counts_live_healthy_workers_only() -> None:
    workers = [
        {"worker_id": "a", "alive": True, "healthy": True, "served_models": ["tiny"]},
        {"worker_id": "b", "alive": True, "healthy": True, "served_models": ["tiny"]},
        {"worker_id": "c", "alive": False, "healthy": True, "served_models": ["gone"]},
        {"worker_id": "d", "alive": True, "healthy": False, "served_models": ["sick"]},
        {
            "worker_id": "e",
            "alive": True,
            "healthy": True,
            "draining": True,
            "served_models": ["x"],
        },
    ]
    live = live_models(workers)
    assert live == {"tiny": {"a", "b"}}
    backlog = {Cell("kbatch-sim", Lane.LOW): 7}
    document = models_document(["kbatch-sim", "tiny"], live, backlog)
    assert document["object"] == "list"
    assert [(m["id"], m["kbatch"]["live_workers"]) for m in document["data"]] == [
        ("kbatch-sim", 0),
        ("tiny", 2),
    ]
    sim, tiny = document["data"]
    assert sim["kbatch"]["backlog"] == {"high": 0, "normal": 0, "low": 7}
    assert sim["kbatch"]["waiting_for_worker"] is True
    assert tiny["kbatch"]["waiting_for_worker"] is False
