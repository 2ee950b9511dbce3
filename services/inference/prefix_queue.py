"""The order in which an engine's slots take ready requests (pure, not thread-safe).

The highest lane first, as before. Within a lane, a slot (one llama.cpp instance)
takes the oldest request sharing the prefix it ran last, since that prefix's KV is
what its cache holds; else the oldest whose prefix no other slot ran last (each
prefix pinned to one slot); else the oldest (an idle slot never waits for work). No
request is passed over more than `max_skips` times: one that was takes the next turn
of its lane, whatever its prefix.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass
class _Entry(Generic[T]):
    rank: int  # the lane's: smaller first
    arrival: int
    key: str | None
    item: T
    skips: int = field(default=0)


class PrefixQueue(Generic[T]):
    """Ready requests for `slots` engine slots, taken by lane, then by prefix."""

    def __init__(self, slots: int, max_skips: int) -> None:
        self._entries: list[_Entry[T]] = []
        self._arrivals = 0
        self._last_key: list[str | None] = [None] * slots
        self._max_skips = max_skips

    def __len__(self) -> int:
        return len(self._entries)

    def put(self, item: T, rank: int, key: str | None) -> None:
        self._entries.append(_Entry(rank, self._arrivals, key, item))
        self._arrivals += 1

    def take(self, slot: int) -> T | None:
        """The next request for `slot`, or None when nothing is queued."""
        if not self._entries:
            return None
        top = min(entry.rank for entry in self._entries)
        lane = [entry for entry in self._entries if entry.rank == top]  # in arrival order
        chosen = self._choose(slot, lane)
        for entry in lane:
            if entry.arrival < chosen.arrival:
                entry.skips += 1
        self._entries.remove(chosen)
        if chosen.key is not None:
            self._last_key[slot] = chosen.key
        return chosen.item

    def _choose(self, slot: int, lane: list[_Entry[T]]) -> _Entry[T]:
        overdue = next((e for e in lane if e.skips >= self._max_skips), None)
        if overdue is not None:
            return overdue
        own = self._last_key[slot]
        if own is not None:
            same = next((e for e in lane if e.key == own), None)
            if same is not None:
                return same
        others = {key for index, key in enumerate(self._last_key) if index != slot}
        free = next((e for e in lane if e.key is None or e.key not in others), None)
        return free if free is not None else lane[0]
