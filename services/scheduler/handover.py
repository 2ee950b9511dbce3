"""Handing a partition from one worker to another: when to publish, when to resend."""

from __future__ import annotations

from collections.abc import Mapping

from services.routing import ModelPartition


def publishable(
    decided: Mapping[str, frozenset[ModelPartition]],
    reported: Mapping[str, frozenset[ModelPartition]],
) -> dict[str, frozenset[ModelPartition]]:
    """What to publish now: a moved partition reaches its new owner only once its
    old owner (a live worker, from its heartbeat) reports it released.

    The new owner's transactional fencing keeps a premature handover correct; this
    keeps it cheap, since the old owner commits its finished work instead of losing it.
    """
    still_held = {p: w for w, ps in reported.items() for p in ps}
    return {
        worker_id: frozenset(p for p in ps if still_held.get(p, worker_id) == worker_id)
        for worker_id, ps in decided.items()
    }


def to_resend(
    published: Mapping[str, frozenset[ModelPartition]],
    reported: Mapping[str, frozenset[ModelPartition]],
    missing_since: Mapping[tuple[str, ModelPartition], int],
    now_ms: int,
    after_ms: int,
) -> tuple[set[str], dict[tuple[str, ModelPartition], int]]:
    """Live workers whose published list should be sent again, and the updated clock.

    A worker drops a partition its commit was fenced on and waits for a new assignment
    (retaking at once would fence a real new owner in turn). A fence can also come from
    a transaction coordinator's failover (the producer's epoch bumped, no new owner):
    then no new assignment ever comes, and the partition sat unowned (seen in the
    cluster chaos test). A partition published to a live worker that it has not
    reported owning for `after_ms` gets that worker's list sent again; its clock
    restarts, so a worker still failing to take it is reminded every `after_ms`.
    """
    resend: set[str] = set()
    clock: dict[tuple[str, ModelPartition], int] = {}
    for worker_id, owned in reported.items():
        for partition in published.get(worker_id, frozenset()) - owned:
            key = (worker_id, partition)
            since = missing_since.get(key, now_ms)
            if now_ms - since >= after_ms:
                resend.add(worker_id)
                since = now_ms
            clock[key] = since
    return resend, clock
