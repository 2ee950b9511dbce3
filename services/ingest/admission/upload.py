"""One upload: stream lines in, admit each (`pipeline`), refuse or publish by chunk,
confirm delivery."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from services.ingest import metrics
from services.ingest.admission.backpressure import Admission, admit
from services.ingest.admission.lines import LineSplitter, RawLine
from services.ingest.admission.pipeline import AdmissionPipeline, Admitted
from services.ingest.admission.validation import Rejection, RequestContext
from services.ingest.settings import IngestOptions
from services.ingest.tenancy.tenant_limits import Refusal
from services.kafka.lag import BacklogMonitor
from services.kafka.producer import AsyncProducer, DeliveryBatch
from services.kafka.transactions import OutRecord

_MAX_UNCONFIRMED_CHUNKS = 8

# How many of n requests the tenant may queue now (reserved), and the refusal of the rest.
Room = Callable[[int], tuple[int, Refusal | None]]
_Pending = tuple[Admitted, OutRecord]  # the admitted line, the record to publish


@dataclass
class _Chunk:
    first_line: int
    last_line: int
    lines: dict[bytes, tuple[int, str]]  # record key -> (line number, custom_id)
    batch: DeliveryBatch | None = None
    started: float = 0.0

    @property
    def custom_ids(self) -> list[str]:
        return [custom_id for _, custom_id in self.lines.values()]


def _chunk_of(pending: list[_Pending]) -> _Chunk:
    lines = {admitted.key: (admitted.line, admitted.custom_id) for admitted, _ in pending}
    return _Chunk(pending[0][0].line, pending[-1][0].line, lines)


@dataclass
class UploadOutcome:
    """What happened to an upload; becomes the HTTP response body."""

    job_id: str
    priority: str
    lines: int = 0
    accepted: int = 0
    rejections: list[Rejection] = field(default_factory=list)
    refusal: Admission | None = None
    resume_from_line: int | None = None
    failed_chunks: list[dict[str, Any]] = field(default_factory=list)
    # Valid lines whose records the broker did not acknowledge: neither accepted nor
    # rejected, free to be sent again (their custom_ids were released).
    failed_lines: list[int] = field(default_factory=list)
    models: set[str] = field(default_factory=set)  # of the lines admitted

    def to_json(self, max_listed: int) -> dict[str, Any]:
        body: dict[str, Any] = {
            "job_id": self.job_id,
            "priority": self.priority,
            "lines": self.lines,
            "accepted": self.accepted,
            "rejected_count": len(self.rejections),
            "rejected": [
                {"line": r.line, "custom_id": r.custom_id, "code": r.code, "reason": r.reason}
                for r in self.rejections[:max_listed]
            ],
            "rejected_truncated": len(self.rejections) > max_listed,
        }
        if self.refusal is not None:
            body["refused"] = {"reason": self.refusal.reason, "detail": self.refusal.detail}
            body["resume_from_line"] = self.resume_from_line
        if self.failed_chunks:
            body["failed_chunks"] = self.failed_chunks
            body["failed_lines"] = sorted(self.failed_lines)
        return body


@dataclass
class Publishing:
    """The long-lived parts an upload admits lines through and publishes through."""

    producer: AsyncProducer
    backlog: BacklogMonitor
    pipeline: AdmissionPipeline
    options: IngestOptions


class Upload:
    """Processes one streamed upload for one job."""

    def __init__(
        self,
        publishing: Publishing,
        context: RequestContext,
        first_line: int,
        wanted: Callable[[int], bool] = lambda _: True,
        room: Room | None = None,
    ) -> None:
        self._p = publishing
        self._context = context
        self._first_line = first_line
        self._wanted = wanted  # lines not wanted are skipped: a retry pass sends only some
        self._room = room  # the tenant's room for queued requests; None: not limited here
        self.reserved = 0  # requests `room` reserved: the caller gives them back
        self._splitter = LineSplitter(publishing.options.max_line_bytes, first_line)
        self._pending: list[_Pending] = []
        self._chunks: list[_Chunk] = []
        self.outcome = UploadOutcome(context.job_id, context.priority.value)

    async def run(self, body: AsyncIterator[bytes]) -> UploadOutcome:
        async for piece in body:
            if self.outcome.refusal is not None:
                continue  # drain the rest of the body unread; nothing more is published
            await self._take_lines(self._splitter.feed(piece))
        if self.outcome.refusal is None:
            await self._take_lines(self._splitter.finish())
            await self._publish_pending()
        await self._confirm()
        return self.outcome

    async def _take_lines(self, lines: list[RawLine]) -> None:
        for raw in lines:
            if self.outcome.refusal is not None:
                return
            if not self._wanted(raw.number):
                continue
            self.outcome.lines += 1
            self._take(raw)
            if len(self._pending) >= self._p.options.chunk_lines:
                await self._publish_pending()

    def _reject(self, rejection: Rejection) -> None:
        self.outcome.rejections.append(rejection)
        metrics.LINES_REJECTED.labels(rejection.code).inc()

    def _take(self, raw: RawLine) -> None:
        admitted = self._p.pipeline.admit(raw, self._context)
        if isinstance(admitted, Rejection):
            self._reject(admitted)
            return
        self._pending.append((admitted, self._p.pipeline.record(admitted)))
        self.outcome.models.add(admitted.request["model"])

    async def _publish_pending(self) -> None:
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        # A chunk may mix models: it waits behind the fullest of its cells.
        cells = Counter(admitted.cell for admitted, _ in pending)
        measured = [self._p.backlog.backlog(cell) for cell in cells]
        backlog = None if None in measured else max(b for b in measured if b is not None)
        admission = (
            Admission(False, "backlog_unknown", "the requests backlog cannot be measured")
            if backlog is None
            else admit(
                backlog,
                self._p.options.lane_backlog_limit,
                self._p.producer.queued(),
                self._p.options.producer_queue_limit,
            )
        )
        if not admission.admitted:
            self._refuse(admission, _chunk_of(pending))
            return
        pending = self._within_tenant_room(pending)
        if not pending:
            return
        chunk = _chunk_of(pending)
        chunk.batch = DeliveryBatch(asyncio.get_running_loop())
        chunk.started = time.perf_counter()
        for _, record in pending:
            await self._p.producer.produce(
                chunk.batch,
                record.topic,
                record.value,
                record.key,
                record.partition,
                record.headers,
            )
        for cell, count in Counter(admitted.cell for admitted, _ in pending).items():
            self._p.backlog.note_published(cell, count)
        self._chunks.append(chunk)
        # Pipelined, but bounded: an upload never holds more than a few chunks unconfirmed.
        await self._confirm(keep_outstanding=_MAX_UNCONFIRMED_CHUNKS)

    def _within_tenant_room(self, pending: list[_Pending]) -> list[_Pending]:
        """The head of `pending` the tenant has room to queue (reserved); the upload is
        refused from the first line past it."""
        if self._room is None:
            return pending
        fitting, refusal = self._room(len(pending))
        self.reserved += fitting
        if refusal is not None:
            admission = Admission(False, "tenant_queued_requests", refusal.message)
            self._refuse(admission, _chunk_of(pending[fitting:]))
        return pending[:fitting]

    def _refuse(self, admission: Admission, chunk: _Chunk) -> None:
        """Nothing from this chunk on is published; rejections past it are withdrawn."""
        self.outcome.refusal = admission
        self.outcome.resume_from_line = chunk.first_line
        self.outcome.rejections = [r for r in self.outcome.rejections if r.line < chunk.first_line]
        self.outcome.lines = chunk.first_line - self._first_line
        self._p.pipeline.release(self._context.job_id, chunk.custom_ids)
        metrics.BACKPRESSURE_REFUSALS.labels(admission.reason or "unknown").inc()

    async def _confirm(self, keep_outstanding: int = 0) -> None:
        """Wait for the oldest chunks' acknowledgements until at most `keep_outstanding` remain."""
        while len(self._chunks) > keep_outstanding:
            chunk = self._chunks.pop(0)
            assert chunk.batch is not None
            await chunk.batch.wait()
            metrics.PUBLISH_SECONDS.observe(time.perf_counter() - chunk.started)
            self.outcome.accepted += chunk.batch.delivered
            metrics.LINES_ACCEPTED.labels(self._context.priority.value).inc(chunk.batch.delivered)
            if chunk.batch.failed:
                # Only the records that failed: the delivered ones stay claimed and counted.
                failed = [chunk.lines[key] for key in chunk.batch.failed_keys if key in chunk.lines]
                self._p.pipeline.release(self._context.job_id, [cid for _, cid in failed])
                self.outcome.failed_lines += [line for line, _ in failed]
                self.outcome.failed_chunks.append(
                    {
                        "first_line": chunk.first_line,
                        "last_line": chunk.last_line,
                        "delivered": chunk.batch.delivered,
                        "failed": chunk.batch.failed,
                        "error": chunk.batch.first_error,
                    }
                )
