"""Where a request with a prefix key waits: its lane's partitions by bounded loads.

The loads are the last measured backlog of each partition plus what this ingest
placed since that measurement (a large upload is placed faster than the backlog is
measured, and must spread by itself). A new measurement replaces the counts.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from services.lanes import Lane
from services.prefix import bounded_partition
from services.routing import Cell, ModelPartition, RequestLayout

Measured = Callable[[], Mapping[ModelPartition, int] | None]


class PrefixPlacement:
    """Partitions for prefix keys, one lane of one model at a time (thread-safe: uploads
    and the submissions consumer place from different threads)."""

    def __init__(self, layout: RequestLayout, measured: Measured, load_factor: float) -> None:
        self._layout = layout
        self._measured = measured
        self._load_factor = load_factor
        self._lock = threading.Lock()
        self._snapshot: Mapping[ModelPartition, int] | None = None
        self._placed: Counter[ModelPartition] = Counter()

    def place(self, model: str, lane: Lane, key: str) -> ModelPartition:
        cell = self._layout.cell_partitions(Cell(model, lane))
        with self._lock:
            snapshot = self._measured()
            if snapshot is not self._snapshot:
                self._snapshot, self._placed = snapshot, Counter()
            backlog = snapshot or {}
            loads = [backlog.get(where, 0) + self._placed[where] for where in cell]
            chosen = cell[bounded_partition(key, loads, self._load_factor)]
            self._placed[chosen] += 1
        return chosen


@dataclass(frozen=True)
class PrefixAffinity:
    """Placement by prompt prefix (services/prefix.py); None in the pipeline: by id."""

    placement: PrefixPlacement
    completion_chars: int


def prefix_affinity(
    enabled: bool,
    layout: RequestLayout,
    measured: Measured,
    load_factor: float,
    completion_chars: int,
) -> PrefixAffinity | None:
    """What ingest's settings ask for (KBATCH_INGEST__PREFIX_AFFINITY and its bounds)."""
    if not enabled:
        return None
    return PrefixAffinity(PrefixPlacement(layout, measured, load_factor), completion_chars)
