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


@dataclass(frozen=True)
class LaneGate:
    """This round's lane decision: partitions held back, and a cap on records taken."""

    held: frozenset[int] = frozenset()
    budget: int | None = None  # the records owed to the lower lanes, in their turn
    busy_rank: int | None = None  # the best lane with records waiting (LANE_ORDER index)


def lane_gate(
    lanes: Mapping[int, Lane], backlog: Mapping[int, int | None], credit: float = 0.0
) -> LaneGate:
    """Hold lower lanes back while a higher lane has records waiting, except for the
    share they are owed (`credit`, in records: see `lane_credit`).

    A worker holding high and low partitions works on the low ones only when the high
    ones have nothing waiting, or when the low lanes' minimum share has earned them
    records: then it is the other way round for at most the records owed. The busy
    lane pauses for that turn because the consumer hands records over from one queue:
    its prefetched records, thousands under a backlog, would all come before the lower
    lanes' (measured: a share of 0 while high ran). An unknown backlog (not measured
    yet) counts as none.
    """
    waiting = {p for p, n in backlog.items() if n and p in lanes}
    if not waiting:
        return LaneGate()
    rank = {p: LANE_ORDER.index(lane) for p, lane in lanes.items()}
    best = min(rank[p] for p in waiting)
    lower = frozenset(p for p, r in rank.items() if r > best)
    owed = int(credit)
    if owed >= 1 and lower & waiting:
        return LaneGate(frozenset(lanes) - lower, owed, best)
    return LaneGate(lower, None, best)


def lane_credit(
    credit: float, share: float, busy_rank: int | None, taken: Mapping[int, int], burst: int
) -> float:
    """The lower lanes' owed records after a round that took `taken` (records by lane
    rank) while `busy_rank` was the best lane with records waiting.

    Each record of the busy lane (or above) earns share / (1 - share) of a lower-lane
    record, each lower-lane record spends one: under two saturated lanes the lower
    ones take `share` of the records, and never more. Credit is capped at `burst`
    records, so a lower lane that had nothing waiting cannot hoard a large batch.
    """
    if busy_rank is None or share <= 0:
        return credit if share > 0 else 0.0
    earned = sum(n for r, n in taken.items() if r <= busy_rank) * share / (1 - share)
    spent = sum(n for r, n in taken.items() if r > busy_rank)
    return max(0.0, min(float(burst), credit + earned) - spent)
