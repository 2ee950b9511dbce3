"""The OpenAI request parameters every engine maps from, and the refusals they share (pure)."""

from __future__ import annotations

import re
from typing import Any

from services.errors import InvalidRequestError
from services.inference.engines.base import SAMPLING_FIELDS, EngineRequest

EMBEDDINGS = "/v1/embeddings"

# OpenAI's legacy completions default; kbatch applies it to every endpoint so that a line
# without max_tokens costs the same on every engine instead of running to the context length.
DEFAULT_MAX_TOKENS = 16

# How each engine words "the prompt does not fit": vLLM's validation error, llama.cpp's
# ValueError, and the 400 body of OpenAI-compatible servers (OpenAI, vLLM serve,
# llama_cpp.server, SGLang, TGI).
_CONTEXT_LENGTH = re.compile(
    r"maximum model length|max_model_len|exceed context window|maximum context length"
    r"|context length exceeded|context_length_exceeded|longer than the model's context",
    re.IGNORECASE,
)


def sampling_kwargs(
    request: EngineRequest, default_max_tokens: int = DEFAULT_MAX_TOKENS
) -> dict[str, Any]:
    """The request's sampling fields under their OpenAI names, max_tokens always set."""
    kwargs = {k: request.sampling[k] for k in SAMPLING_FIELDS if k in request.sampling}
    kwargs.setdefault("max_tokens", default_max_tokens)
    return kwargs


def chat_messages(request: EngineRequest) -> list[dict[str, str]]:
    """Messages in the shape chat templates take (no null fields)."""
    return [
        {"role": m["role"], "content": m["content"]}
        | ({"name": m["name"]} if m.get("name") else {})
        for m in request.messages or []
    ]


def is_context_length_error(message: str) -> bool:
    """Whether an engine's refusal says the prompt (plus max_tokens) exceeds its context."""
    return _CONTEXT_LENGTH.search(message) is not None


def check_task(engine: str, task: str, served_model: str, endpoint: str) -> None:
    """Refuse a request the loaded task cannot answer: embeddings need an `embed` worker,
    completions a `generate` one (the model is loaded for one or the other)."""
    embedding_worker = task == "embed"
    if (endpoint == EMBEDDINGS) != embedding_worker:
        loaded = "embeddings" if embedding_worker else "generation"
        raise InvalidRequestError(
            f"this worker runs {served_model} for {loaded}; {endpoint} requests need a "
            f"worker with KBATCH_INFERENCE__{engine.upper()}__TASK="
            f"{'generate' if embedding_worker else 'embed'}"
        )
