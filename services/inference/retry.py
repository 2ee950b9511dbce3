"""The retry policy for engine calls: transient errors back off, the rest do not retry."""

from __future__ import annotations

from collections.abc import Callable

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential_jitter,
)

from services.errors import TransientEngineError

# A server asking for longer than this is treated as asking for this long: the request
# goes back to its retries or the DLQ instead of holding an in-flight slot for hours.
MAX_RETRY_AFTER_S = 300.0


def _honouring_retry_after(initial_s: float, max_s: float) -> Callable[[RetryCallState], float]:
    backoff = wait_exponential_jitter(multiplier=initial_s, max=max_s, jitter=initial_s)

    def wait(state: RetryCallState) -> float:
        failure = state.outcome.exception() if state.outcome is not None else None
        hinted = getattr(failure, "retry_after_s", None) or 0.0
        return max(backoff(state), min(hinted, MAX_RETRY_AFTER_S))

    return wait


def engine_retrying(max_attempts: int, initial_s: float, max_s: float) -> AsyncRetrying:
    """Exponential backoff with jitter and a cap, never sooner than the server's
    Retry-After; only TransientEngineError is retried."""
    return AsyncRetrying(
        stop=stop_after_attempt(max_attempts),
        wait=_honouring_retry_after(initial_s, max_s),
        retry=retry_if_exception_type(TransientEngineError),
        reraise=True,
    )
