"""Flow control (pure): which owned partitions to pause, how many records to take."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FlowState:
    in_flight: int
    in_flight_cap: int
    uncommitted: int
    max_uncommitted: int
    accepting: bool  # False when stopping, draining or the GPU is unhealthy


def room(state: FlowState) -> int:
    """How many more records may be consumed now."""
    if not state.accepting:
        return 0
    return max(
        0, min(state.in_flight_cap - state.in_flight, state.max_uncommitted - state.uncommitted)
    )


def paused_partitions(state: FlowState, owned: set[int], releasing: set[int]) -> set[int]:
    """Pause everything while there is no room; always pause partitions being released."""
    if room(state) == 0:
        return set(owned)
    return owned & releasing
