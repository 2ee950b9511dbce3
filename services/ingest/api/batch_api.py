"""The OpenAI-compatible Batches API on the ingest service (files: `file_api.py`).

A batch is a kbatch job whose id is the batch id: its input file goes through the
same validation and admission as streamed uploads (resuming after a 429 until the
whole file is in) and the job is sealed. From then on the refresher
(`batches/batch_refresh.py`) moves the batch on; these handlers only read it.
"""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from services.ingest.admission.upload import Publishing, Upload
from services.ingest.admission.validation import RequestContext
from services.ingest.api.batch_request import (
    BatchRequest,
    Invalid,
    batch_request,
)
from services.ingest.api.listing import cursor_page
from services.ingest.api.openai_errors import guard, openai_error, refused
from services.ingest.batches import batch_state
from services.ingest.batches.batch_book import BatchBook
from services.ingest.batches.jobs import JobBook
from services.ingest.tenancy.access import Action, can_see
from services.ingest.tenancy.auth import Callers
from services.ingest.tenancy.owned_files import OwnedFiles
from services.ingest.tenancy.tenant_usage import TenantUsage
from services.lanes import Lane
from services.logs import get_logger

log = get_logger("batches")

# Passes over a batch's file for lines Kafka did not acknowledge, before they are errors
# (a permanent failure, such as a record over the topic's max.message.bytes, never heals).
MAX_DELIVERY_PASSES = 4

MAX_BATCHES_LISTED = 100  # OpenAI's batches.list limit: at most 100, 20 by default


class BatchApi:
    """Routes exist from the start; they answer 503 until `attach()` gave them Kafka."""

    def __init__(
        self, files: OwnedFiles, retry_after_s: float, callers: Callers, usage: TenantUsage
    ) -> None:
        self.files = files
        self.callers = callers
        self.usage = usage
        self.retry_after_s = retry_after_s
        self._attached: tuple[Publishing, BatchBook, JobBook] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        # Registered models no live worker serves now (their requests wait in Kafka).
        self.waiting_models: Callable[[], frozenset[str]] = frozenset

    def attach(self, publishing: Publishing, batches: BatchBook, jobs: JobBook) -> None:
        self._attached = (publishing, batches, jobs)

    @property
    def publishing(self) -> Publishing:
        return self._parts()[0]

    @property
    def batches(self) -> BatchBook:
        return self._parts()[1]

    @property
    def jobs(self) -> JobBook:
        return self._parts()[2]

    def _parts(self) -> tuple[Publishing, BatchBook, JobBook]:
        if self._attached is None:
            raise RuntimeError("Batch API used before ingest started")
        return self._attached

    def routes(self) -> list[Route]:
        return [
            Route("/v1/batches", self.create_batch, methods=["POST"]),
            Route("/v1/batches", self.list_batches, methods=["GET"]),
            Route("/v1/batches/{batch_id}", self.get_batch, methods=["GET"]),
            Route("/v1/batches/{batch_id}/cancel", self.cancel_batch, methods=["POST"]),
        ]

    async def fail_interrupted(self) -> None:
        """Batches left validating by a restart (cancelled meanwhile or not): some of
        their lines may be published, none is known to be, so they fail cleanly and say
        why."""
        for batch in self.batches.all():
            if batch_state.validating(batch):
                error = {
                    "code": "ingest_restarted",
                    "message": "ingest restarted while validating; resubmit",
                    "line": None,
                    "param": None,
                }
                failed = {
                    **batch,
                    "status": "failed",
                    "failed_at": int(time.time()),
                    "errors": {"object": "list", "data": [error]},
                }
                await self.batches.put(failed)

    # -- batches --------------------------------------------------------------------
    async def create_batch(self, request: Request) -> Response:
        try:
            body = await request.json()
        except ValueError:  # not JSON, or not UTF-8
            return openai_error(400, "body must be JSON")
        asked = batch_request(body)
        if isinstance(asked, Invalid):
            return openai_error(400, asked.message, asked.param)
        caller = self.callers.of(request)
        found = self.files.get(asked.input_file_id)
        no_file = openai_error(400, "input_file_id names no file", "input_file_id")
        forbidden = guard(caller, found.owner if found else None, Action.CHANGE, no_file)
        if forbidden is not None or found is None:
            return forbidden or no_file
        file = found.file
        path = self.files.content_path(file)
        try:
            lines = await asyncio.to_thread(_count_lines, path)
        except FileNotFoundError:
            return no_file  # deleted meanwhile
        # No await from here to the reservation: the check and the reservation are one step.
        refusal = self.usage.reserve_requests(caller.tenant, lines)
        if refusal is not None:
            return refused(refusal)
        try:
            batch = await self._start_batch(asked, file.id, caller.tenant)
        except BaseException:
            self.usage.release_requests(caller.tenant, lines)
            raise
        task = asyncio.create_task(self._ingest(batch, path, caller.tenant, asked.priority, lines))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return JSONResponse(batch_state.public(batch, self.waiting_models()))

    async def _start_batch(self, asked: BatchRequest, file_id: str, tenant: str) -> dict[str, Any]:
        batch = batch_state.new_batch(
            f"batch_{uuid.uuid4().hex}",
            file_id,
            asked.endpoint,
            asked.completion_window,
            asked.metadata,
            asked.priority.value,
            int(time.time()),
            tenant=tenant,
            output_expires_after_s=asked.output_expires_after_s,
        )
        # The batch's job id is the caller's before any line of it is published.
        await self.jobs.claim(batch["id"], tenant)
        await self.batches.put(batch)
        return batch

    async def _ingest(
        self, batch: dict[str, Any], path: Path, tenant: str, priority: Lane, reserved: int
    ) -> None:
        """Validate and publish the batch's file; the room reserved for its lines is
        given back once the job book counts them (or on any failure)."""
        try:
            await self._ingest_file(batch, path, tenant, priority)
        finally:
            self.usage.release_requests(tenant, reserved)

    async def _ingest_file(
        self, batch: dict[str, Any], path: Path, tenant: str, priority: Lane
    ) -> None:
        """Push the whole file through validation and admission, resuming after 429s."""
        now_ms = int(time.time() * 1000)
        context = RequestContext(batch["id"], tenant, priority, now_ms, endpoint=batch["endpoint"])
        accepted, errors, models = 0, [], set()
        todo = PassLines(resume=1, retry=frozenset())
        failures: Counter[int] = Counter()  # unacknowledged deliveries per line
        for attempt in itertools.count(1):
            start = todo.first()
            outcome = await Upload(self.publishing, context, start, todo.wants).run(
                _read_from(path, start)
            )
            accepted += outcome.accepted
            models |= outcome.models
            errors += [
                {"code": r.code, "message": r.reason, "line": r.line, "param": r.custom_id}
                for r in outcome.rejections
            ]
            failures.update(outcome.failed_lines)
            refused_at = outcome.resume_from_line if outcome.refusal is not None else None
            todo = todo.next(refused_at, outcome.failed_lines)
            given_up = sorted(n for n in todo.retry if failures[n] >= MAX_DELIVERY_PASSES)
            if given_up:
                reason = outcome.failed_chunks[0]["error"] if outcome.failed_chunks else None
                errors += [
                    {
                        "code": "delivery_failed",
                        "message": f"not acknowledged by Kafka {failures[n]} times: {reason}",
                        "line": n,
                        "param": None,
                    }
                    for n in given_up
                ]
                todo = PassLines(todo.resume, todo.retry - set(given_up))
            if todo.done:
                break
            log.warning(
                "batch lines not published yet; another pass",
                batch_id=batch["id"],
                resume_from_line=todo.resume,
                unacknowledged_lines=len(todo.retry),
                attempt=attempt,
            )
            await asyncio.sleep(self.retry_after_s)
        await self.jobs.add(batch["id"], tenant, accepted=accepted, rejected=len(errors), seal=True)
        now = int(time.time())
        await self.batches.update(
            batch["id"],
            lambda current: batch_state.validated(current, accepted, errors, now, models),
        )
        log.info("batch ingested", batch_id=batch["id"], accepted=accepted, rejected=len(errors))

    def batch_for(self, request: Request, action: Action) -> dict[str, Any] | Response:
        """The path's batch, if the caller may do `action` to it; else the refusal."""
        batch = self.batches.get(request.path_params["batch_id"])
        owner = batch_state.owner(batch, self.callers.default_tenant) if batch else None
        missing = openai_error(404, "no such batch", "batch_id")
        refusal = guard(self.callers.of(request), owner, action, missing)
        return batch if refusal is None and batch is not None else refusal or missing

    async def get_batch(self, request: Request) -> Response:
        found = self.batch_for(request, Action.READ)
        return (
            found
            if isinstance(found, Response)
            else JSONResponse(batch_state.public(found, self.waiting_models()))
        )

    async def list_batches(self, request: Request) -> Response:
        try:
            limit = int(request.query_params.get("limit", "20"))
        except ValueError:
            return openai_error(400, "limit must be an integer", "limit")
        if not 1 <= limit <= MAX_BATCHES_LISTED:
            return openai_error(400, f"limit must be from 1 to {MAX_BATCHES_LISTED}", "limit")
        caller, default = self.callers.of(request), self.callers.default_tenant
        visible = [b for b in self.batches.all() if can_see(caller, batch_state.owner(b, default))]
        ordered = sorted(visible, key=lambda b: (b["created_at"], b["id"]), reverse=True)
        waiting = self.waiting_models()
        public = [batch_state.public(b, waiting) for b in ordered]
        return JSONResponse(cursor_page(public, request.query_params.get("after"), limit))

    async def cancel_batch(self, request: Request) -> Response:
        batch = self.batch_for(request, Action.CANCEL)
        if isinstance(batch, Response):
            return batch
        if batch["status"] in batch_state.TERMINAL:
            return openai_error(409, f"batch is already {batch['status']}", "batch_id")
        await self.jobs.cancel(batch["id"], "cancelled")
        now = int(time.time())
        updated = await self.batches.update(
            batch["id"], lambda current: batch_state.cancel_requested(current, now)
        )
        return JSONResponse(batch_state.public(updated or batch, self.waiting_models()))


@dataclass(frozen=True)
class PassLines:
    """The lines a pass over a batch file sends: those from `resume` on (None: none) and
    those in `retry` (whose delivery failed). Pure: every line is sent until accepted or
    rejected once, and never after."""

    resume: int | None
    retry: frozenset[int]

    def wants(self, line: int) -> bool:
        return line in self.retry or (self.resume is not None and line >= self.resume)

    def first(self) -> int:
        return min([*self.retry, *([self.resume] if self.resume is not None else [])])

    @property
    def done(self) -> bool:
        return self.resume is None and not self.retry

    def next(self, refused_at: int | None, failed: Iterable[int]) -> PassLines:
        """After a pass: a 429 at line `refused_at` left this pass's lines from there on
        unsent; `failed` lines were sent but not acknowledged."""
        if refused_at is None:
            return PassLines(None, frozenset(failed))
        unsent = {n for n in self.retry if n >= refused_at}
        resume = None if self.resume is None else max(self.resume, refused_at)
        return PassLines(resume, frozenset(unsent | set(failed)))


def _count_lines(path: Path) -> int:
    """The request lines of a batch input file: its lines that are not blank."""
    with path.open("rb") as source:
        return sum(1 for line in source if line.strip())


async def _read_from(path: Path, first_line: int) -> AsyncIterator[bytes]:
    """The file's bytes from line `first_line` on, in chunks."""
    with path.open("rb") as source:
        for _ in range(first_line - 1):
            source.readline()
        while chunk := await asyncio.to_thread(source.read, 1 << 20):
            yield chunk
