"""`kbatch inference`: one worker process with /healthz and /metrics."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import sys
from collections.abc import Iterator
from typing import Any

from confluent_kafka import KafkaException
from starlette.applications import Starlette

from services import build_info
from services.errors import DeliveryError, KbatchError
from services.inference import metrics
from services.inference.engines import build_engine
from services.inference.following import (
    TopicFollower,
    assignment_handler,
    cancellation_handler,
)
from services.inference.gpu import GpuReport, assess, sample_gpus
from services.inference.heartbeat import HeartbeatPublisher, heartbeat_record
from services.inference.settings import InferenceSettings, parse_partitions
from services.inference.worker import Worker
from services.kafka.producer import AsyncProducer
from services.kafka.retries import KAFKA_RETRIES, jittered_backoff_s
from services.lifecycle import exit_now, install_stop_signals
from services.logs import configure_logging, get_logger
from services.models.registry import register_models
from services.ops_http import make_server, ops_routes, serve_until
from services.routing import ModelPartition, encode_partitions

log = get_logger("inference")


class GpuWatch:
    """Samples NVML on an interval; an unhealthy GPU stops the worker taking work."""

    def __init__(self, worker: Worker, gpu_required: bool) -> None:
        self.worker = worker
        self.gpu_required = gpu_required
        self.reasons: tuple[str, ...] = ()
        self.report: GpuReport | None = None

    async def check(self) -> bool:
        report = await asyncio.to_thread(sample_gpus)
        verdict = assess(report, self.worker.options.gpu, self.gpu_required)
        self.report, self.reasons = report, verdict.reasons
        for gpu in report.samples:
            label = str(gpu.index)
            metrics.GPU_MEMORY_USED.labels(label).set(gpu.memory_used_bytes)
            metrics.GPU_MEMORY_TOTAL.labels(label).set(gpu.memory_total_bytes)
            metrics.GPU_TEMPERATURE.labels(label).set(gpu.temperature_c)
            metrics.GPU_UTILIZATION.labels(label).set(gpu.utilization)
        metrics.GPU_HEALTHY.set(1 if verdict.healthy else 0)
        if verdict.healthy != self.worker.accepting_work:
            log.warning("gpu health changed", healthy=verdict.healthy, reasons=verdict.reasons)
        self.worker.accepting_work = verdict.healthy
        return verdict.healthy

    async def watch(self) -> None:
        while True:
            await asyncio.sleep(self.worker.options.gpu.sample_interval_s)
            await self.check()


def _health(worker: Worker, gpu: GpuWatch) -> tuple[bool, dict[str, Any]]:
    healthy = worker.dead_reason is None and worker.accepting_work
    # Degraded is still alive (200): it is retrying against the cluster, not stuck.
    status = "ok" if not worker.degraded else "degraded"
    return healthy, {
        "status": status if healthy else "unhealthy",
        "degraded": dict(worker.degraded),
        "worker_id": worker.options.worker_id,
        "engine": worker.engine.name,
        "served_models": list(worker.engine.served_models),
        "owned_partitions": encode_partitions(worker.owned),
        "dead": worker.dead_reason,
        "gpu": list(gpu.reasons),
    }


async def _run(settings: InferenceSettings) -> int:
    options = settings.inference
    stop = asyncio.Event()
    install_stop_signals(stop)
    engine = build_engine(options)
    log.warning(
        "engine selected", engine=engine.name, model=options.model, served=engine.served_models
    )
    worker = Worker(settings, engine)
    gpu = GpuWatch(worker, gpu_required=options.engine == "vllm")
    if not await gpu.check() and options.engine == "vllm":
        log.error("no usable GPU for the vllm engine", reasons=gpu.reasons)
        return 2
    app = Starlette(routes=ops_routes(lambda: _health(worker, gpu), ops_token=settings.ops_token))
    server = make_server(app, options.http_host, options.http_port)
    server_stop = asyncio.Event()
    with contextlib.ExitStack() as stack:
        producer = AsyncProducer(settings.kafka_config(**{"linger.ms": 0})).__enter__()
        stack.callback(_close_heartbeats, producer)
        heartbeats = HeartbeatPublisher(
            producer,
            settings.topics.heartbeats,
            lambda: _heartbeat(worker, gpu, leaving=False),
            options.heartbeat_interval_s,
        )
        worker.on_ownership_changed = heartbeats.send_soon
        stack.enter_context(_following(settings, worker, asyncio.get_running_loop()))
        tasks = [
            asyncio.create_task(serve_until(server, server_stop)),
            asyncio.create_task(gpu.watch()),
            asyncio.create_task(_announce(settings, worker, heartbeats)),
        ]
        try:
            code = await worker.run(stop)
        finally:
            for task in tasks[1:]:
                task.cancel()
            server_stop.set()
            await asyncio.gather(*tasks, return_exceptions=True)
        # Its last word: the scheduler hands its partitions on without waiting for a timeout.
        heartbeats.snapshot = lambda: _heartbeat(worker, gpu, leaving=True)
        try:
            await heartbeats.send()
        except DeliveryError as exc:
            log.warning("last heartbeat not delivered; the scheduler times out", error=str(exc))
    log.info("worker exiting", code=code)
    if len(worker.hung_calls):
        # Interpreter shutdown would join their threads, which never return.
        log.warning("exiting past transaction calls still hung", hung=len(worker.hung_calls))
        exit_now(code)
    return code


async def _announce(
    settings: InferenceSettings, worker: Worker, heartbeats: HeartbeatPublisher
) -> None:
    """Once the engine has started (an `openai` engine may learn its models then):
    register the models it serves, take static partitions of each, then heartbeat."""
    await worker.engine_ready.wait()
    models = worker.engine.served_models
    for model in models:  # series from zero, so rates and alerts exist before any event
        metrics.RESULTS.labels(worker.engine.name, model)
        metrics.MISROUTED.labels(model)
    worker_id = settings.inference.worker_id
    for attempt in itertools.count(1):
        try:
            await asyncio.to_thread(
                register_models,
                settings.kafka_config(),
                settings.topics,
                models,
                f"worker {worker_id}",
            )
            break
        except (KafkaException, KbatchError, TimeoutError) as exc:
            # Unregistered, its models' requests could not be admitted: keep trying.
            KAFKA_RETRIES.labels("inference", "register_models").inc()
            log.warning("models not registered yet; retrying", error=str(exc), attempt=attempt)
            await asyncio.sleep(jittered_backoff_s(attempt))
    if not settings.inference.follow_scheduler:
        partitions = parse_partitions(settings.inference.partitions)
        worker.set_assignment({ModelPartition(m, p) for m in models for p in partitions})
    await heartbeats.run()


def _close_heartbeats(producer: AsyncProducer) -> None:
    """Heartbeats are snapshots: one the cluster could not take is not worth a crash."""
    try:
        producer.close(timeout_s=5)
    except DeliveryError as exc:
        log.warning("heartbeats unacknowledged at exit", error=str(exc))


def _heartbeat(worker: Worker, gpu: GpuWatch, leaving: bool) -> dict[str, Any]:
    options = worker.options
    return heartbeat_record(
        worker_id=options.worker_id,
        pool=options.pool,
        capacity=options.capacity,
        engine=worker.engine.name,
        served_models=worker.engine.served_models,
        healthy=worker.dead_reason is None and worker.accepting_work,
        reasons=gpu.reasons + ((worker.dead_reason,) if worker.dead_reason else ()),
        gpu=gpu.report,
        draining=worker.draining or leaving,
        leaving=leaving,
        generation=worker.generation,
        owned=set() if leaving else set(worker.owned),
    )


@contextlib.contextmanager
def _following(
    settings: InferenceSettings, worker: Worker, loop: asyncio.AbstractEventLoop
) -> Iterator[None]:
    """Follow the control topics: cancelled jobs always, assignments when told to.
    Assignments are applied on the event loop's thread."""

    def deliver(generation: int, partitions: set[ModelPartition]) -> None:
        loop.call_soon_threadsafe(worker.set_assignment, partitions, generation)

    followers = [
        TopicFollower(
            settings.kafka_config(),
            settings.topics.jobs,
            cancellation_handler(
                worker.cancelled_jobs,
                lambda job_id: loop.call_soon_threadsafe(worker.cancel_job, job_id),
            ),
        )
    ]
    if settings.inference.follow_scheduler:
        handler = assignment_handler(settings.inference.worker_id, deliver)
        followers.append(
            TopicFollower(settings.kafka_config(), settings.topics.assignments, handler)
        )
    for follower in followers:
        follower.start()
    try:
        yield
    finally:
        for follower in followers:
            follower.stop()


def run(settings: InferenceSettings | None = None) -> None:
    settings = settings or InferenceSettings()
    configure_logging(settings.log_level, settings.log_format)
    build_info.record("inference")
    sys.exit(asyncio.run(_run(settings)))
