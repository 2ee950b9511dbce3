"""Which custom_ids each recent job has already published (duplicate detection)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable


class JobLedger:
    """custom_ids per job for the most recent `max_jobs` jobs (least recently used forgotten)."""

    def __init__(self, max_jobs: int) -> None:
        self._max_jobs = max_jobs
        self._jobs: OrderedDict[str, set[str]] = OrderedDict()

    def _ids(self, job_id: str) -> set[str]:
        ids = self._jobs.get(job_id)
        if ids is None:
            ids = self._jobs[job_id] = set()
            while len(self._jobs) > self._max_jobs:
                self._jobs.popitem(last=False)
        self._jobs.move_to_end(job_id)
        return ids

    def claim(self, job_id: str, custom_id: str) -> bool:
        """Record `custom_id` for the job; False if the job already had it."""
        ids = self._ids(job_id)
        if custom_id in ids:
            return False
        ids.add(custom_id)
        return True

    def release(self, job_id: str, custom_ids: Iterable[str]) -> None:
        """Forget ids that were claimed but not published (refused or failed)."""
        self._ids(job_id).difference_update(custom_ids)

    def count(self, job_id: str) -> int:
        return len(self._jobs.get(job_id, ()))
