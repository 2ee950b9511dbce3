"""The retry policy for engine calls: transient errors back off, the rest do not retry."""

from __future__ import annotations

from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential_jitter,
)

from services.errors import TransientEngineError


def engine_retrying(max_attempts: int, initial_s: float, max_s: float) -> AsyncRetrying:
    """Exponential backoff with jitter and a cap; only TransientEngineError is retried."""
    return AsyncRetrying(
        stop=stop_after_attempt(max_attempts),
        wait=wait_exponential_jitter(initial=initial_s, max=max_s, jitter=initial_s),
        retry=retry_if_exception_type(TransientEngineError),
        reraise=True,
    )
