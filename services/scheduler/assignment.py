"""The assignment decision (pure): which worker consumes which request partitions.

Rules, in the order they apply:
- Only healthy workers that are not draining hold partitions; none exceeds its capacity.
- A partition stays where it is unless a rule forces a move: every move costs a
  transaction fence and an engine warm-up.
- Partitions are placed in priority order: those with backlog before drained ones,
  then by lane (high, normal, low), then by backlog. A partition that outranks one
  already placed may displace it when no free slot is left (a drained partition
  gives its slot to one with work; a low one gives way to a high one).
- Pools: high and normal lanes prefer dedicated workers, low prefers spot; each
  falls back to the other pool when its own is full.
- What cannot be placed waits, and is placed in the first pass that frees room.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from services.lanes import LANE_ORDER, Lane


class Pool(StrEnum):
    DEDICATED = "dedicated"
    SPOT = "spot"


POOL_PREFERENCE: dict[Lane, tuple[Pool, Pool]] = {
    Lane.HIGH: (Pool.DEDICATED, Pool.SPOT),
    Lane.NORMAL: (Pool.DEDICATED, Pool.SPOT),
    Lane.LOW: (Pool.SPOT, Pool.DEDICATED),
}


@dataclass(frozen=True)
class WorkerView:
    """What the scheduler knows of one live worker."""

    worker_id: str
    pool: Pool
    capacity: int
    healthy: bool = True
    draining: bool = False

    @property
    def eligible(self) -> bool:
        return self.healthy and not self.draining and self.capacity > 0


@dataclass(frozen=True)
class PartitionView:
    """One requests-topic partition: its lane and how many requests wait in it."""

    partition: int
    lane: Lane
    backlog: int

    def rank(self) -> tuple[int, int, int, int]:
        """Sort key: smaller places first."""
        return (
            0 if self.backlog > 0 else 1,
            LANE_ORDER.index(self.lane),
            -self.backlog,
            self.partition,
        )

    def outranks(self, other: PartitionView) -> bool:
        """Strictly more deserving of a slot: only a partition with work displaces, so
        drained partitions never trade places (a move costs a fence for nothing)."""
        return self.backlog > 0 and self.rank()[:2] < other.rank()[:2]


@dataclass(frozen=True)
class Assignment:
    """The decision: each eligible worker's partitions, and those left waiting."""

    by_worker: Mapping[str, frozenset[int]]
    waiting: tuple[int, ...] = ()
    moved: frozenset[int] = field(default_factory=frozenset)

    def owner_of(self, partition: int) -> str | None:
        for worker_id, partitions in self.by_worker.items():
            if partition in partitions:
                return worker_id
        return None


def assign(
    workers: Iterable[WorkerView],
    partitions: Iterable[PartitionView],
    current: Mapping[str, Iterable[int]],
) -> Assignment:
    """Decide the next assignment from the fleet, the partitions and the current one."""
    eligible = sorted((w for w in workers if w.eligible), key=lambda w: w.worker_id)
    by_partition = {p.partition: p for p in partitions}
    placed: dict[str, list[PartitionView]] = {w.worker_id: [] for w in eligible}
    capacity = {w.worker_id: w.capacity for w in eligible}
    pool_of = {w.worker_id: w.pool for w in eligible}

    kept = _keep_current(placed, capacity, by_partition, current)
    remaining = sorted(
        (p for p in by_partition.values() if p.partition not in kept), key=PartitionView.rank
    )
    waiting: list[int] = []
    for part in remaining:
        worker_id = _free_slot(part, placed, capacity, pool_of)
        if worker_id is None:
            worker_id = _displace(part, placed, pool_of, waiting)
        if worker_id is None:
            waiting.append(part.partition)
        else:
            placed[worker_id].append(part)

    previous = {p: w for w, ps in current.items() for p in ps}
    by_worker = {w: frozenset(p.partition for p in ps) for w, ps in placed.items()}
    moved = frozenset(
        p for w, ps in by_worker.items() for p in ps if previous.get(p) not in (None, w)
    )
    return Assignment(by_worker, tuple(sorted(waiting)), moved)


def _keep_current(
    placed: dict[str, list[PartitionView]],
    capacity: Mapping[str, int],
    by_partition: Mapping[int, PartitionView],
    current: Mapping[str, Iterable[int]],
) -> set[int]:
    """Keep every current placement a rule allows; a shrunk capacity keeps the best."""
    kept: set[int] = set()
    for worker_id, partitions in current.items():
        if worker_id not in placed:
            continue
        views = sorted(
            (by_partition[p] for p in set(partitions) if p in by_partition and p not in kept),
            key=PartitionView.rank,
        )
        for view in views[: capacity[worker_id]]:
            placed[worker_id].append(view)
            kept.add(view.partition)
    return kept


def _free_slot(
    part: PartitionView,
    placed: Mapping[str, list[PartitionView]],
    capacity: Mapping[str, int],
    pool_of: Mapping[str, Pool],
) -> str | None:
    """The least-loaded worker with room, in the lane's preferred pool first."""
    for pool in POOL_PREFERENCE[part.lane]:
        candidates = [w for w, ps in placed.items() if pool_of[w] is pool and len(ps) < capacity[w]]
        if candidates:
            return min(candidates, key=lambda w: (len(placed[w]) / capacity[w], w))
    return None


def _displace(
    part: PartitionView,
    placed: dict[str, list[PartitionView]],
    pool_of: Mapping[str, Pool],
    waiting: list[int],
) -> str | None:
    """Give `part` the slot of the least deserving placed partition it outranks."""
    preferred = POOL_PREFERENCE[part.lane]
    victims = [
        (other.rank(), preferred.index(pool_of[w]), w, other)
        for w, ps in placed.items()
        for other in ps
        if part.outranks(other)
    ]
    if not victims:
        return None
    _, _, worker_id, victim = max(victims, key=lambda v: (v[0], -v[1], v[2]))
    placed[worker_id].remove(victim)
    waiting.append(victim.partition)
    return worker_id


def publishable(
    decided: Mapping[str, frozenset[int]], reported: Mapping[str, frozenset[int]]
) -> dict[str, frozenset[int]]:
    """What to publish now: a moved partition reaches its new owner only once its
    old owner (a live worker, from its heartbeat) reports it released.

    The new owner's transactional fencing keeps a premature handover correct; this
    keeps it cheap, since the old owner commits its finished work instead of losing it.
    """
    still_held = {p: w for w, ps in reported.items() for p in ps}
    return {
        worker_id: frozenset(p for p in ps if still_held.get(p, worker_id) == worker_id)
        for worker_id, ps in decided.items()
    }


def to_resend(
    published: Mapping[str, frozenset[int]],
    reported: Mapping[str, frozenset[int]],
    missing_since: Mapping[tuple[str, int], int],
    now_ms: int,
    after_ms: int,
) -> tuple[set[str], dict[tuple[str, int], int]]:
    """Live workers whose published list should be sent again, and the updated clock.

    A worker drops a partition its commit was fenced on and waits for a new assignment
    (retaking at once would fence a real new owner in turn). A fence can also come from
    a transaction coordinator's failover (the producer's epoch bumped, no new owner):
    then no new assignment ever comes, and the partition sat unowned (seen in the
    cluster chaos test). A partition published to a live worker that it has not
    reported owning for `after_ms` gets that worker's list sent again; its clock
    restarts, so a worker still failing to take it is reminded every `after_ms`.
    """
    resend: set[str] = set()
    clock: dict[tuple[str, int], int] = {}
    for worker_id, owned in reported.items():
        for partition in published.get(worker_id, frozenset()) - owned:
            key = (worker_id, partition)
            since = missing_since.get(key, now_ms)
            if now_ms - since >= after_ms:
                resend.add(worker_id)
                since = now_ms
            clock[key] = since
    return resend, clock
