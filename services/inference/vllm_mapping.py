"""Pure mappings between kbatch requests and vLLM's inputs and outputs (no vLLM import)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from services.inference.engine import SAMPLING_FIELDS, EngineOutput, EngineRequest


def sampling_kwargs(request: EngineRequest, default_max_tokens: int = 16) -> dict[str, Any]:
    """Keyword arguments for vllm.SamplingParams (OpenAI defaults max_tokens to 16)."""
    kwargs = {k: request.sampling[k] for k in SAMPLING_FIELDS if k in request.sampling}
    kwargs.setdefault("max_tokens", default_max_tokens)
    return kwargs


def chat_messages(request: EngineRequest) -> list[dict[str, str]]:
    """Messages in the shape a Hugging Face chat template takes."""
    return [
        {"role": m["role"], "content": m["content"]}
        | ({"name": m["name"]} if m.get("name") else {})
        for m in request.messages or []
    ]


def generation_output(
    prompt_token_ids: Sequence[int] | None,
    text: str,
    token_ids: Sequence[int],
    finish_reason: str | None,
) -> EngineOutput:
    """One finished vLLM CompletionOutput as an EngineOutput."""
    return EngineOutput(
        prompt_tokens=len(prompt_token_ids or ()),
        completion_tokens=len(token_ids),
        text=text,
        finish_reason=finish_reason,
    )


def embedding_output(
    prompt_token_ids: Sequence[int] | None, values: Sequence[float]
) -> EngineOutput:
    return EngineOutput(
        prompt_tokens=len(prompt_token_ids or ()),
        completion_tokens=0,
        embedding=[float(v) for v in values],
    )


def is_context_length_error(message: str) -> bool:
    """vLLM refuses over-long prompts with a ValueError naming the maximum model length."""
    lowered = message.lower()
    return "maximum model length" in lowered or "max_model_len" in lowered
