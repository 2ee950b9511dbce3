"""Kafka-native submissions: batch lines that producers write to a topic, not over HTTP.

A submission record's value is one Batch API line (the same JSON as a line of an
uploaded file, `schemas/submission.schema.json`); its headers say where it belongs:

* `kbatch-job` (required): the job id; lines of one job may come from many producers;
* `kbatch-tenant`: the tenant (default: ingest's default tenant). Who may write the
  topic is Kafka's to decide (ACLs): these producers are trusted like an operator;
* `kbatch-priority`: high, normal (default) or low;
* `kbatch-seal: true`: the job has no more lines (the value may then be empty).

Every fetched batch's lines take the same admission steps as an HTTP upload's
(`pipeline`), and the batch is committed in one Kafka transaction together with the
submission offsets: valid lines as requests, refused lines as JSON rejections with the
reason (`schemas/rejection.schema.json`), and the jobs' new totals. A crash commits all of
that or none of it; the next owner of the partition starts from the committed offset.
Backpressure is the consumer's own: while any lane is over its backlog bound, the
consumer pauses instead of refusing, and resumes once there is room. A tenant over its
queued-requests limit (`KBATCH_INGEST__MAX_QUEUED_REQUESTS_PER_TENANT`) is the one
exception: pausing would stall every tenant sharing the partition, so its lines past
the limit are rejected (`tenant_queue_limit_exceeded`), to be sent again later.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from confluent_kafka import Consumer, KafkaException, Message, TopicPartition

from services.codec import JOB, codec
from services.errors import FencedError, KafkaUnavailableError, ProducerFatalError
from services.ingest import metrics
from services.ingest.admission.lines import RawLine
from services.ingest.admission.pipeline import AdmissionPipeline, Admitted
from services.ingest.admission.validation import Rejection, RequestContext
from services.ingest.batches.jobs import JobBook, JobTotals
from services.ingest.tenancy.tenant_usage import TenantUsage
from services.kafka.consumers import ConsumerRole, byte_headers, make_consumer
from services.kafka.lag import BacklogMonitor
from services.kafka.retries import KAFKA_RETRIES, jittered_backoff_s
from services.kafka.transactions import OutRecord, TransactionalProducer
from services.lanes import Lane
from services.lifecycle import wait_event
from services.logs import get_logger
from services.routing import Cell

log = get_logger("submissions")

JOB_HEADER, TENANT_HEADER = "kbatch-job", "kbatch-tenant"
PRIORITY_HEADER, SEAL_HEADER = "kbatch-priority", "kbatch-seal"


@dataclass(frozen=True)
class Envelope:
    """Where a submission belongs, from its headers."""

    job_id: str
    tenant: str
    priority: Lane
    seal: bool


def envelope_of(headers: dict[str, bytes], default_tenant: str) -> Envelope | str:
    """The submission's envelope, or why its headers are unusable (pure)."""
    job = headers.get(JOB_HEADER, b"").decode("utf-8", "replace").strip()
    if not job:
        return f"no {JOB_HEADER} header: a submission must name its job"
    if len(job) > 128:
        return f"{JOB_HEADER} is {len(job)} characters, the limit is 128"
    priority = headers.get(PRIORITY_HEADER, b"normal").decode("utf-8", "replace")
    try:
        lane = Lane(priority)
    except ValueError:
        return f"{PRIORITY_HEADER} {priority!r} is not high, normal or low"
    tenant = headers.get(TENANT_HEADER, b"").decode("utf-8", "replace").strip()
    seal = headers.get(SEAL_HEADER, b"").decode("utf-8", "replace").lower() == "true"
    return Envelope(job, tenant or default_tenant, lane, seal)


def rejection_value(message: Message, job_id: str | None, rejection: Rejection) -> bytes:
    """A refused line as JSON (schemas/rejection.schema.json): any consumer reads it."""
    value = message.value() or b""
    return json.dumps(
        {
            "job_id": job_id,
            "custom_id": rejection.custom_id,
            "code": rejection.code,
            "reason": rejection.reason,
            "submission": f"{message.topic()}:{message.partition()}:{message.offset()}",
            "line": value.decode("utf-8", "replace"),
            "rejected_at_ms": int(time.time() * 1000),
        },
        ensure_ascii=False,
    ).encode()


@dataclass
class Draft:
    """One fetched batch turned into records to commit; applied only once committed."""

    records: list[OutRecord] = field(default_factory=list)
    totals: dict[str, JobTotals] = field(default_factory=dict)
    claimed: dict[str, list[str]] = field(default_factory=dict)  # job -> custom_ids
    published: dict[Cell, int] = field(default_factory=dict)  # requests per cell
    offsets: dict[int, int] = field(default_factory=dict)  # partition -> next offset
    rejected: list[str] = field(default_factory=list)  # rejection codes
    reserved: Counter[str] = field(default_factory=Counter)  # tenant -> room taken


@dataclass(frozen=True)
class SubmissionSetup:
    """What the consumer reads and commits with, and where refusals and totals go
    (requests go where the admission pipeline places them)."""

    kafka_config: dict[str, Any]
    topic: str
    group_id: str
    transactional_id: str
    rejections_topic: str
    jobs_topic: str
    default_tenant: str
    lane_backlog_limit: int


class SubmissionConsumer:
    """Consumes the submissions topic into requests, rejections and job totals."""

    def __init__(
        self,
        setup: SubmissionSetup,
        jobs: JobBook,
        pipeline: AdmissionPipeline,
        backlog: BacklogMonitor,
        tenants: TenantUsage,
    ) -> None:
        self._setup = setup
        self._jobs = jobs
        self._tenants = tenants
        self._pipeline = pipeline
        self._backlog = backlog
        self._paused = False
        self.failure: str | None = None  # why it stopped for good, for /healthz

    async def serve(self, stop: asyncio.Event) -> None:
        """`run` until `stop`, started again after a retryable Kafka failure (capped,
        jittered back-off); anything else stops it, and /healthz says so."""
        failures = 0
        while not stop.is_set():
            try:
                await self.run(stop)
                return
            except (KafkaUnavailableError, ProducerFatalError) as exc:
                failures += 1
                KAFKA_RETRIES.labels("ingest", "submissions").inc()
                log.warning("submissions consumer restarting", error=str(exc), failures=failures)
                await wait_event(stop, jittered_backoff_s(failures))
            except Exception as exc:
                self.failure = f"{type(exc).__name__}: {exc}"
                log.error("submissions consumer stopped", error=self.failure)
                raise

    async def run(self, stop: asyncio.Event) -> None:
        """Until `stop`: fetch, process, commit. The consumer and producer are closed on
        every exit; a commit that failed is rewound and fetched again."""
        setup = self._setup
        consumer = make_consumer(
            setup.kafka_config,
            ConsumerRole.MEMBER,
            setup.group_id,
            # A crashed ingest's partitions move after 10 s, not librdkafka's 45.
            **{"partition.assignment.strategy": "cooperative-sticky", "session.timeout.ms": 10_000},
        )
        transactions = TransactionalProducer(setup.kafka_config, setup.transactional_id)
        try:
            consumer.subscribe([setup.topic])
            await asyncio.to_thread(transactions.open)
            while not stop.is_set():
                if self._full(consumer):
                    await asyncio.sleep(0.2)
                    continue
                messages = await asyncio.to_thread(consumer.consume, 500, 0.5)
                if messages:
                    await self._process(consumer, transactions, messages)
        finally:
            await asyncio.to_thread(consumer.close)
            await asyncio.to_thread(transactions.close)

    def _full(self, consumer: Consumer) -> bool:
        """Pause while any cell (a model's lane) is over its bound, or the backlog cannot
        be measured; resume after."""
        limit = self._setup.lane_backlog_limit
        cells = self._backlog.cells()
        full = cells is None or any(backlog >= limit for backlog in cells.values())
        if full != self._paused:
            assigned = consumer.assignment()
            (consumer.pause if full else consumer.resume)(assigned)
            self._paused = full
            if full:
                metrics.BACKPRESSURE_REFUSALS.labels("submissions_paused").inc()
            log.info("submissions paused" if full else "submissions resumed")
        return full

    async def _process(
        self, consumer: Consumer, transactions: TransactionalProducer, messages: list[Message]
    ) -> None:
        # The jobs' totals are read and written under the book's lock, so an HTTP
        # upload to the same job cannot interleave with this transaction.
        async with self._jobs.locked():
            draft = self._draft(messages)
            if not draft.offsets:
                return
            offsets = [
                TopicPartition(self._setup.topic, partition, offset)
                for partition, offset in draft.offsets.items()
            ]
            metadata = consumer.consumer_group_metadata()
            try:
                await asyncio.to_thread(transactions.commit, draft.records, offsets, metadata)
            except (FencedError, ProducerFatalError, KafkaUnavailableError) as exc:
                self._release_room(draft)
                self._rewind(consumer, messages, draft)
                if not isinstance(exc, KafkaUnavailableError):
                    # Fenced (a rebalance gave the partitions away) or broken: a new
                    # producer; the rewound records go to whoever owns them now.
                    await asyncio.to_thread(transactions.close)
                    await asyncio.to_thread(transactions.open)
                log.warning("submissions not committed; fetched again", error=str(exc))
                return
            for totals in draft.totals.values():
                self._jobs.remember(totals)
            self._release_room(draft)  # the jobs' totals count those requests now
        for cell, count in draft.published.items():
            self._backlog.note_published(cell, count)
        for code in draft.rejected:
            metrics.LINES_REJECTED.labels(code).inc()
        for cell, count in draft.published.items():
            metrics.LINES_ACCEPTED.labels(cell.lane.value).inc(count)

    def _draft(self, messages: Iterable[Message]) -> Draft:
        draft = Draft()
        for message in messages:
            partition, offset = message.partition(), message.offset()
            if message.error() is not None or partition is None or offset is None:
                continue  # partition EOF and the like; real errors surface on commit
            draft.offsets[partition] = offset + 1
            self._take(message, offset, draft)
        for totals in draft.totals.values():
            value = codec(JOB).encode(totals.record())
            draft.records.append(
                OutRecord(self._setup.jobs_topic, totals.job_id.encode(), value, [])
            )
        return draft

    def _take(self, message: Message, offset: int, draft: Draft) -> None:
        headers = {name.lower(): value for name, value in byte_headers(message).items()}
        envelope = envelope_of(headers, self._setup.default_tenant)
        if isinstance(envelope, str):
            self._reject(draft, message, None, Rejection(offset, "invalid_envelope", envelope))
            return
        job_id = envelope.job_id
        totals = (
            draft.totals.get(job_id) or self._jobs.get(job_id) or JobTotals(job_id, envelope.tenant)
        )
        if totals.tenant != envelope.tenant:
            reason = f"job {job_id} belongs to another tenant"
            self._reject(draft, message, job_id, Rejection(offset, "job_not_yours", reason))
            return
        value = message.value() or b""
        if envelope.seal and not value.strip():
            self._count(draft, replace(totals, sealed=True))
            return
        admitted = self._admitted(RawLine(offset, value, len(value)), envelope, totals, draft)
        if isinstance(admitted, Rejection):
            self._reject(draft, message, job_id, admitted)
            self._count(draft, replace(totals, rejected=totals.rejected + 1))
            return
        draft.records.append(self._pipeline.record(admitted))
        draft.published[admitted.cell] = draft.published.get(admitted.cell, 0) + 1
        draft.claimed.setdefault(job_id, []).append(admitted.custom_id)
        sealed = totals.sealed or envelope.seal
        self._count(draft, replace(totals, accepted=totals.accepted + 1, sealed=sealed))

    def _admitted(
        self, line: RawLine, envelope: Envelope, totals: JobTotals, draft: Draft
    ) -> Admitted | Rejection:
        """The line through the admission pipeline and into the tenant's room, or why
        it is refused."""
        if totals.sealed:
            return Rejection(line.number, "job_sealed", f"job {envelope.job_id} is sealed")
        context = RequestContext(
            envelope.job_id, envelope.tenant, envelope.priority, int(time.time() * 1000)
        )
        admitted = self._pipeline.admit(line, context)
        if isinstance(admitted, Rejection):
            return admitted
        fitting, refusal = self._tenants.fit_requests(envelope.tenant, 1)
        if refusal is not None:
            # As a streamed upload's 429: nothing is lost, the producer sends it again
            # once the tenant's requests have finished (the rejection says so).
            self._pipeline.release(envelope.job_id, [admitted.custom_id])
            return Rejection(line.number, refusal.code, refusal.message, admitted.custom_id)
        draft.reserved[envelope.tenant] += fitting
        return admitted

    def _reject(
        self, draft: Draft, message: Message, job_id: str | None, rejection: Rejection
    ) -> None:
        value = rejection_value(message, job_id, rejection)
        key = job_id.encode() if job_id is not None else None
        draft.records.append(OutRecord(self._setup.rejections_topic, key, value, []))
        draft.rejected.append(rejection.code)

    def _count(self, draft: Draft, totals: JobTotals) -> None:
        """The job's totals after this line; one record per job ends the batch."""
        draft.totals[totals.job_id] = totals

    def _release_room(self, draft: Draft) -> None:
        for tenant, count in draft.reserved.items():
            self._tenants.release_requests(tenant, count)
        draft.reserved.clear()

    def _rewind(self, consumer: Consumer, messages: list[Message], draft: Draft) -> None:
        """After a failed commit: fetch the batch again, and forget what it claimed."""
        for job_id, custom_ids in draft.claimed.items():
            self._pipeline.release(job_id, custom_ids)
        first: dict[int, int] = {}
        for message in messages:
            partition, offset = message.partition(), message.offset()
            if partition is not None and offset is not None and message.error() is None:
                first.setdefault(partition, offset)
        for partition, offset in first.items():
            try:
                consumer.seek(TopicPartition(self._setup.topic, partition, offset))
            except KafkaException as exc:  # revoked meanwhile: its new owner reads it
                log.info("not rewound: no longer assigned", partition=partition, error=str(exc))
