"""How much work a worker keeps in flight and uncommitted (pure: settings and the
engine's concurrency now, which shrinks on out-of-memory)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from services.inference.settings import (
    MIN_DEFAULT_IN_FLIGHT,
    MIN_DEFAULT_UNCOMMITTED,
    InferenceOptions,
)


@dataclass(frozen=True)
class Sizing:
    """The bounds on a worker's intake for an engine running `engine_concurrency` at once."""

    options: InferenceOptions
    engine_concurrency: int

    @property
    def in_flight_cap(self) -> int:
        if self.options.in_flight_cap:
            return self.options.in_flight_cap
        # llama.cpp instances take queued requests by prefix: the queue is the window.
        window = self.options.llamacpp.prefix_window if self.options.engine == "llamacpp" else 0
        concurrency = self.engine_concurrency
        return max(2 * concurrency, MIN_DEFAULT_IN_FLIGHT, concurrency + window)

    @property
    def max_uncommitted(self) -> int:
        return self.options.max_uncommitted or max(4 * self.in_flight_cap, MIN_DEFAULT_UNCOMMITTED)

    @property
    def lower_lane_burst(self) -> int:
        """Most lower-lane records owed at once: what one round can earn them (a round
        starts at most the in-flight cap), and one more."""
        share = self.options.lower_lane_share
        return math.ceil(self.in_flight_cap * share / (1 - share)) + 1

    @property
    def hold_window(self) -> int:
        """Most lower-lane records held for their share: an eighth of the uncommitted
        window, so that held records never stop intake; none under strict priority.
        Enough to last the consumer's queue latency: a resumed lower lane's records
        come after everything prefetched for the busy one."""
        return self.max_uncommitted // 8 if self.options.lower_lane_share > 0 else 0

    @property
    def commit_size_bound(self) -> int:
        """Ready outputs that start a commit before its interval is up."""
        # The size trigger must fire before the uncommitted bound stalls consumption.
        return min(self.options.commit_max_records, self.max_uncommitted // 2)
