"""Dead letters as the tools see them: decoded, with their coordinates, filtered (pure)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from services.codec import DEAD_LETTER, codec
from services.kafka.compacted import read_to_end


@dataclass(frozen=True)
class DeadLetter:
    topic: str
    partition: int
    offset: int
    record: dict[str, Any]
    headers: dict[str, str]

    @property
    def coordinate(self) -> str:
        return f"{self.topic}:{self.partition}:{self.offset}"

    @property
    def replays(self) -> int:
        return int(self.headers.get("kbatch-replays", "0") or 0)


@dataclass(frozen=True)
class Filters:
    job: str | None = None
    error_class: str | None = None
    since_ms: int | None = None

    def match(self, dead: DeadLetter) -> bool:
        record = dead.record
        return (
            (self.job is None or record["job_id"] == self.job)
            and (self.error_class is None or record["error_class"] == self.error_class)
            and (self.since_ms is None or record["failed_at_ms"] >= self.since_ms)
        )


def read_dead_letters(kafka_config: dict[str, Any], topic: str) -> Iterator[DeadLetter]:
    """Every committed record of the DLQ, up to its end when the read began."""
    for message in read_to_end(kafka_config, topic, "kbatch-dlq-reader"):
        yield DeadLetter(
            topic,
            message.partition() or 0,
            message.offset() or 0,
            codec(DEAD_LETTER).decode(message.value()),
            _headers(message.headers() or []),
        )


def _headers(raw: Any) -> dict[str, str]:
    decoded: dict[str, str] = {}
    for name, value in raw:
        text = value.decode(errors="replace") if isinstance(value, bytes) else str(value or "")
        decoded[str(name)] = text
    return decoded
