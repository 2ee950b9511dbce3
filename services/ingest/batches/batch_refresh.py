"""Batches move on by themselves: one task in ingest steps every moving batch.

Every interval the refresher reads each validated, unfinished batch's progress (the
scheduler's job counts over the one scheduler client, else the collector's; the
collector's line counts either way), applies the pure `batch_state.step`, carries out
what the new state needs (the job cancelled when the window ran out, the collector's
files registered as the batch's output and error files) and publishes the batch. So
lists are as fresh as single fetches, and a batch nobody polls still expires, gets
its output file and ends. Handlers only read batches.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx

from services.collector.collector import ERRORS, OUTPUT, Collector, job_file
from services.errors import KbatchError
from services.ingest.batches import batch_state
from services.ingest.batches.batch_book import BatchBook
from services.ingest.batches.jobs import JobBook
from services.ingest.tenancy.owned_files import OwnedFiles
from services.logs import get_logger

log = get_logger("batches.refresh")

_FILES = (("output_file_id", OUTPUT, "output"), ("error_file_id", ERRORS, "errors"))
# Batches refreshed at once: many moving batches must not queue past the scheduler
# client's pool timeout (and fall back to the collector's counts for that).
CONCURRENT_REFRESHES = 16
# Expired files are hidden at once (`OwnedFiles.get`); their space is reclaimed this often.
EXPIRED_FILES_SWEEP_S = 60.0


class BatchRefresher:
    def __init__(
        self,
        batches: BatchBook,
        jobs: JobBook,
        collector: Collector,
        files: OwnedFiles,
        scheduler: httpx.AsyncClient | None,  # base_url: the scheduler's; None: no scheduler
        default_tenant: str,
    ) -> None:
        self.batches = batches
        self.jobs = jobs
        self.collector = collector
        self.files = files
        self.scheduler = scheduler
        self.default_tenant = default_tenant
        self._scheduler_down = False  # warn once per outage, not once per batch and pass

    def start(self, interval_s: float) -> asyncio.Task[None]:
        """The refresher as a task (cancel it to stop); its end other than by a cancel
        is logged as an error, since batches then stop moving."""
        task = asyncio.create_task(self.run(interval_s), name="batch-refresh")
        task.add_done_callback(_report_end)
        return task

    async def run(self, interval_s: float) -> None:
        """Refresh every moving batch, forever, `interval_s` apart; delete expired files
        every EXPIRED_FILES_SWEEP_S."""
        swept_at = -EXPIRED_FILES_SWEEP_S
        while True:
            await self.refresh_all()
            if time.monotonic() - swept_at >= EXPIRED_FILES_SWEEP_S:
                swept_at = time.monotonic()
                await self.delete_expired_files()
            await asyncio.sleep(interval_s)

    async def delete_expired_files(self) -> None:
        """Delete the files whose `expires_at` has come (a failure waits for the next sweep)."""
        try:
            deleted = await asyncio.to_thread(self.files.delete_expired, int(time.time()))
        except OSError as exc:
            log.warning("expired files not deleted", error=str(exc))
            return
        if deleted:
            log.info("expired files deleted", files=len(deleted))

    async def refresh_all(self) -> None:
        """One pass: every moving batch refreshed (one that fails stays as it was)."""
        slots = asyncio.Semaphore(CONCURRENT_REFRESHES)
        moving = [b for b in self.batches.all() if batch_state.moving(b)]
        await asyncio.gather(*(self._refresh_logged(batch, slots) for batch in moving))

    async def _refresh_logged(self, batch: dict[str, Any], slots: asyncio.Semaphore) -> None:
        async with slots:
            try:
                await self.refresh(batch)
            except (KbatchError, OSError) as exc:
                # The batch stays as it was; the next pass tries again.
                log.warning("batch not refreshed", batch_id=batch["id"], error=str(exc))

    async def refresh(self, batch: dict[str, Any]) -> None:
        """Step one batch (as read before its progress was) and publish the result."""
        batch_id = batch["id"]
        now = int(time.time())
        updated = batch_state.step(batch, await self._progress(batch_id), now)
        if updated is None:
            return
        if updated.get("expired_by_window") and not batch.get("expired_by_window"):
            await self.jobs.cancel(batch_id, "expired")
        if updated["status"] in batch_state.TERMINAL:
            # Before the batch names them, so a client that sees it ended can fetch them.
            await asyncio.to_thread(self._register_files, updated)
        # Published only if no one changed the batch meanwhile (a cancel): else the next
        # pass steps the batch as it is then. What was done above is idempotent.
        await self.batches.update(batch_id, lambda current: updated if current is batch else None)

    async def _progress(self, batch_id: str) -> batch_state.Progress:
        files = self.collector.collected(batch_id)
        live = await self._scheduler_counts(batch_id)
        completed, failed = live if live is not None else (files.output_lines, files.error_lines)
        return batch_state.Progress(
            completed,
            failed,
            files.output_lines,
            files.error_lines,
            files.input_tokens,
            files.output_tokens,
            files.model,
            files.cached_tokens,
        )

    async def _scheduler_counts(self, batch_id: str) -> tuple[int, int] | None:
        if self.scheduler is None:
            return None
        try:
            response = await self.scheduler.get(f"/jobs/{batch_id}")
            response.raise_for_status()
            job = response.json()
            counts = int(job["completed"]), int(job["failed"])
        except (httpx.HTTPError, KeyError, ValueError, TypeError) as exc:
            if not self._scheduler_down:
                log.warning(
                    "scheduler progress unavailable; using the collector's counts", error=str(exc)
                )
            self._scheduler_down = True
            return None
        if self._scheduler_down:
            log.info("scheduler progress available again")
        self._scheduler_down = False
        return counts

    def _register_files(self, batch: dict[str, Any]) -> None:
        """Publish the collector's files the ended batch names as its owner's files."""
        owner = batch_state.owner(batch, self.default_tenant)
        for field, name, kind in _FILES:
            file_id = batch[field]
            if file_id is not None:
                self.files.register_output(
                    file_id,
                    job_file(batch["id"], name),
                    f"{batch['id']}_{kind}.jsonl",
                    "batch_output",
                    owner,
                    batch.get("output_expires_after_s"),
                )


def _report_end(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("batch refresher stopped: batches no longer move", error=repr(task.exception()))
