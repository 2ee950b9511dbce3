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

from services.routing import ModelPartition
from services.scheduler.inputs import RANK, PartitionView, Tier, WorkerView
from services.scheduler.placement import Placement

_SETTLING_ROUNDS = 8


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
    plan = Placement(fleet)
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
    placing: dict[tuple[str, Tier], list[PartitionView]] = {}
    kept_turns: Counter[tuple[str, Tier]] = Counter()  # turns its kept partitions took
    for part in parts:
        if part.where in kept:
            kept_turns[part.model_tier] += 1
        else:
            placing.setdefault(part.model_tier, []).append(part)
    ordered: list[tuple[Tier, int, int, ModelPartition, PartitionView]] = []
    for group, members in placing.items():
        members.sort(key=RANK)  # one tier: busiest first
        first_turn = kept_turns[group]
        for turn, part in enumerate(members, start=first_turn):
            ordered.append((part.tier, turn, -part.backlog, part.where, part))
    ordered.sort()  # `where` is unique: the views themselves are never compared
    return [item[-1] for item in ordered]
