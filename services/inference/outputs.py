"""Records a worker publishes: results and dead letters (pure builders)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from services.codec import DEAD_LETTER, ResultsFormat, codec, results_codec
from services.inference.engines.base import Engine, EngineOutput
from services.kafka.transactions import OutRecord
from services.prefix import PREFIX_HEADER


@dataclass(frozen=True)
class Origin:
    """Where a request record came from."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    replays: int = 0  # how many times the DLQ replay tool has republished this request
    prefix_key: str | None = None  # ingest's, from the record's header (prefix affinity)


REPLAYS_HEADER = "kbatch-replays"


def origin_of(message: Any, topic: str, partition: int, offset: int) -> Origin:
    """A fetched request record's origin, with what its headers carry: how often the DLQ
    replay tool republished it, and the prefix key ingest gave it."""
    replays, prefix_key = 0, None
    for name, value in message.headers() or ():
        if name == REPLAYS_HEADER and value:
            replays = int(value)
        elif name == PREFIX_HEADER and value:
            prefix_key = bytes(value).decode("ascii", errors="replace")
    return Origin(topic, partition, offset, message.key(), message.value(), replays, prefix_key)


def _now_ms() -> int:
    return int(time.time() * 1000)


def result_record(
    topic: str,
    request: dict[str, Any],
    output: EngineOutput,
    engine: Engine,
    worker_id: str,
    origin: Origin,
    queue_wait_s: float,
    inference_s: float,
    attempt: int,
    error: dict[str, str] | None = None,
    *,
    results_format: ResultsFormat,
) -> OutRecord:
    """A result, in the results topic's format."""
    value = results_codec(results_format).encode(
        {
            "request_id": request["request_id"],
            "job_id": request["job_id"],
            "custom_id": request["custom_id"],
            "tenant": request["tenant"],
            "priority": request["priority"],
            "endpoint": request["endpoint"],
            # The model asked for: one the engine serves (the runner refuses others).
            "model": request["model"],
            "engine": engine.name,
            "worker_id": worker_id,
            "output": {
                "text": output.text,
                "embedding": output.embedding,
                "finish_reason": output.finish_reason,
            },
            "usage": {
                "prompt_tokens": output.prompt_tokens,
                "completion_tokens": output.completion_tokens,
                "total_tokens": output.prompt_tokens + output.completion_tokens,
                "cached_tokens": output.cached_tokens,
            },
            "timings": {"queue_wait_ms": queue_wait_s * 1000, "inference_ms": inference_s * 1000},
            "error": error,
            "attempt": attempt,
            "source_partition": origin.partition,
            "source_offset": origin.offset,
            "completed_at_ms": _now_ms(),
        }
    )
    headers: list[tuple[str, str | bytes | None]] = [
        ("kbatch-job-id", request["job_id"].encode()),
        ("kbatch-engine", engine.name.encode()),
        ("kbatch-model", request["model"].encode()),
    ]
    # Keyed by job so one job's results stay together, in order, on one partition.
    return OutRecord(topic, request["job_id"].encode(), value, headers)


def cancelled_record(
    topic: str,
    request: dict[str, Any],
    engine: Engine,
    worker_id: str,
    origin: Origin,
    *,
    reason: str = "cancelled",
    results_format: ResultsFormat,
) -> OutRecord:
    """The result of a request whose job was cancelled or expired before it ran: OpenAI's
    `batch_cancelled` or `batch_expired` (its completion window ended first)."""
    expired = reason == "expired"
    error = {
        "code": "batch_expired" if expired else "batch_cancelled",
        "message": "the batch's completion window ended before this ran"
        if expired
        else "the batch was cancelled before this ran",
    }
    return result_record(
        topic,
        request,
        EngineOutput(0, 0),
        engine,
        worker_id,
        origin,
        0.0,
        0.0,
        request["attempt"],
        error=error,
        results_format=results_format,
    )


def dead_letter_record(
    topic: str,
    origin: Origin,
    error_class: str,
    message: str,
    stage: str,
    attempt: int,
    worker_id: str,
    request: dict[str, Any] | None = None,
) -> OutRecord:
    """The original bytes unchanged, plus why and where it failed (also as headers)."""
    failed_at = _now_ms()
    value = codec(DEAD_LETTER).encode(
        {
            "original_topic": origin.topic,
            "original_partition": origin.partition,
            "original_offset": origin.offset,
            "original_key": origin.key,
            "original_value": origin.value,
            "error_class": error_class,
            "error_message": message,
            "stage": stage,
            "attempt": attempt,
            "worker_id": worker_id,
            "failed_at_ms": failed_at,
            "job_id": request["job_id"] if request else None,
            "request_id": request["request_id"] if request else None,
            "custom_id": request["custom_id"] if request else None,
        }
    )
    headers: list[tuple[str, str | bytes | None]] = [
        ("kbatch-dlq-original-topic", origin.topic.encode()),
        ("kbatch-dlq-original-partition", str(origin.partition).encode()),
        ("kbatch-dlq-original-offset", str(origin.offset).encode()),
        ("kbatch-dlq-error-class", error_class.encode()),
        ("kbatch-dlq-error-message", message[:1000].encode()),
        ("kbatch-dlq-stage", stage.encode()),
        ("kbatch-dlq-attempt", str(attempt).encode()),
        ("kbatch-dlq-worker-id", worker_id.encode()),
        ("kbatch-dlq-failed-at-ms", str(failed_at).encode()),
        (REPLAYS_HEADER, str(origin.replays).encode()),
    ]
    if request:
        headers.append(("kbatch-job-id", request["job_id"].encode()))
    if origin.prefix_key is not None:
        headers.append((PREFIX_HEADER, origin.prefix_key.encode()))  # a replay keeps it
    return OutRecord(topic, origin.key, value, headers)
