"""What each tenant holds now, checked against its limits (`tenant_limits`) and shown
as metrics.

Queued requests come from the books ingest keeps anyway: each job's accepted count
(the job book) less its outcomes (a batch's counts as the refresher last saw them,
the collector's lines), nothing for an ended or cancelled job; plus reservations: a
batch's whole input file from its creation until validation has counted it into the
job book, and a streamed upload's published lines until the upload adds them there.
Check and reservation happen with no await between them, so two requests of one
tenant cannot both take the last room.

Stored files are read from the file store. A file reservation is taken under a lock
after the scan, and given back under it once the file is stored (or not), so a scan
that missed a file being stored still finds its reservation.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable, Iterable, Mapping

from prometheus_client import Gauge

from services.collector.collector import Collected
from services.ingest import metrics
from services.ingest.batches import batch_state
from services.ingest.batches.batch_book import BatchBook
from services.ingest.batches.jobs import JobBook, JobTotals
from services.ingest.settings import IngestOptions
from services.ingest.tenancy.owned_files import OwnedFiles
from services.ingest.tenancy.tenant_limits import (
    OTHER_TENANTS,
    Limit,
    Refusal,
    TenantLimits,
    admit_file,
    admit_requests,
    job_queued,
    requests_that_fit,
    tenant_label,
)
from services.logs import get_logger

log = get_logger("ingest.tenants")

# Stored files are counted on every upload and this often for the metrics.
FILES_SCAN_S = 60.0

CollectedOf = Callable[[str], Collected]  # job id -> what its files hold


class TenantUsage:
    """Each tenant's queued requests and stored files, reserved and checked in one step."""

    def __init__(self, options: IngestOptions, files: OwnedFiles) -> None:
        self.limits = TenantLimits.from_options(options)
        self.retry_after_s = options.retry_after_s
        self.named = frozenset(options.tenant_tokens)
        self.files = files
        self._books: tuple[JobBook, BatchBook, CollectedOf] | None = None
        self._reserved: Counter[str] = Counter()  # queued requests not in the books yet
        self._settled: dict[str, int] = {}  # job id -> accepted count when all had outcomes
        self._reserved_files: Counter[str] = Counter()
        self._reserved_bytes: Counter[str] = Counter()
        self._files_lock = asyncio.Lock()
        for label in (*self.named, OTHER_TENANTS):  # every label exists from the start
            for gauge in _GAUGES:
                gauge.labels(label).set(0)
            for limit in Limit:
                metrics.TENANT_REFUSALS.labels(label, limit.value)

    def attach(self, jobs: JobBook, batches: BatchBook, collected: CollectedOf) -> None:
        self._books = (jobs, batches, collected)

    # -- queued requests --------------------------------------------------------------
    def queued(self) -> Counter[str]:
        """Every tenant's unfinished requests, reservations included."""
        counts = Counter(self._reserved)
        if self._books is not None:
            for job in self._books[0].all():
                counts[job.tenant] += self._job_queued(job)
        return counts

    def _queued_of(self, tenant: str) -> int:
        if self._books is None:
            return self._reserved[tenant]
        jobs = (job for job in self._books[0].all() if job.tenant == tenant)
        return self._reserved[tenant] + sum(self._job_queued(job) for job in jobs)

    def _job_queued(self, job: JobTotals) -> int:
        assert self._books is not None
        if self._settled.get(job.job_id) == job.accepted:
            return 0  # nothing was added since every request of it had its outcome
        _, batches, collected = self._books
        batch = batches.get(job.job_id)
        if batch is not None and batch_state.validating(batch):
            return 0  # its reservation counts it, in whole
        files = collected(job.job_id)
        done = files.output_lines + files.error_lines
        ended = job.cancel_reason is not None
        if batch is not None:
            counts = batch["request_counts"]
            done = max(done, counts["completed"] + counts["failed"])
            ended = ended or batch["status"] in batch_state.TERMINAL
        queued = job_queued(job.accepted, done, ended=ended)
        if queued == 0:
            # Outcomes are never taken back and an end is final: until more requests
            # come, this job is not looked at again (the books hold every job ever).
            self._settled[job.job_id] = job.accepted
        return queued

    def reserve_requests(self, tenant: str, adding: int) -> Refusal | None:
        """Reserve room for `adding` requests (a batch's lines), all or none."""
        if self.limits.queued_requests:
            queued = self._queued_of(tenant)
            refusal = admit_requests(
                tenant, queued, adding, self.limits.queued_requests, self.retry_after_s
            )
            if refusal is not None:
                self._count_refusal(tenant, refusal)
                return refusal
        self._reserved[tenant] += adding
        return None

    def fit_requests(self, tenant: str, adding: int) -> tuple[int, Refusal | None]:
        """Reserve room for as many of `adding` requests (a chunk of a streamed upload)
        as fit; the refusal of the first that does not, if any."""
        limit = self.limits.queued_requests
        if not limit:
            self._reserved[tenant] += adding
            return adding, None
        queued = self._queued_of(tenant)
        fitting = requests_that_fit(queued, adding, limit)
        self._reserved[tenant] += fitting
        if fitting == adding:
            return fitting, None
        # The next line is refused: once requests finish it fits, so Retry-After holds.
        refusal = admit_requests(tenant, queued + fitting, 1, limit, self.retry_after_s)
        assert refusal is not None
        self._count_refusal(tenant, refusal)
        return fitting, refusal

    def release_requests(self, tenant: str, count: int) -> None:
        """Give back reserved room: the requests are in the books now (or were never sent)."""
        self._reserved[tenant] -= count
        if self._reserved[tenant] <= 0:
            del self._reserved[tenant]

    # -- stored files -----------------------------------------------------------------
    def stored_files(self) -> dict[str, tuple[int, int]]:
        """Every tenant's input files: (how many, bytes). Blocking: reads the store."""
        stored: dict[str, tuple[int, int]] = {}
        for owned in self.files.all():
            if owned.file.purpose == "batch":
                files, size = stored.get(owned.owner, (0, 0))
                stored[owned.owner] = (files + 1, size + owned.file.bytes)
        return stored

    async def reserve_file(self, tenant: str, size: int) -> Refusal | None:
        """Reserve room for one more file of `size` bytes; `release_file` after storing."""
        async with self._files_lock:
            stored = await asyncio.to_thread(self.stored_files)
            files, file_bytes = stored.get(tenant, (0, 0))
            files += self._reserved_files[tenant]
            file_bytes += self._reserved_bytes[tenant]
            refusal = admit_file(tenant, files, file_bytes, size, self.limits)
            if refusal is not None:
                self._count_refusal(tenant, refusal)
            else:
                self._reserved_files[tenant] += 1
                self._reserved_bytes[tenant] += size
                stored[tenant] = (files + 1, file_bytes + size)
            self._show_files(stored)
            return refusal

    async def release_file(self, tenant: str, size: int) -> None:
        async with self._files_lock:
            self._reserved_files[tenant] -= 1
            self._reserved_bytes[tenant] -= size
            if self._reserved_files[tenant] <= 0:
                del self._reserved_files[tenant], self._reserved_bytes[tenant]

    # -- metrics ----------------------------------------------------------------------
    async def show(self, interval_s: float) -> None:
        """Keep the per-tenant gauges current, forever (cancel to stop)."""
        loop = asyncio.get_running_loop()
        scanned_at = -FILES_SCAN_S
        while True:
            self._show(metrics.TENANT_QUEUED_REQUESTS, self.queued().items())
            if loop.time() - scanned_at >= FILES_SCAN_S:
                scanned_at = loop.time()
                try:
                    self._show_files(await asyncio.to_thread(self.stored_files))
                except OSError as exc:  # the next scan tries again
                    log.warning("stored files not counted", error=str(exc))
            await asyncio.sleep(interval_s)

    def _show_files(self, stored: Mapping[str, tuple[int, int]]) -> None:
        self._show(metrics.TENANT_STORED_FILES, ((t, n) for t, (n, _) in stored.items()))
        self._show(metrics.TENANT_STORED_BYTES, ((t, b) for t, (_, b) in stored.items()))

    def _show(self, gauge: Gauge, per_tenant: Iterable[tuple[str, int]]) -> None:
        totals = Counter({label: 0 for label in (*self.named, OTHER_TENANTS)})
        for tenant, value in per_tenant:
            totals[tenant_label(tenant, self.named)] += value
        for label, value in totals.items():
            gauge.labels(label).set(value)

    def _count_refusal(self, tenant: str, refusal: Refusal) -> None:
        label = tenant_label(tenant, self.named)
        metrics.TENANT_REFUSALS.labels(label, refusal.limit.value).inc()


_GAUGES = (
    metrics.TENANT_QUEUED_REQUESTS,
    metrics.TENANT_STORED_FILES,
    metrics.TENANT_STORED_BYTES,
)
