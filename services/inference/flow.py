"""Flow control (pure): which owned partitions to pause, how many records to take."""

from __future__ import annotations

from collections.abc import Mapping, Set
from dataclasses import dataclass

from services.lanes import LANE_ORDER, Lane


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


def paused_partitions(
    state: FlowState, owned: Set[int], releasing: Set[int], gated: Set[int] = frozenset()
) -> set[int]:
    """Partitions to pause: all while the worker takes no work at all (stopping, unhealthy),
    else those being released and those a higher lane's backlog holds back.

    A full in-flight cap pauses nothing: the worker just stops taking records for a
    moment, and librdkafka's bounded prefetch queue holds the next ones. Pausing would
    purge that queue and cost a fetch round trip on every resume, which starved the
    engine (zero-cost bench: 230 requests/s with pausing, see the README).
    """
    if not state.accepting:
        return set(owned)
    return set(owned) & (set(releasing) | set(gated))


def lane_gate(lanes: Mapping[int, Lane], backlog: Mapping[int, int | None]) -> set[int]:
    """Partitions to hold back: those in a lower lane than the best lane with backlog.

    A worker holding high and low partitions works on the low ones only when the
    high ones have nothing waiting; an unknown backlog (not fetched yet) counts as none.
    """
    waiting = [LANE_ORDER.index(lanes[p]) for p, n in backlog.items() if n and p in lanes]
    if not waiting:
        return set()
    best = min(waiting)
    return {p for p, lane in lanes.items() if LANE_ORDER.index(lane) > best}
