"""Flow control (pure): which owned partitions to pause, how many records to take."""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Mapping, Set
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from services.lanes import LANE_ORDER, Lane

# A partition as the worker keys it (a model and a partition of its topic).
Key = TypeVar("Key", bound=Hashable)


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
    state: FlowState, owned: Set[Key], releasing: Set[Key], gated: Set[Key] = frozenset()
) -> set[Key]:
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
class LaneGate(Generic[Key]):
    """This round's lane decision."""

    busy_rank: int | None = None  # the best lane with records waiting (LANE_ORDER index)
    paused: frozenset[Key] = frozenset()  # lower-lane partitions not to fetch from now


def lane_gate(
    lanes: Mapping[Key, Lane],
    backlog: Mapping[Key, int | None],
    held: int,
    hold_window: int,
) -> LaneGate[Key]:
    """The best lane with records waiting, and the lower-lane partitions to pause.

    While a higher lane has records waiting, lower-lane records the worker takes are
    held (see `starts_now`), up to `hold_window` of them; past it their partitions
    pause. They are taken rather than left to the consumer because it hands records
    over from one queue: a paused busy lane (to let the lower ones through) lost its
    prefetched records, and a refetch on every turn cut a fast engine's high lane to a
    fifth; lower lanes left unpaused with nothing taken put thousands of their records
    in front of the high lane's. An unknown backlog (not measured yet) counts as none.
    """
    waiting = {p for p, n in backlog.items() if n and p in lanes}
    if not waiting:
        return LaneGate()
    rank = {p: LANE_ORDER.index(lane) for p, lane in lanes.items()}
    best = min(rank[p] for p in waiting)
    if held < hold_window:
        return LaneGate(best)
    return LaneGate(best, frozenset(p for p, r in rank.items() if r > best))


def starts_now(lane_rank: int, busy_rank: int | None, owed: int) -> bool:
    """Whether a taken record runs now, or is held until its lane is owed a record."""
    return busy_rank is None or lane_rank <= busy_rank or owed >= 1


@dataclass
class LaneRound:
    """One round of taking records: what is owed to lower lanes and what was started."""

    busy_rank: int | None
    owed: int
    started: Counter[int] = field(default_factory=Counter)  # records run, by lane rank

    def take(self, lane_rank: int) -> str | None:
        """Count a record run now; the engine priority it runs at, when not its own's.

        A lower-lane record run for its share while a higher lane is busy runs at the
        busy lane's priority: an engine that schedules by priority (vLLM) would
        otherwise keep it waiting behind that lane, and the share with it."""
        self.started[lane_rank] += 1
        if self.busy_rank is None or lane_rank <= self.busy_rank:
            return None
        self.owed -= 1
        return LANE_ORDER[self.busy_rank].value


def lane_credit(
    credit: float, share: float, busy_rank: int | None, taken: Mapping[int, int], burst: int
) -> float:
    """The lower lanes' owed records after a round that took `taken` (records by lane
    rank) while `busy_rank` was the best lane with records waiting.

    Each record of the busy lane (or above) earns share / (1 - share) of a lower-lane
    record, each lower-lane record spends one: under two saturated lanes the lower
    ones take `share` of the records, and never more. What stays owed after a round is
    capped at `burst` records, so a lower lane that had nothing waiting cannot hoard a
    large batch; under load it never reaches the cap if `burst` exceeds one round's
    earnings by one (a round's earnings are spent in the next).
    """
    if busy_rank is None or share <= 0:
        return credit if share > 0 else 0.0
    earned = sum(n for r, n in taken.items() if r <= busy_rank) * share / (1 - share)
    spent = sum(n for r, n in taken.items() if r > busy_rank)
    return max(0.0, min(float(burst), credit + earned - spent))
