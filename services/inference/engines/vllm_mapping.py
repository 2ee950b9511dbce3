"""Pure mappings between kbatch requests and vLLM's inputs and outputs (no vLLM import)."""

from __future__ import annotations

from collections.abc import Sequence

from services.inference.engines.base import EngineOutput

# vLLM's priority scheduling serves the lowest value first.
LANE_PRIORITY = {"high": 0, "normal": 1, "low": 2}


def vllm_priority(lane: str) -> int:
    """The `priority=` vLLM's generate/encode take for a request of this lane."""
    return LANE_PRIORITY.get(lane, LANE_PRIORITY["normal"])


def generation_output(
    prompt_token_ids: Sequence[int] | None,
    text: str,
    token_ids: Sequence[int],
    finish_reason: str | None,
    num_cached_tokens: int | None,
) -> EngineOutput:
    """One finished vLLM CompletionOutput as an EngineOutput; `num_cached_tokens`: the
    RequestOutput's count of prompt tokens its prefix cache held."""
    return EngineOutput(
        prompt_tokens=len(prompt_token_ids or ()),
        completion_tokens=len(token_ids),
        text=text,
        finish_reason=finish_reason,
        cached_tokens=num_cached_tokens,
    )


def embedding_output(
    prompt_token_ids: Sequence[int] | None, values: Sequence[float], num_cached_tokens: int
) -> EngineOutput:
    """One pooled vector (task="embed": one per input, not one per token)."""
    return EngineOutput(
        prompt_tokens=len(prompt_token_ids or ()),
        completion_tokens=0,
        embedding=[float(v) for v in values],
        cached_tokens=num_cached_tokens,
    )


# The finish reasons with which vLLM ends a request that has no answer (its FinishReason):
# "error" is a request-level internal error vLLM itself calls retryable, "abort" an abort
# inside vLLM (a paused engine, its own bookkeeping), never one kbatch asked for, since a
# request kbatch aborts is one whose task was cancelled.
UNANSWERED_FINISH_REASONS = frozenset({"error", "abort"})


def unanswered(finish_reason: str | None) -> bool:
    """Whether a finished vLLM output is a failure to retry rather than an answer."""
    return finish_reason in UNANSWERED_FINISH_REASONS
