"""Priority lanes: contiguous ranges of the requests topic's partitions."""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from enum import StrEnum


class Lane(StrEnum):
    """A priority lane; the request's `priority` field names one."""

    HIGH = "high"
    NORMAL = "normal"
    LOW = "low"


LANE_ORDER: tuple[Lane, ...] = (Lane.HIGH, Lane.NORMAL, Lane.LOW)


def lane_rank(priority: str) -> int:
    """0 for high, 1 for normal, 2 for low: engines that queue by priority serve 0 first."""
    return LANE_ORDER.index(Lane(priority))


@dataclass(frozen=True)
class LaneLayout:
    """How many partitions each lane owns; high first, then normal, then low."""

    high: int
    normal: int
    low: int

    def __post_init__(self) -> None:
        if min(self.high, self.normal, self.low) < 1:
            raise ValueError(f"every lane needs at least one partition: {self}")

    @property
    def total(self) -> int:
        return self.high + self.normal + self.low

    def partitions(self, lane: Lane) -> range:
        """The requests-topic partitions that belong to `lane`."""
        if lane is Lane.HIGH:
            return range(0, self.high)
        if lane is Lane.NORMAL:
            return range(self.high, self.high + self.normal)
        return range(self.high + self.normal, self.total)

    def lane_of(self, partition: int) -> Lane:
        """The lane a partition belongs to."""
        if not 0 <= partition < self.total:
            raise ValueError(f"partition {partition} outside 0..{self.total - 1}")
        if partition < self.high:
            return Lane.HIGH
        if partition < self.high + self.normal:
            return Lane.NORMAL
        return Lane.LOW

    def partition_for(self, lane: Lane, key: bytes) -> int:
        """Spread keys over the lane's partitions; the same key always lands in one place."""
        lane_range = self.partitions(lane)
        return lane_range.start + zlib.crc32(key) % len(lane_range)


def unconsumed(start: int, end: int, committed: int | None) -> int:
    """Records in [start, end) past the committed offset; a partition never committed
    counts from its log start, so retention-deleted records are not backlog."""
    return max(0, end - (start if committed is None else max(committed, start)))
