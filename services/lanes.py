"""Priority lanes: contiguous ranges of the requests topic's partitions."""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum


class Lane(StrEnum):
    """A priority lane; the request's `priority` field names one."""

    HIGH = "high"
    NORMAL = "normal"
    LOW = "low"


LANE_ORDER: tuple[Lane, ...] = (Lane.HIGH, Lane.NORMAL, Lane.LOW)


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


def lane_backlog(
    layout: LaneLayout,
    end_offsets: Mapping[int, int],
    committed_offsets: Mapping[int, int | None],
    start_offsets: Mapping[int, int],
) -> dict[Lane, int]:
    """Requests not yet consumed, per lane: end offset minus committed offset.

    A partition with no committed offset counts from its start (log start
    offset), so retention-deleted records are not counted as backlog.
    """
    backlog = dict.fromkeys(Lane, 0)
    for partition, end in end_offsets.items():
        start = start_offsets.get(partition, 0)
        committed = committed_offsets.get(partition)
        consumed_to = start if committed is None else max(committed, start)
        backlog[layout.lane_of(partition)] += max(0, end - consumed_to)
    return backlog
