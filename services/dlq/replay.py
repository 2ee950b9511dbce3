"""Replay dead letters into their model's requests topic, exactly once across
interrupted runs, each to its original partition (so its original lane).

Each replayed record is produced together with a marker (key = the dead letter's
coordinate) on the compacted `<prefix>.dlq-replayed` topic, in one transaction.
A run first reads the markers and skips what they name, so a rerun after an
interruption republishes nothing twice, whatever filters either run used. One
transactional id for the tool fences a second replay running at the same time.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from services.codec import REQUEST, codec
from services.dlq.records import DeadLetter
from services.errors import DecodeError, KafkaUnavailableError, ProducerFatalError
from services.inference.outputs import REPLAYS_HEADER
from services.kafka.compacted import read_latest
from services.kafka.retries import KAFKA_RETRIES, jittered_backoff_s
from services.kafka.transactions import OutRecord, TransactionalProducer
from services.models.registry import register_models
from services.prefix import PREFIX_HEADER
from services.settings import TopicSettings


@dataclass(frozen=True)
class Refusal:
    dead: DeadLetter
    reason: str


@dataclass
class ReplayReport:
    replayed: list[DeadLetter] = field(default_factory=list)
    refused: list[Refusal] = field(default_factory=list)
    already: int = 0


def refusal_reason(dead: DeadLetter, max_replays: int) -> str | None:
    """Why a dead letter must not be replayed, or None (pure)."""
    if dead.record["original_value"] is None:
        return "no original value to replay"
    if dead.record["stage"] == "decode" or not _decodes(dead.record["original_value"]):
        return "undecodable record: replaying the same bytes cannot succeed"
    if dead.replays >= max_replays:
        return f"replayed {dead.replays} times already (max {max_replays})"
    return None


def _decodes(value: bytes) -> bool:
    try:
        codec(REQUEST).decode(value)
    except DecodeError:
        return False
    return True


def plan(dead_letters: Iterable[DeadLetter], already: set[str], max_replays: int) -> ReplayReport:
    """Split dead letters into those to replay, those refused, and those done before."""
    report = ReplayReport()
    for dead in dead_letters:
        if dead.coordinate in already:
            report.already += 1
            continue
        reason = refusal_reason(dead, max_replays)
        if reason is None:
            report.replayed.append(dead)
        else:
            report.refused.append(Refusal(dead, reason))
    return report


def replayed_coordinates(kafka_config: dict[str, Any], markers_topic: str) -> set[str]:
    return set(read_latest(kafka_config, markers_topic, lambda value: value))


class Replayer:
    """Publishes planned dead letters in transactions of `batch_size`, at most `rate`/s.

    A chunk whose transaction fails retryably (a broker restarting, no coordinator for a
    while) was aborted, so it is published again after a capped back-off: up to
    `max_attempts` times, counted in kbatch_kafka_retries_total{service="dlq"}.
    """

    def __init__(
        self,
        kafka_config: dict[str, Any],
        topics: TopicSettings,
        markers_topic: str,
        txn_id: str,
        max_attempts: int = 8,
    ) -> None:
        self._transactions = TransactionalProducer(kafka_config, txn_id)
        self._kafka_config = kafka_config
        self._topics = topics
        self._layout = topics.request_layout()
        self._markers_topic = markers_topic
        self._max_attempts = max_attempts

    def run(
        self,
        dead_letters: list[DeadLetter],
        rate: float | None,
        batch_size: int = 100,
        on_progress: Callable[[int], None] = lambda _: None,
    ) -> None:
        # Their models' topics exist before anything is published to them (a model
        # registered once stays registered; this only recreates what was deleted).
        models = {self._model_of(dead) for dead in dead_letters}
        register_models(self._kafka_config, self._topics, models, "dlq replay")
        try:
            self._retrying("init", self._transactions.open)
            started = time.monotonic()
            for first in range(0, len(dead_letters), batch_size):
                chunk = dead_letters[first : first + batch_size]
                records = self._records(chunk)
                self._retrying("replay_commit", partial(self._commit, records))
                on_progress(len(chunk))
                if rate:
                    ahead = (first + len(chunk)) / rate - (time.monotonic() - started)
                    time.sleep(max(0.0, ahead))
        finally:
            self._transactions.close()

    def _commit(self, records: list[OutRecord]) -> None:
        # A producer dropped after a failed abort is replaced here: its successor's
        # init_transactions ends whatever the old one left open.
        self._transactions.open()
        self._transactions.commit(records, None, None)

    def _retrying(self, operation: str, call: Callable[[], None]) -> None:
        """`call` until it succeeds, `max_attempts` at most; a fenced replay (another one
        took over) is never retried."""
        for attempt in range(1, self._max_attempts + 1):
            try:
                call()
                return
            except (KafkaUnavailableError, ProducerFatalError):
                if attempt == self._max_attempts:
                    raise
                KAFKA_RETRIES.labels("dlq", operation).inc()
                time.sleep(jittered_backoff_s(attempt))

    @staticmethod
    def _model_of(dead: DeadLetter) -> str:
        """The request's model (plan() refused undecodable ones)."""
        return str(codec(REQUEST).decode(dead.record["original_value"])["model"])

    def _topic_of(self, dead: DeadLetter) -> str:
        """The requests topic of the request's model: a dead letter written before
        topics per model replays into its model's topic too."""
        return self._layout.topic(self._model_of(dead))

    def _records(self, chunk: list[DeadLetter]) -> list[OutRecord]:
        """Each dead letter's original bytes to its original partition, and its marker."""
        records = []
        for dead in chunk:
            record = dead.record
            headers: list[tuple[str, str | bytes | None]] = [
                (REPLAYS_HEADER, str(dead.replays + 1).encode()),
                ("kbatch-replay-of", dead.coordinate.encode()),
            ]
            prefix = dead.headers.get(PREFIX_HEADER)
            if prefix:
                # Back to its original partition, and still grouped with its prefix there.
                headers.append((PREFIX_HEADER, prefix.encode()))
            records.append(
                OutRecord(
                    self._topic_of(dead),
                    record["original_key"],
                    record["original_value"],
                    headers,
                    partition=record["original_partition"],
                )
            )
            marker = str(int(time.time() * 1000)).encode()
            records.append(OutRecord(self._markers_topic, dead.coordinate.encode(), marker, []))
        return records
