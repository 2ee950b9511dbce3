"""The ingest HTTP service (Starlette): upload request lines for a job."""

from __future__ import annotations

import asyncio
import dataclasses
import re
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from services.collector.collector import Collector
from services.collector.files import FileStore
from services.ingest import metrics
from services.ingest.admission.ledger import JobLedger
from services.ingest.admission.pipeline import AdmissionPipeline
from services.ingest.admission.prefix_placement import prefix_affinity
from services.ingest.admission.submissions import SubmissionConsumer, SubmissionSetup
from services.ingest.admission.upload import Publishing, Upload
from services.ingest.admission.validation import Limits, RequestContext
from services.ingest.api.batch_api import BatchApi
from services.ingest.api.batch_results import BatchResults
from services.ingest.api.file_api import FileApi
from services.ingest.api.models import ModelCatalog
from services.ingest.api.openai_errors import openai_error
from services.ingest.batches.batch_book import BatchBook
from services.ingest.batches.batch_refresh import BatchRefresher
from services.ingest.batches.jobs import JobBook, JobTotals
from services.ingest.settings import IngestSettings
from services.ingest.tenancy.access import Action, Verdict, decide
from services.ingest.tenancy.auth import Callers, TenantAuth, is_loopback
from services.ingest.tenancy.owned_files import OwnedFiles
from services.ingest.tenancy.tenant_usage import TenantUsage
from services.kafka.lag import BacklogMonitor
from services.kafka.producer import AsyncProducer
from services.kafka.stats import stats_config
from services.lanes import Lane
from services.logs import get_logger
from services.models.registry import ModelRegistry, register_models
from services.ops_http import ops_routes
from services.resources import data_dir

log = get_logger("ingest")
_JOB_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")


def _error(
    status: int, message: str, headers: dict[str, str] | None = None, **extra: Any
) -> JSONResponse:
    return JSONResponse(
        {"error": {"message": message, **extra}}, status_code=status, headers=headers
    )


class IngestService:
    """Holds the producer, backlog monitor and ledger for the app's lifetime."""

    def __init__(self, settings: IngestSettings) -> None:
        self.settings = settings
        self.options = settings.ingest
        self.publishing: Publishing | None = None
        self.uploads_in_flight = 0
        self.jobs: JobBook | None = None
        self.submissions: SubmissionConsumer | None = None
        self.callers = Callers.from_options(self.options)
        root = Path(self.options.file_dir)
        self.collector = Collector(
            settings.kafka_config(), settings.topics.results, settings.topics.dlq, root
        )
        files = OwnedFiles(FileStore(root), self.options.default_tenant)
        self.usage = TenantUsage(self.options, files)
        self.file_api = FileApi(files, self.callers, self.usage)
        self.batch_api = BatchApi(files, self.options.retry_after_s, self.callers, self.usage)
        self.batch_results = BatchResults(self.collector, self.batch_api.batch_for)
        self.scheduler: httpx.AsyncClient | None = None  # opened by the lifespan
        self.registry = ModelRegistry(
            settings.kafka_config(), settings.topics, self._registry_changed
        )
        self.models = ModelCatalog(self.registry.names, self.options.scheduler_url)
        self.batch_api.waiting_models = self.models.unserved
        self._loop: asyncio.AbstractEventLoop | None = None

    @asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        """One HTTP client for every call to the scheduler, open while the app runs."""
        url = self.options.scheduler_url
        async with httpx.AsyncClient(
            base_url=url or "", timeout=2, headers=self.settings.ops_headers()
        ) as scheduler:
            self.scheduler = scheduler if url else None
            async with self._serving(app):
                yield

    @asynccontextmanager
    async def _serving(self, _app: Starlette) -> AsyncIterator[None]:
        topics = self.settings.topics
        producer_config = self.settings.kafka_config(
            **{
                "linger.ms": 5,
                "compression.type": "lz4",
                "client.id": "kbatch-ingest",
                **stats_config("ingest-producer"),
            }
        )
        self._loop = asyncio.get_running_loop()
        await asyncio.to_thread(self._register_configured_models)
        backlog = BacklogMonitor(
            self.settings.kafka_config(),
            self.settings.inference_group,
            topics.request_layout(),
            self.registry.names,
            self.options.backlog_refresh_s,
        )
        with AsyncProducer(producer_config) as producer, self.registry:
            if not await asyncio.to_thread(self.registry.wait_for, self.options.served_models, 30):
                raise RuntimeError("the model registry did not show ingest's own models in 30 s")
            await asyncio.to_thread(backlog.start)
            self.jobs = JobBook(producer, topics.jobs)
            await asyncio.to_thread(self.jobs.load, self.settings.kafka_config())
            batches = BatchBook(producer, topics.batches)
            await asyncio.to_thread(batches.load, self.settings.kafka_config())
            pipeline = AdmissionPipeline(
                JobLedger(self.options.tracked_jobs),
                topics.request_layout(),
                Limits(self.registry.names(), self.options.max_max_tokens),
                max_line_bytes=self.options.max_line_bytes,
                max_lines_per_job=self.options.max_lines_per_job,
                prefix_affinity=prefix_affinity(
                    self.options.prefix_affinity,
                    topics.request_layout(),
                    lambda: backlog.partitions,
                    self.options.prefix_load_factor,
                    self.options.prefix_completion_chars,
                ),
            )
            self.publishing = Publishing(producer, backlog, pipeline, self.options)
            following_models = asyncio.create_task(
                self.models.follow(self.scheduler, self.options.models_refresh_s)
            )
            stop_submissions = asyncio.Event()
            submitting = self._start_submissions(backlog, stop_submissions)
            self.batch_api.attach(self.publishing, batches, self.jobs)
            self.usage.attach(self.jobs, batches, self.collector.collected)
            showing_usage = asyncio.create_task(
                self.usage.show(self.options.batch_refresh_s), name="tenant-usage"
            )
            await self.batch_api.fail_interrupted()
            if self.options.collector:
                self.collector.start()
            refreshing = BatchRefresher(
                batches,
                self.jobs,
                self.collector,
                self.batch_api.files,
                self.scheduler,
                self.options.default_tenant,
            ).start(self.options.batch_refresh_s)
            log.info("ingest ready", models=sorted(self.models.names()))
            if not self.options.tenant_tokens and not is_loopback(self.options.http_host):
                log.warning(
                    "ingest listens beyond this machine without tenant tokens: every caller "
                    "sees and changes every tenant's files, batches and jobs; set "
                    "KBATCH_INGEST__TENANT_TOKENS",
                    http_host=self.options.http_host,
                )
            try:
                yield
            finally:
                refreshing.cancel()
                showing_usage.cancel()
                await asyncio.gather(refreshing, showing_usage, return_exceptions=True)
                following_models.cancel()
                stop_submissions.set()
                await asyncio.gather(following_models, submitting, return_exceptions=True)
                self.collector.stop()
                backlog.stop()
                log.info("ingest stopping: flushing producer")
        # Leaving the producer's context flushed every queued record.

    def _start_submissions(
        self, backlog: BacklogMonitor, stop: asyncio.Event
    ) -> asyncio.Future[None]:
        """The consumer of Kafka-native submissions, when enabled (a finished future if not)."""
        assert self.jobs is not None and self.publishing is not None
        if not self.options.submissions:
            done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            done.set_result(None)
            return done
        topics = self.settings.topics
        setup = SubmissionSetup(
            kafka_config=self.settings.kafka_config(),
            topic=topics.submissions,
            group_id=f"{topics.prefix}-ingest-submissions",
            # One per process: fencing across instances comes from the group's generation.
            transactional_id=f"{topics.prefix}.ingest-submissions.{uuid.uuid4().hex[:12]}",
            rejections_topic=topics.rejections,
            jobs_topic=topics.jobs,
            default_tenant=self.options.default_tenant,
            lane_backlog_limit=self.options.lane_backlog_limit,
        )
        self.submissions = SubmissionConsumer(
            setup, self.jobs, self.publishing.pipeline, backlog, self.usage
        )
        return asyncio.create_task(self.submissions.serve(stop), name="submissions")

    def _register_configured_models(self) -> None:
        """The operator's models (KBATCH_INGEST__SERVED_MODELS) are known from the start,
        served or not: their requests wait for a worker."""
        register_models(
            self.settings.kafka_config(), self.settings.topics, self.options.served_models, "ingest"
        )

    def _registry_changed(self, names: frozenset[str]) -> None:
        """From the registry's thread: admit the new set on the event loop."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._admit_models, names)

    def _admit_models(self, names: frozenset[str]) -> None:
        """Uploads and submissions admit through one pipeline: both see the new models."""
        if self.publishing is not None:
            pipeline = self.publishing.pipeline
            pipeline.limits = dataclasses.replace(pipeline.limits, served_models=names)

    async def list_models(self, _request: Request) -> Response:
        """OpenAI's `GET /v1/models`: the registered models, with live workers and backlog."""
        backlog = self.publishing.backlog.cells() if self.publishing is not None else None
        return JSONResponse(self.models.document(backlog))

    def health(self) -> tuple[bool, dict[str, Any]]:
        if self.publishing is None:
            return False, {"reason": "starting"}
        error = self.publishing.backlog.last_error
        for lane, measured in (self.publishing.backlog.by_lane() or {}).items():
            metrics.LANE_BACKLOG.labels(lane.value).set(measured)
        stopped = self.submissions.failure if self.submissions is not None else None
        detail = {
            "backlog_error": error,
            "uploads_in_flight": self.uploads_in_flight,
            "submissions_stopped": stopped,
        }
        return error is None and stopped is None, detail

    async def upload(self, request: Request) -> Response:
        if self.publishing is None:
            return _error(503, "ingest is starting")
        job_id = request.path_params["job_id"]
        if not _JOB_ID.match(job_id):
            return _error(400, "job id must match [A-Za-z0-9_.:-]{1,128}")
        try:
            lane = Lane(request.query_params.get("priority", Lane.NORMAL.value))
            first_line = int(request.query_params.get("first_line", "1"))
            seal = _flag(request.query_params.get("seal", "false"))
        except ValueError as exc:
            return _error(400, f"bad query parameter: {exc}")
        job = await self._job(request, Action.CHANGE, claim=True)
        if isinstance(job, Response):
            return job
        if self.uploads_in_flight >= self.options.max_uploads_in_flight:
            metrics.BACKPRESSURE_REFUSALS.labels("uploads_in_flight").inc()
            return _error(
                429,
                f"{self.uploads_in_flight} uploads in flight, the limit",
                headers={"Retry-After": str(self.options.retry_after_s)},
                resume_from_line=first_line,
            )
        tenant = self.callers.of(request).tenant
        context = RequestContext(job_id, tenant, lane, int(time.time() * 1000))
        self.uploads_in_flight += 1
        metrics.UPLOADS_IN_FLIGHT.inc()
        upload = Upload(
            self.publishing,
            context,
            first_line,
            # The job's owner's room: without tokens any caller may append to any job.
            room=lambda adding: self.usage.fit_requests(job.tenant, adding),
        )
        try:
            outcome = await upload.run(request.stream())
            complete = not outcome.failed_chunks and outcome.refusal is None
            assert self.jobs is not None  # set with publishing
            totals = await self.jobs.add(
                job_id,
                tenant,
                accepted=outcome.accepted,
                rejected=len(outcome.rejections),
                seal=seal and complete,
            )
        finally:
            # The accepted lines are in the job book now (and the unacknowledged ones
            # were never queued): the room reserved for them is given back.
            self.usage.release_requests(job.tenant, upload.reserved)
            self.uploads_in_flight -= 1
            metrics.UPLOADS_IN_FLIGHT.dec()
        body = outcome.to_json(self.options.max_rejections_listed)
        body["job"] = {
            "accepted": totals.accepted,
            "rejected": totals.rejected,
            "sealed": totals.sealed,
        }
        log.info(
            "upload done",
            job_id=job_id,
            lane=lane.value,
            accepted=outcome.accepted,
            rejected=len(outcome.rejections),
            refused=outcome.refusal.reason if outcome.refusal else None,
        )
        if outcome.failed_chunks:
            return JSONResponse(body, status_code=503)
        if outcome.refusal is not None:
            headers = {"Retry-After": str(self.options.retry_after_s)}
            return JSONResponse(body, status_code=429, headers=headers)
        return JSONResponse(body)

    async def seal(self, request: Request) -> Response:
        """No more requests will come for the job: its accepted count is its total."""
        known = await self._job(request, Action.CHANGE, claim=False)
        if isinstance(known, Response):
            return known
        assert self.jobs is not None  # _job answered 503 without it
        totals = await self.jobs.add(known.job_id, known.tenant, accepted=0, rejected=0, seal=True)
        return JSONResponse({"job_id": known.job_id, "accepted": totals.accepted, "sealed": True})

    async def _job(self, request: Request, action: Action, *, claim: bool) -> JobTotals | Response:
        """The path's job, if the caller may do `action` to it; else the refusal. With
        `claim`, a job id nobody has used becomes the caller's: a job belongs to the
        tenant that used it first. Another tenant's job answers as a missing one."""
        if self.jobs is None:
            return _error(503, "ingest is starting")
        job_id = request.path_params["job_id"]
        caller = self.callers.of(request)
        known = await self.jobs.claim(job_id, caller.tenant) if claim else self.jobs.get(job_id)
        verdict = decide(caller, known.tenant if known else None, action)
        if verdict is Verdict.FORBID:
            return _error(
                403, f"an admin may read and cancel another tenant's jobs, not {action.value} them"
            )
        if verdict is Verdict.HIDE or known is None:
            return _error(404, f"no job {job_id!r} has been uploaded")
        return known


def _flag(value: str) -> bool:
    if value.lower() in ("1", "true", "yes"):
        return True
    if value.lower() in ("0", "false", "no"):
        return False
    raise ValueError(f"expected true or false, got {value!r}")


async def openapi_document(_: Request) -> Response:
    """The API's OpenAPI document (`schemas/ingest.openapi.json`; a test keeps it whole)."""
    path = data_dir("schemas") / "ingest.openapi.json"
    return Response(path.read_bytes(), media_type="application/json")


async def _http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own refusals (no such route, wrong method, a malformed form) in
    OpenAI's error shape, as every other answer of ingest's."""
    assert isinstance(exc, HTTPException)
    message = f"{exc.detail}: {request.method} {request.url.path}"
    return openai_error(exc.status_code, message, headers=exc.headers)


def create_app(settings: IngestSettings) -> Starlette:
    service = IngestService(settings)
    routes = [
        Route("/v1/jobs/{job_id}/requests", service.upload, methods=["POST"]),
        Route("/v1/jobs/{job_id}/seal", service.seal, methods=["POST"]),
        Route("/v1/models", service.list_models, methods=["GET"]),
        *service.file_api.routes(),
        *service.batch_api.routes(),
        Route("/v1/batches/{batch_id}/results", service.batch_results.stream, methods=["GET"]),
        *ops_routes(service.health, ops_token=settings.ops_token),
        Route("/openapi.json", openapi_document),
    ]
    middleware = []
    if settings.ingest.tenant_tokens:
        middleware.append(Middleware(TenantAuth, tokens=settings.ingest.tenant_tokens))
    app = Starlette(
        routes=routes,
        lifespan=service.lifespan,
        middleware=middleware,
        exception_handlers={HTTPException: _http_error},
    )
    app.state.service = service
    return app
