"""Where a request waits: its model's requests topic, its lane's partitions inside it.

The unit of routing is a cell, (model, lane). Each model has a requests topic of its
own, named from the model id, and the three lanes are ranges of that topic's
partitions (`LaneLayout`). So a worker reads one model's requests without fetching
another's (Kafka cannot filter on the broker), a model added at runtime gets a new
topic and changes no existing request's partition, and every model's topic has the
same partition count, so one layout describes them all.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from services.lanes import LANE_ORDER, Lane, LaneLayout

# Kafka allows [A-Za-z0-9._-] in topic names; '.' and '_' collide in its metric names,
# and the prefix already uses '.', so a model id keeps only letters, digits and '-'.
_NOT_IN_TOPIC = re.compile(r"[^A-Za-z0-9-]+")
_READABLE_CHARS = 100  # of the id, before the digest; topic names stop at 249


def model_slug(model: str) -> str:
    """A topic-safe, stable name for a model id: readable part plus a digest of the
    whole id, so ids that read alike ('a/b', 'a.b') never share a topic."""
    if not model:
        raise ValueError("a model id cannot be empty")
    readable = _NOT_IN_TOPIC.sub("-", model).strip("-")[:_READABLE_CHARS] or "model"
    digest = hashlib.sha256(model.encode()).hexdigest()[:10]
    return f"{readable}-{digest}"


class Cell(NamedTuple):
    """A model's lane: the unit the scheduler ranks and the metrics report."""

    model: str
    lane: Lane


class ModelPartition(NamedTuple):
    """One partition of one model's requests topic: what a worker owns."""

    model: str
    partition: int


@dataclass(frozen=True)
class RequestLayout:
    """The requests topics: one per model, each laid out in the same lanes."""

    prefix: str
    lanes: LaneLayout

    @property
    def partitions_per_model(self) -> int:
        return self.lanes.total

    def topic(self, model: str) -> str:
        """The requests topic of `model`."""
        return f"{self.prefix}.requests.{model_slug(model)}"

    def place(self, model: str, lane: Lane, key: bytes) -> ModelPartition:
        """Where a request with this key waits; the same key always lands in one place."""
        return ModelPartition(model, self.lanes.partition_for(lane, key))

    def lane_of(self, where: ModelPartition) -> Lane:
        return self.lanes.lane_of(where.partition)

    def cell_of(self, where: ModelPartition) -> Cell:
        return Cell(where.model, self.lane_of(where))

    def partitions(self, model: str) -> list[ModelPartition]:
        """Every partition of a model's topic, high lane first."""
        return [ModelPartition(model, p) for p in range(self.lanes.total)]

    def cell_partitions(self, cell: Cell) -> list[ModelPartition]:
        return [ModelPartition(cell.model, p) for p in self.lanes.partitions(cell.lane)]

    def all_partitions(self, models: Iterable[str]) -> list[ModelPartition]:
        return [where for model in sorted(set(models)) for where in self.partitions(model)]


def cell_backlog(
    layout: RequestLayout, partition_backlog: Mapping[ModelPartition, int]
) -> dict[Cell, int]:
    """Requests not yet consumed per cell, from the backlog of each partition; every
    lane of every model seen is present, with 0 when empty."""
    models = {where.model for where in partition_backlog}
    backlog = {Cell(model, lane): 0 for model in sorted(models) for lane in LANE_ORDER}
    for where, waiting in partition_backlog.items():
        backlog[layout.cell_of(where)] += waiting
    return backlog


def encode_partitions(partitions: Iterable[ModelPartition]) -> list[dict[str, object]]:
    """The Avro form used by heartbeats and assignments, in a stable order."""
    return [{"model": m, "partition": p} for m, p in sorted(partitions)]


def decode_partitions(items: Iterable[Mapping[str, Any]]) -> frozenset[ModelPartition]:
    return frozenset(ModelPartition(str(i["model"]), int(i["partition"])) for i in items)
