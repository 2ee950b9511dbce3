"""Replay dead letters into the requests topic, exactly once across interrupted runs.

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
from typing import Any

from confluent_kafka import KafkaException, Producer

from services.dlq.records import DeadLetter
from services.errors import KafkaUnavailableError
from services.inference.outputs import REPLAYS_HEADER
from services.kafka.compacted import read_latest


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
    if dead.record["stage"] == "decode":
        return "undecodable record: replaying the same bytes cannot succeed"
    if dead.replays >= max_replays:
        return f"replayed {dead.replays} times already (max {max_replays})"
    return None


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
    """Publishes planned dead letters in transactions of `batch_size`, at most `rate`/s."""

    def __init__(
        self, kafka_config: dict[str, Any], requests_topic: str, markers_topic: str, txn_id: str
    ) -> None:
        self._producer = Producer({**kafka_config, "transactional.id": txn_id})
        self._requests_topic = requests_topic
        self._markers_topic = markers_topic

    def run(
        self,
        dead_letters: list[DeadLetter],
        rate: float | None,
        batch_size: int = 100,
        on_progress: Callable[[int], None] = lambda _: None,
    ) -> None:
        try:
            self._producer.init_transactions(30)
            started = time.monotonic()
            for first in range(0, len(dead_letters), batch_size):
                chunk = dead_letters[first : first + batch_size]
                self._publish(chunk)
                on_progress(len(chunk))
                if rate:
                    ahead = (first + len(chunk)) / rate - (time.monotonic() - started)
                    time.sleep(max(0.0, ahead))
        except KafkaException as exc:
            raise KafkaUnavailableError(f"replay failed: {exc}") from exc

    def _publish(self, chunk: list[DeadLetter]) -> None:
        producer = self._producer
        producer.begin_transaction()
        for dead in chunk:
            record = dead.record
            producer.produce(
                self._requests_topic,
                record["original_value"],
                key=record["original_key"],
                partition=record["original_partition"],
                headers=[
                    (REPLAYS_HEADER, str(dead.replays + 1).encode()),
                    ("kbatch-replay-of", dead.coordinate.encode()),
                ],
            )
            producer.produce(
                self._markers_topic,
                str(int(time.time() * 1000)).encode(),
                key=dead.coordinate.encode(),
            )
        producer.commit_transaction(30)
