"""The assignment decision (pure): which worker consumes which request partitions.

A partition is one partition of one model's requests topic (`ModelPartition`). Rules,
in the order they apply:
- Only healthy workers that are not draining hold partitions, only of models they
  serve; none exceeds its capacity, one capacity shared by all its models.
- A partition stays where it is unless a rule forces a move: every move costs a
  transaction fence and an engine warm-up.
- Partitions are placed in priority order: those with backlog before drained ones,
  then by lane (high, normal, low), then models in turn (each model's busiest first),
  so no model waits behind another model's larger backlog. A partition that outranks
  one already placed may displace it when no free slot is left: a drained partition
  gives its slot to one with work, a low one gives way to a high one, and in the same
  lane, on a worker serving both, a model holding two partitions more than another
  gives one up.
- Pools: high and normal lanes prefer dedicated workers, low prefers spot; each
  falls back to the other pool when its own is full.
- Partitions with backlog are spread by load: a worker joining (or one with idle
  slots) takes busy partitions from the most loaded workers serving their models, one
  at a time while the move leaves the donor at least as loaded, so a join moves about
  its fair share of them and no more.
- What cannot be placed waits, and is placed in the first pass that frees room.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from services.lanes import LANE_ORDER, Lane
from services.routing import ModelPartition
from services.scheduler.slots import FreeSlots


class Pool(StrEnum):
    DEDICATED = "dedicated"
    SPOT = "spot"


POOL_PREFERENCE: dict[Lane, tuple[Pool, Pool]] = {
    Lane.HIGH: (Pool.DEDICATED, Pool.SPOT),
    Lane.NORMAL: (Pool.DEDICATED, Pool.SPOT),
    Lane.LOW: (Pool.SPOT, Pool.DEDICATED),
}

_SETTLING_ROUNDS = 8
Tier = tuple[int, int]  # (0 with backlog else 1, lane index): smaller places first


@dataclass(frozen=True)
class WorkerView:
    """What the scheduler knows of one live worker."""

    worker_id: str
    pool: Pool
    capacity: int
    models: frozenset[str] = frozenset()
    healthy: bool = True
    draining: bool = False

    @property
    def eligible(self) -> bool:
        return self.healthy and not self.draining and self.capacity > 0 and bool(self.models)


@dataclass(frozen=True, eq=False)  # identity: a pass moves these between lists
class PartitionView:
    """One partition of a model's requests topic: its lane and the requests waiting."""

    where: ModelPartition
    lane: Lane
    backlog: int
    model: str = field(init=False)
    tier: Tier = field(init=False)

    def __post_init__(self) -> None:
        # Read a hundred thousand times a pass on a large fleet: stored, not derived.
        object.__setattr__(self, "model", self.where.model)
        object.__setattr__(
            self, "tier", (0 if self.backlog > 0 else 1, LANE_ORDER.index(self.lane))
        )

    def outranks(self, other: PartitionView) -> bool:
        """Strictly more deserving of a slot: only a partition with work displaces, so
        drained partitions never trade places (a move costs a fence for nothing)."""
        return self.backlog > 0 and self.tier < other.tier


@dataclass(frozen=True)
class Assignment:
    """The decision: each eligible worker's partitions, and those left waiting."""

    by_worker: Mapping[str, frozenset[ModelPartition]]
    waiting: tuple[ModelPartition, ...] = ()
    moved: frozenset[ModelPartition] = field(default_factory=frozenset)

    def owner_of(self, where: ModelPartition) -> str | None:
        for worker_id, partitions in self.by_worker.items():
            if where in partitions:
                return worker_id
        return None


def assign(
    workers: Iterable[WorkerView],
    partitions: Iterable[PartitionView],
    current: Mapping[str, Iterable[ModelPartition]],
) -> Assignment:
    """Decide the next assignment from the fleet, the partitions and the current one."""
    fleet = [w for w in workers if w.eligible]
    by_where = {p.where: p for p in partitions}
    plan = _Plan(fleet)
    kept = plan.keep(current, by_where)
    remaining = _in_turn(by_where.values(), kept)
    for part in remaining:
        plan.place(part)
    for _ in range(_SETTLING_ROUNDS):
        # Each can open a move for the other (a spread frees a donor's slot; a placed
        # partition changes a worker's load); settled in a round or two in practice.
        if not (plan.spread() | plan.retry_waiting()):
            break
    previous = {p: w for w, ps in current.items() for p in ps}
    by_worker = {w: frozenset(p.where for p in ps) for w, ps in plan.placed.items()}
    moved = frozenset(
        p for w, ps in by_worker.items() for p in ps if previous.get(p) not in (None, w)
    )
    return Assignment(by_worker, tuple(sorted(v.where for v in plan.waiting)), moved)


def _in_turn(parts: Iterable[PartitionView], kept: set[ModelPartition]) -> list[PartitionView]:
    """The partitions not kept, in placing order: by tier, then the models take turns
    (each model's n-th partition of a tier before any model's n+1-th, counting the
    partitions it keeps), busiest first within a model."""
    groups: dict[tuple[str, Tier], list[PartitionView]] = {}
    for part in parts:
        groups.setdefault((part.model, part.tier), []).append(part)
    ordered: list[tuple[Tier, int, int, ModelPartition, PartitionView]] = []
    for (_, tier), members in groups.items():
        members.sort(key=lambda p: (p.where not in kept, -p.backlog, p.where))
        for turn, part in enumerate(members):
            if part.where not in kept:
                ordered.append((tier, turn, -part.backlog, part.where, part))
    ordered.sort(key=lambda item: item[:4])
    return [item[-1] for item in ordered]


class _Plan:
    """The placement being built in one pass."""

    def __init__(self, fleet: list[WorkerView]) -> None:
        self.fleet = {w.worker_id: w for w in fleet}
        self.placed: dict[str, list[PartitionView]] = {w.worker_id: [] for w in fleet}
        self.load = {w.worker_id: 0 for w in fleet}
        self.waiting: list[PartitionView] = []
        self.free = sum(w.capacity for w in fleet)
        self.serving: dict[str, list[str]] = {}
        for w in sorted(fleet, key=lambda w: w.worker_id):
            for model in w.models:
                self.serving.setdefault(model, []).append(w.worker_id)
        self.version = dict.fromkeys(self.placed, 0)  # grows with each change of its placements
        self._summaries: dict[str, tuple[int, PartitionView | None, Counter[tuple[str, Tier]]]] = {}
        self.failed: dict[tuple[str, Tier], tuple[int, ...]] = {}  # no victim, at these versions
        self.slots = FreeSlots(
            {w.worker_id: w.models for w in fleet},
            {w.worker_id: w.pool for w in fleet},
            {w.worker_id: w.capacity for w in fleet},
            self.load,
        )

    def keep(
        self,
        current: Mapping[str, Iterable[ModelPartition]],
        by_where: Mapping[ModelPartition, PartitionView],
    ) -> set[ModelPartition]:
        """Keep every current placement a rule allows; a shrunk capacity keeps the best."""
        kept: set[ModelPartition] = set()
        for worker_id, partitions in sorted(current.items()):
            worker = self.fleet.get(worker_id)
            if worker is None:
                continue
            views = sorted(
                (
                    by_where[p]
                    for p in set(partitions)
                    if p in by_where and p not in kept and p.model in worker.models
                ),
                key=lambda v: (v.tier, -v.backlog, v.where),
            )
            for view in views[: worker.capacity]:
                self._put(worker_id, view)
                kept.add(view.where)
        self.slots.changed(self.fleet)
        return kept

    def place(self, part: PartitionView) -> bool:
        """Into a free slot, else in place of a less deserving partition, else waiting."""
        worker_id = None
        if self.free > 0:
            worker_id = self.slots.find(part.model, POOL_PREFERENCE[part.lane])
        if worker_id is None and part.backlog > 0:
            worker_id = self._displace(part)
        if worker_id is None:
            self._wait(part)
            return False
        self._put(worker_id, part)
        return True

    def retry_waiting(self) -> bool:
        """Place what waits where the pass freed room (a spread's donor, a displaced
        partition that fits elsewhere or outranks one placed after its turn); repeat
        while anything is placed. A partition that can neither find room (none is free)
        nor a victim (its last search failed and the workers serving its model have not
        changed since) is not tried again."""
        any_placed = False
        while True:
            hopeless = [v for v in self.waiting if self._hopeless(v)]
            views = sorted(
                (v for v in self.waiting if not self._hopeless(v)),
                key=lambda v: (v.tier, -v.backlog, v.where),
            )
            if not views:
                break
            self.waiting = hopeless
            placed = [self.place(view) for view in views]
            if not any(placed):
                break
            any_placed = True
        return any_placed

    def _hopeless(self, part: PartitionView) -> bool:
        if self.free > 0:
            return False
        if part.backlog == 0:
            return True  # a drained partition only takes free room
        serving = self.serving.get(part.model, ())
        versions = tuple(self.version[w] for w in serving)
        return self.failed.get((part.model, part.tier)) == versions

    def _wait(self, part: PartitionView) -> None:
        self.waiting.append(part)

    def spread(self) -> bool:
        """Move busy partitions from the most loaded workers to the least, one at a time,
        while each move leaves its donor at least as loaded as its receiver. (Each move
        lowers the sum of busy^2/capacity, so this ends.)"""
        busy = {w: sum(1 for p in ps if p.backlog > 0) for w, ps in self.placed.items()}
        moving, any_moved = True, False
        while moving:
            moving = False
            for receiver in sorted(busy, key=lambda w: (busy[w] / self.fleet[w].capacity, w)):
                while busy[receiver] < self.fleet[receiver].capacity:
                    move = self._donation(receiver, busy)
                    if move is None:
                        break
                    donor, part = move
                    self._move(donor, receiver, part)
                    busy[donor] -= 1
                    busy[receiver] += 1
                    moving = any_moved = True
        return any_moved

    def _donation(self, receiver: str, busy: Mapping[str, int]) -> tuple[str, PartitionView] | None:
        """The most loaded worker sharing a model with `receiver` that stays at least as
        loaded after giving it a busy partition, and that partition."""
        worker = self.fleet[receiver]
        after_receive = (busy[receiver] + 1) / worker.capacity
        donors = {d for model in worker.models for d in self.serving.get(model, ())}
        for donor in sorted(donors, key=lambda d: (-busy[d] / self.fleet[d].capacity, d)):
            if (busy[donor] - 1) / self.fleet[donor].capacity < after_receive:
                return None  # sorted: no donor further on is loaded enough
            movable = [
                p
                for p in self.placed[donor]
                if p.backlog > 0
                and p.where.model in worker.models
                and self._pool_ok(p, donor, receiver)
            ]
            if movable:
                return donor, max(movable, key=lambda p: (p.tier, p.where))
        return None

    def _move(self, donor: str, receiver: str, part: PartitionView) -> None:
        """`part` from donor to receiver; a full receiver gives up a drained partition."""
        self._take(donor, part)
        if len(self.placed[receiver]) >= self.fleet[receiver].capacity:
            idle = max(
                (p for p in self.placed[receiver] if p.backlog == 0),
                key=lambda p: (p.tier, p.where),
            )
            self._take(receiver, idle)
            self._wait(idle)
        self._put(receiver, part)
        self.slots.changed([donor, receiver])

    def _pool_ok(self, part: PartitionView, donor: str, receiver: str) -> bool:
        preference = POOL_PREFERENCE[part.lane]
        return preference.index(self.fleet[receiver].pool) <= preference.index(
            self.fleet[donor].pool
        )

    def _displace(self, part: PartitionView) -> str | None:
        """Give `part` the slot of the least deserving placed partition it outranks (a
        worse tier first), else of a model holding two more of its tier on a worker."""
        memo = (part.model, part.tier)
        serving = self.serving.get(part.model, ())
        versions = tuple(self.version[w] for w in serving)
        if self.failed.get(memo) == versions:
            return None  # nothing placed where it may go changed since it found no victim
        preferred = POOL_PREFERENCE[part.lane]
        best: tuple[tuple[object, ...], str, PartitionView] | None = None
        for worker_id in serving:
            victim, key = self._victim_on(worker_id, part)
            if victim is None:
                continue
            full = (*key, -preferred.index(self.fleet[worker_id].pool), worker_id, victim.where)
            if best is None or full > best[0]:
                best = (full, worker_id, victim)
        if best is None:
            self.failed[memo] = versions
            return None
        _, worker_id, victim = best
        self._take(worker_id, victim)
        self._wait(victim)
        return worker_id

    def _victim_on(
        self, worker_id: str, part: PartitionView
    ) -> tuple[PartitionView | None, tuple[int, Tier, int, int]]:
        """The partition `part` would displace on one worker, and how deserving it is
        of keeping its slot (larger: less)."""
        worst, held = self._summary(worker_id)
        if worst is not None and part.outranks(worst):
            return worst, (1, worst.tier, 0, -worst.backlog)
        # Fair shares are per worker: what its capacity gives each model it serves.
        mine = held[(part.model, part.tier)]
        crowded = [
            m for (m, t), n in held.items() if t == part.tier and m != part.model and n > mine + 1
        ]
        if not crowded:
            return None, (0, part.tier, 0, 0)
        victim = max(
            (p for p in self.placed[worker_id] if p.tier == part.tier and p.model in crowded),
            key=lambda p: (held[(p.model, p.tier)], -p.backlog, p.where),
        )
        return victim, (0, victim.tier, held[(victim.model, victim.tier)], -victim.backlog)

    def _summary(self, worker_id: str) -> tuple[PartitionView | None, Counter[tuple[str, Tier]]]:
        """One worker's least deserving partition and its partitions per (model, tier),
        computed again only after its placements change."""
        version, worst, held = self._summaries.get(worker_id, (-1, None, Counter()))
        if version != self.version[worker_id]:
            placed = self.placed[worker_id]
            worst = max(placed, key=lambda p: (p.tier, -p.backlog, p.where), default=None)
            held = Counter((p.model, p.tier) for p in placed)
            self._summaries[worker_id] = (self.version[worker_id], worst, held)
        return worst, held

    def _put(self, worker_id: str, part: PartitionView) -> None:
        self.placed[worker_id].append(part)
        self.load[worker_id] += 1
        self.free -= 1
        self.version[worker_id] += 1

    def _take(self, worker_id: str, part: PartitionView) -> None:
        self.placed[worker_id].remove(part)
        self.load[worker_id] -= 1
        self.free += 1
        self.version[worker_id] += 1


def publishable(
    decided: Mapping[str, frozenset[ModelPartition]],
    reported: Mapping[str, frozenset[ModelPartition]],
) -> dict[str, frozenset[ModelPartition]]:
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
    published: Mapping[str, frozenset[ModelPartition]],
    reported: Mapping[str, frozenset[ModelPartition]],
    missing_since: Mapping[tuple[str, ModelPartition], int],
    now_ms: int,
    after_ms: int,
) -> tuple[set[str], dict[tuple[str, ModelPartition], int]]:
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
    clock: dict[tuple[str, ModelPartition], int] = {}
    for worker_id, owned in reported.items():
        for partition in published.get(worker_id, frozenset()) - owned:
            key = (worker_id, partition)
            since = missing_since.get(key, now_ms)
            if now_ms - since >= after_ms:
                resend.add(worker_id)
                since = now_ms
            clock[key] = since
    return resend, clock
