"""Run one decoded request through the engine: retries, OOM backoff, result or dead letter."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Any

from services.codec import ResultsFormat
from services.errors import (
    EngineOutOfMemoryError,
    InvalidRequestError,
    ModelNotServedError,
    TransientEngineError,
)
from services.inference import metrics
from services.inference.engines.base import Engine, EngineOutput, EngineRequest
from services.inference.outputs import Origin, dead_letter_record, result_record
from services.inference.retry import engine_retrying
from services.kafka.transactions import OutRecord


@dataclass(frozen=True)
class RunnerConfig:
    worker_id: str
    results_topic: str
    dlq_topic: str
    max_attempts: int
    retry_initial_s: float
    retry_max_s: float
    results_format: ResultsFormat = "avro"


@dataclass
class Tries:
    """Engine calls made for one request so far."""

    count: int = 1


def count_prompt_tokens(model: str, output: EngineOutput) -> None:
    """Prompt tokens by source, so the prefix cache's hit ratio is a query away."""
    if output.cached_tokens is None:
        metrics.PROMPT_TOKENS.labels(model, "unreported").inc(output.prompt_tokens)
        return
    cached = output.cached_tokens
    metrics.PROMPT_TOKENS.labels(model, "cache").inc(cached)
    metrics.PROMPT_TOKENS.labels(model, "evaluated").inc(output.prompt_tokens - cached)


class RequestRunner:
    """Turns a request record into the records to publish for it."""

    def __init__(self, engine: Engine, config: RunnerConfig) -> None:
        self._engine = engine
        self._config = config

    async def run(
        self, origin: Origin, record: dict[str, Any], engine_priority: str | None = None
    ) -> list[OutRecord]:
        """The result, or a dead letter; EngineDeadError propagates (the worker must stop).
        `engine_priority`: the lane the engine schedules it as, when not its own."""
        config = self._config
        queue_wait_s = max(0.0, time.time() - record["submitted_at_ms"] / 1000)
        metrics.QUEUE_WAIT_SECONDS.observe(queue_wait_s)
        started = time.monotonic()
        request = EngineRequest.from_record(
            record, record["attempt"], engine_priority, origin.prefix_key
        )
        served = self._engine.served_models
        if request.model not in served:
            # Routing sends a model's requests only to its workers: a safety net, counted.
            metrics.MISROUTED.labels(request.model).inc()
            refusal = ModelNotServedError(
                f"this worker serves {', '.join(served)}, not the requested model {request.model!r}"
            )
            return [self._dead_letter(origin, record, refusal, "model_not_served", 0)]
        tries = Tries()
        try:
            try:
                output = await self._generate_backing_off_oom(request)
            except TransientEngineError as first_failure:
                output = await self._retried(request, record, first_failure, tries)
        except InvalidRequestError as exc:
            return [self._dead_letter(origin, record, exc, "inference", tries.count)]
        except TransientEngineError as exc:
            return [self._dead_letter(origin, record, exc, "retries_exhausted", tries.count)]
        inference_s = time.monotonic() - started
        metrics.REQUEST_SECONDS.observe(inference_s)
        metrics.OUTPUT_TOKENS.inc(output.completion_tokens)
        count_prompt_tokens(request.model, output)
        return [
            result_record(
                config.results_topic,
                record,
                output,
                self._engine,
                config.worker_id,
                origin,
                queue_wait_s,
                inference_s,
                record["attempt"] + tries.count,
                results_format=config.results_format,
            )
        ]

    async def _retried(
        self,
        request: EngineRequest,
        record: dict[str, Any],
        first_failure: TransientEngineError,
        tries: Tries,
    ) -> EngineOutput:
        """The retry policy, after a first try failed transiently. The failure is replayed
        into the policy as its first attempt, so its back-off, Retry-After and attempt
        limit count it; tenacity's bookkeeping (a Future with a lock per attempt) costs
        too much to pay on every request that succeeds at once."""
        config = self._config
        replay: TransientEngineError | None = first_failure
        async for attempt in engine_retrying(
            config.max_attempts, config.retry_initial_s, config.retry_max_s
        ):
            with attempt:
                if replay is not None:
                    failure, replay = replay, None
                    raise failure
                metrics.RETRIES.inc()
                tries.count += 1
                this_try = dataclasses.replace(request, attempt=record["attempt"] + tries.count - 1)
                return await self._generate_backing_off_oom(this_try)
        raise AssertionError("the retry policy ended without an outcome")  # it reraises

    async def _generate_backing_off_oom(self, request: EngineRequest) -> EngineOutput:
        """Out of memory: halve the engine's concurrency and try again, down to one sequence."""
        while True:
            try:
                return await self._engine.generate(request)
            except EngineOutOfMemoryError:
                if self._engine.max_concurrency <= 1:
                    raise
                self._engine.shrink_concurrency()
                metrics.OOM_SHRINKS.inc()
                metrics.ENGINE_CONCURRENCY.set(self._engine.max_concurrency)

    def _dead_letter(
        self, origin: Origin, record: dict[str, Any], exc: Exception, stage: str, tries: int
    ) -> OutRecord:
        error_class = type(exc).__name__
        metrics.DEAD_LETTERS.labels(stage, error_class).inc()
        return dead_letter_record(
            self._config.dlq_topic,
            origin,
            error_class,
            str(exc),
            stage,
            record["attempt"] + tries,
            self._config.worker_id,
            record,
        )
