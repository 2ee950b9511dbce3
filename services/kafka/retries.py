"""Riding out a slow or unavailable cluster: capped, jittered back-off, counted.

A retryable Kafka failure (a timeout, no leader, no coordinator) is ordinary during a
rolling restart; a service retries it, says so on /healthz and in
`kbatch_kafka_retries_total`, and exits only on fatal errors.
"""

from __future__ import annotations

import random

from prometheus_client import Counter

KAFKA_RETRIES = Counter(
    "kbatch_kafka_retries_total",
    "Kafka operations that failed retryably and will be tried again",
    ["service", "operation"],
)


def backoff_s(
    failures: int, initial_s: float = 0.5, cap_s: float = 30.0, draw: float = 1.0
) -> float:
    """Seconds to wait after the `failures`-th failure in a row: doubling from `initial_s`,
    capped at `cap_s`, scaled by a jitter `draw` in [0, 1] to between half and all of it."""
    ceiling = min(cap_s, initial_s * 2.0 ** min(max(failures, 1) - 1, 30))
    return ceiling * (0.5 + 0.5 * draw)


def jittered_backoff_s(failures: int, initial_s: float = 0.5, cap_s: float = 30.0) -> float:
    return backoff_s(failures, initial_s, cap_s, random.random())
