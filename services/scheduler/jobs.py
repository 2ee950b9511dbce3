"""Job progress (pure): outcome counts per source partition, and a job's view.

The scheduler counts the results and dead letters of every job by reading those
topics. Each source partition keeps one `PartitionTally`: the next offset to read
and the counts of every job seen there. Offset and counts are saved together in
one checkpoint record, so a restarted scheduler resumes from a state that is
consistent by construction: nothing counted twice, nothing skipped.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

UNKNOWN_JOB = "(unknown)"


@dataclass
class JobCount:
    completed: int = 0
    failed: int = 0
    updated_ms: int = 0


@dataclass
class PartitionTally:
    """Counts per job from one partition of the results topic or the DLQ."""

    next_offset: int = 0
    jobs: dict[str, JobCount] = field(default_factory=dict)

    def add(self, offset: int, job_id: str, *, failed: bool, now_ms: int) -> bool:
        """Count one outcome; False (and nothing counted) for an offset already counted."""
        if offset < self.next_offset:
            return False
        count = self.jobs.setdefault(job_id, JobCount())
        if failed:
            count.failed += 1
        else:
            count.completed += 1
        count.updated_ms = now_ms
        self.next_offset = offset + 1
        return True

    def skip_to(self, offset: int) -> None:
        """Move past offsets that carry no outcome (undecodable records, txn markers)."""
        self.next_offset = max(self.next_offset, offset)

    def sweep(self, now_ms: int, retention_ms: int) -> list[str]:
        """Forget jobs idle for longer than `retention_ms`; returns their ids."""
        gone = [j for j, c in self.jobs.items() if now_ms - c.updated_ms > retention_ms]
        for job_id in gone:
            del self.jobs[job_id]
        return gone

    def to_json(self) -> bytes:
        body = {
            "next_offset": self.next_offset,
            "jobs": {j: [c.completed, c.failed, c.updated_ms] for j, c in self.jobs.items()},
        }
        return json.dumps(body, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> PartitionTally:
        body = json.loads(raw)
        return cls(
            next_offset=int(body["next_offset"]),
            jobs={j: JobCount(*map(int, v)) for j, v in body["jobs"].items()},
        )


def tally_key(topic: str, partition: int) -> str:
    return f"{topic}|{partition}"


def job_view(
    job_id: str,
    job: Mapping[str, Any] | None,
    results: Iterable[JobCount],
    dead: Iterable[JobCount],
) -> dict[str, Any]:
    """One job's request counts and state, for `/jobs/{id}` and the Batch API."""
    results, dead = list(results), list(dead)
    completed = sum(c.completed for c in results)
    failed = sum(c.failed for c in results) + sum(c.failed for c in dead)
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
