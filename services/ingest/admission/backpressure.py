"""Admission decisions for ingest (pure): is there room to publish more?"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Admission:
    admitted: bool
    reason: str | None = None
    detail: str = ""


ADMITTED = Admission(True)


def admit(backlog: int, backlog_limit: int, producer_queued: int, queue_limit: int) -> Admission:
    """Admit more records into a lane while it and the producer queue are under their bounds.

    The check runs before each chunk, so a lane may pass its bound by at most
    one chunk; everything after the refusal point is left unpublished.
    """
    if backlog >= backlog_limit:
        return Admission(False, "backlog", f"lane backlog {backlog} >= limit {backlog_limit}")
    if producer_queued >= queue_limit:
        return Admission(
            False, "producer_queue", f"producer queue {producer_queued} >= limit {queue_limit}"
        )
    return ADMITTED
