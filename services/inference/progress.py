"""Which offset of a partition may be committed, and which outputs go with it (pure).

Requests finish out of order. An output may only be published in the same
transaction that commits past its offset; otherwise a crash would replay the
request and publish it twice. So outputs wait here until every lower offset
has finished too.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from typing import Generic, TypeVar

Output = TypeVar("Output")


@dataclass(frozen=True)
class CommitPlan(Generic[Output]):
    """Commit `next_offset` (the next record to read) and publish `outputs` with it."""

    next_offset: int
    outputs: list[Output]


class PartitionProgress(Generic[Output]):
    """Consumed, in-flight and finished offsets of one partition since its last commit."""

    def __init__(self, committed_offset: int) -> None:
        self._committed = committed_offset
        self._next_to_consume = committed_offset
        self._in_flight: set[int] = set()
        self._in_flight_heap: list[int] = []
        self._finished: dict[int, list[Output]] = {}

    @property
    def committed_offset(self) -> int:
        return self._committed

    @property
    def next_to_consume(self) -> int:
        """The position after the last record taken, or the end the consumer reached."""
        return self._next_to_consume

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    @property
    def uncommitted(self) -> int:
        """Records consumed but not yet committed (in flight or waiting to commit)."""
        return len(self._in_flight) + len(self._finished)

    def started(self, offset: int) -> None:
        if offset < self._next_to_consume:
            raise ValueError(f"offset {offset} consumed again (next was {self._next_to_consume})")
        self._next_to_consume = offset + 1
        self._in_flight.add(offset)
        heapq.heappush(self._in_flight_heap, offset)

    def reached(self, offset: int) -> None:
        """The consumer reached `offset` (partition EOF) having delivered every record
        below it: what lies between the last record taken and `offset` is transaction
        markers and aborted records, no work, and a commit may move past it."""
        self._next_to_consume = max(self._next_to_consume, offset)

    def finished(self, offset: int, outputs: list[Output]) -> None:
        self._in_flight.remove(offset)
        self._finished[offset] = outputs

    def _lowest_in_flight(self) -> int | None:
        heap = self._in_flight_heap
        while heap and heap[0] not in self._in_flight:
            heapq.heappop(heap)
        return heap[0] if heap else None

    def plan(self) -> CommitPlan[Output] | None:
        """What can be committed now; None when nothing moved since the last commit."""
        lowest = self._lowest_in_flight()
        boundary = self._next_to_consume if lowest is None else lowest
        if boundary <= self._committed:
            return None
        outputs = [
            output
            for offset in sorted(o for o in self._finished if o < boundary)
            for output in self._finished[offset]
        ]
        return CommitPlan(boundary, outputs)

    def ready(self) -> int:
        """Outputs a commit now would publish (cheap upper bound for the size trigger)."""
        return len(self._finished)

    def committed(self, plan: CommitPlan[Output]) -> None:
        """The plan's transaction committed: forget what it covered."""
        for offset in [o for o in self._finished if o < plan.next_offset]:
            del self._finished[offset]
        self._committed = plan.next_offset
