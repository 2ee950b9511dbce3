"""The placement built in one assignment pass: slots taken, displaced and spread."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from services.routing import ModelPartition
from services.scheduler.inputs import POOL_PREFERENCE, RANK, PartitionView, Tier, WorkerView
from services.scheduler.slots import FreeSlots


class Placement:
    """The placement being built in one pass (see assignment.py for the rules)."""

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
        self.held: dict[str, dict[tuple[str, Tier], int]] = {w.worker_id: {} for w in fleet}
        self._worst: dict[str, tuple[int, PartitionView | None]] = {}
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
                key=RANK,
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
            hopeless: list[PartitionView] = []
            views: list[PartitionView] = []
            versions: dict[str, tuple[int, ...]] = {}  # nothing is placed while sorting
            for view in self.waiting:
                (hopeless if self._hopeless(view, versions) else views).append(view)
            if not views:
                break
            views.sort(key=RANK)
            self.waiting = hopeless
            placed = [self.place(view) for view in views]
            if not any(placed):
                break
            any_placed = True
        return any_placed

    def _hopeless(self, part: PartitionView, versions: dict[str, tuple[int, ...]]) -> bool:
        if self.free > 0:
            return False
        if part.backlog == 0:
            return True  # a drained partition only takes free room
        serving = versions.get(part.model)
        if serving is None:
            serving = versions[part.model] = self._serving_versions(part.model)
        return self.failed.get(part.model_tier) == serving

    def _serving_versions(self, model: str) -> tuple[int, ...]:
        """The versions of the workers serving `model`: a failed victim search stays
        failed while they are unchanged."""
        return tuple(self.version[w] for w in self.serving.get(model, ()))

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
        memo = part.model_tier
        serving = self.serving.get(part.model, ())
        versions = self._serving_versions(part.model)
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
        mine = held.get(part.model_tier, 0)
        crowded = [
            m for (m, t), n in held.items() if t == part.tier and m != part.model and n > mine + 1
        ]
        if not crowded:
            return None, (0, part.tier, 0, 0)
        victim = max(
            (p for p in self.placed[worker_id] if p.tier == part.tier and p.model in crowded),
            key=lambda p: (held[p.model_tier], -p.backlog, p.where),
        )
        return victim, (0, victim.tier, held[victim.model_tier], -victim.backlog)

    def _summary(self, worker_id: str) -> tuple[PartitionView | None, dict[tuple[str, Tier], int]]:
        """One worker's least deserving partition (found again only after its
        placements change) and its partitions per (model, tier)."""
        version, worst = self._worst.get(worker_id, (-1, None))
        if version != self.version[worker_id]:
            worst = max(self.placed[worker_id], key=RANK, default=None)
            self._worst[worker_id] = (self.version[worker_id], worst)
        return worst, self.held[worker_id]

    def _put(self, worker_id: str, part: PartitionView) -> None:
        self.placed[worker_id].append(part)
        held = self.held[worker_id]
        held[part.model_tier] = held.get(part.model_tier, 0) + 1
        self.load[worker_id] += 1
        self.free -= 1
        self.version[worker_id] += 1

    def _take(self, worker_id: str, part: PartitionView) -> None:
        self.placed[worker_id].remove(part)
        self.held[worker_id][part.model_tier] -= 1
        self.load[worker_id] -= 1
        self.free += 1
        self.version[worker_id] += 1
