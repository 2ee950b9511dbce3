"""What an assignment pass decides from: the live workers and the request partitions."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from operator import attrgetter

from services.lanes import LANE_ORDER, Lane
from services.routing import ModelPartition


class Pool(StrEnum):
    DEDICATED = "dedicated"
    SPOT = "spot"


POOL_PREFERENCE: dict[Lane, tuple[Pool, Pool]] = {
    Lane.HIGH: (Pool.DEDICATED, Pool.SPOT),
    Lane.NORMAL: (Pool.DEDICATED, Pool.SPOT),
    Lane.LOW: (Pool.SPOT, Pool.DEDICATED),
}

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
    rank: tuple[Tier, int, ModelPartition] = field(init=False)  # smaller: more deserving
    model_tier: tuple[str, Tier] = field(init=False)  # what fair shares count

    def __post_init__(self) -> None:
        # Read a hundred thousand times a pass on a large fleet: stored, not derived.
        object.__setattr__(self, "model", self.where.model)
        tier = (0 if self.backlog > 0 else 1, LANE_ORDER.index(self.lane))
        object.__setattr__(self, "tier", tier)
        object.__setattr__(self, "rank", (tier, -self.backlog, self.where))
        object.__setattr__(self, "model_tier", (self.where.model, tier))

    def outranks(self, other: PartitionView) -> bool:
        """Strictly more deserving of a slot: only a partition with work displaces, so
        drained partitions never trade places (a move costs a fence for nothing)."""
        return self.backlog > 0 and self.tier < other.tier


RANK = attrgetter("rank")  # sort key: most deserving first
