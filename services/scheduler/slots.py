"""Finding the least-loaded worker with room for one model, fast (pure).

A large fleet places thousands of partitions a pass, each among the workers serving
its model. Workers serving the same models from the same pool are one group, kept in
a heap by load; a heap entry goes stale when its worker's load changes and is
corrected when it reaches the top (loads only grow while a pass places), so a lookup
costs a heap peek per group serving the model instead of a scan of the fleet.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping, Sequence
from enum import StrEnum

Group = tuple[frozenset[str], str]  # (models served, pool)
Entry = tuple[float, str, int]  # (load ratio, worker id, load when pushed)


class FreeSlots:
    """The least-loaded worker with room, per model and pool."""

    def __init__(
        self,
        models_of: Mapping[str, frozenset[str]],
        pool_of: Mapping[str, StrEnum],
        capacity: Mapping[str, int],
        load: Mapping[str, int],
    ) -> None:
        self._capacity = capacity
        self._load = load  # the caller's live counts: read at every lookup
        self._heaps: dict[Group, list[Entry]] = {}
        self._group_of: dict[str, Group] = {}
        for worker_id, models in models_of.items():
            group = (models, pool_of[worker_id].value)
            self._group_of[worker_id] = group
            self._heaps.setdefault(group, []).append(self._entry(worker_id))
        self._groups_for: dict[tuple[str, str], list[Group]] = {}
        for group, heap in self._heaps.items():
            heapq.heapify(heap)
            models, pool = group
            for model in models:
                self._groups_for.setdefault((model, pool), []).append(group)

    def find(self, model: str, pools: Sequence[StrEnum]) -> str | None:
        """The worker with room and the lowest load ratio (then id) among those serving
        `model`, in the first of `pools` that has one."""
        for pool in pools:
            tops = [self._top(g) for g in self._groups_for.get((model, pool.value), ())]
            best = min((t for t in tops if t is not None), default=None)
            if best is not None:
                return best[1]
        return None

    def changed(self, worker_ids: Iterable[str]) -> None:
        """Their load changed outside a lookup's correction (e.g. fell): re-enter them."""
        for worker_id in worker_ids:
            heapq.heappush(self._heaps[self._group_of[worker_id]], self._entry(worker_id))

    def _entry(self, worker_id: str) -> Entry:
        load = self._load[worker_id]
        return (load / self._capacity[worker_id], worker_id, load)

    def _top(self, group: Group) -> Entry | None:
        heap = self._heaps[group]
        while heap:
            _, worker_id, pushed_load = heap[0]
            load = self._load[worker_id]
            if load >= self._capacity[worker_id]:
                heapq.heappop(heap)
            elif load != pushed_load:
                heapq.heapreplace(heap, self._entry(worker_id))
            else:
                return heap[0]
        return None
