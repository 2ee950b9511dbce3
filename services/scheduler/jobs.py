"""Job progress (pure): counts per job and source partition, and the job's view.

Counts are kept per (job, partition) so that each table entry is only ever
written from events of one partition (faust's co-partitioning), and each entry
remembers the last offset counted, so a replayed event is never counted twice.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

Entry = dict[str, int]


def entry_key(job_id: str, partition: int) -> str:
    return f"{job_id}|{partition}"


def job_of(key: str) -> str:
    return key.rpartition("|")[0]


def counted(
    entry: Entry | None, offset: int, *, completed: int, failed: int, now_ms: int
) -> Entry | None:
    """The entry after one outcome, or None when `offset` was already counted."""
    current = entry or {"completed": 0, "failed": 0, "last_offset": -1, "updated_ms": now_ms}
    if offset <= current["last_offset"]:
        return None
    return {
        "completed": current["completed"] + completed,
        "failed": current["failed"] + failed,
        "last_offset": offset,
        "updated_ms": now_ms,
    }


def expired(updated_ms: int, now_ms: int, retention_ms: int) -> bool:
    return now_ms - updated_ms > retention_ms


def job_view(
    job_id: str, job: Mapping[str, Any] | None, results: Iterable[Entry], dead: Iterable[Entry]
) -> dict[str, Any]:
    """One job's request counts and state, for `/jobs/{id}` and the Batch API."""
    results, dead = list(results), list(dead)
    completed = sum(e["completed"] for e in results)
    failed = sum(e["failed"] for e in results) + sum(e["failed"] for e in dead)
    total = int(job["accepted"]) if job else None
    sealed = bool(job and job["sealed"])
    done = sealed and total is not None and completed + failed >= total
    state = "completed" if done else ("in_progress" if job or completed or failed else "unknown")
    return {
        "job_id": job_id,
        "state": state,
        "total": total,
        "completed": completed,
        "failed": failed,
        "rejected": int(job["rejected"]) if job else 0,
        "sealed": sealed,
        "tenant": job["tenant"] if job else None,
    }
