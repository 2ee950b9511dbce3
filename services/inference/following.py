"""Follow the scheduler: this worker's latest record on the compacted assignments topic."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

from services.codec import ASSIGNMENT, codec
from services.errors import DecodeError
from services.logs import get_logger

log = get_logger("following")

OnAssignment = Callable[[int, set[int]], None]


class AssignmentFollower:
    """Reads the whole assignments topic on a thread and reports this worker's newest
    generation to `on_assignment(generation, partitions)`; older generations are ignored."""

    def __init__(
        self, kafka_config: dict[str, Any], topic: str, worker_id: str, on_assignment: OnAssignment
    ) -> None:
        self._kafka_config = kafka_config
        self._topic = topic
        self._worker_id = worker_id
        self._on_assignment = on_assignment
        self._generation = -1
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="assignments", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        consumer = Consumer(
            {
                **self._kafka_config,
                "group.id": f"kbatch-follower-{self._worker_id}",
                "enable.auto.commit": False,
                "isolation.level": "read_committed",
            }
        )
        # Partition 0 only: the assignments topic has one partition so that a
        # worker's records, and the scheduler's generations, stay in order.
        consumer.assign([TopicPartition(self._topic, 0, OFFSET_BEGINNING)])
        try:
            while not self._stop.is_set():
                message = consumer.poll(0.2)
                if message is None:
                    continue
                error = message.error()
                if error is not None:
                    if error.code() != KafkaError._PARTITION_EOF:
                        log.warning("assignments read error", error=str(error))
                    continue
                if message.key() == self._worker_id.encode():
                    self._apply(message.value())
        finally:
            consumer.close()

    def _apply(self, value: bytes | None) -> None:
        if value is None:
            self._report(self._generation + 1, set())  # tombstone: the scheduler forgot us
            return
        try:
            record = codec(ASSIGNMENT).decode(value)
        except DecodeError as exc:
            log.error("undecodable assignment ignored", error=str(exc))
            return
        if record["generation"] > self._generation:
            self._report(record["generation"], set(record["partitions"]))

    def _report(self, generation: int, partitions: set[int]) -> None:
        self._generation = generation
        log.info("assignment received", generation=generation, partitions=sorted(partitions))
        self._on_assignment(generation, partitions)
