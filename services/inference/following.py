"""Follow compacted control topics: this worker's assignment, and cancelled jobs."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

from services.codec import ASSIGNMENT, JOB, codec
from services.errors import DecodeError
from services.logs import get_logger

log = get_logger("following")

OnAssignment = Callable[[int, set[int]], None]
OnRecord = Callable[[bytes, bytes | None], None]


class TopicFollower:
    """Reads partition 0 of a control topic from the start, forever, on a thread, and
    hands each (key, value) to `on_record`. Control topics have one partition so that
    their records stay in order."""

    def __init__(self, kafka_config: dict[str, Any], topic: str, on_record: OnRecord) -> None:
        self._kafka_config = kafka_config
        self._topic = topic
        self._on_record = on_record
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"follow-{self._topic}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        consumer = Consumer(
            {
                **self._kafka_config,
                "group.id": "kbatch-follower",
                "enable.auto.commit": False,
                "isolation.level": "read_committed",
            }
        )
        consumer.assign([TopicPartition(self._topic, 0, OFFSET_BEGINNING)])
        try:
            while not self._stop.is_set():
                message = consumer.poll(0.2)
                if message is None:
                    continue
                error = message.error()
                if error is not None:
                    if error.code() != KafkaError._PARTITION_EOF:
                        log.warning("control topic read error", topic=self._topic, error=str(error))
                    continue
                self._on_record(message.key() or b"", message.value())
        finally:
            consumer.close()


def assignment_handler(worker_id: str, on_assignment: OnAssignment) -> OnRecord:
    """Keeps this worker's newest generation; older generations are ignored."""
    newest = [-1]

    def handle(key: bytes, value: bytes | None) -> None:
        if key != worker_id.encode():
            return
        if value is None:
            generation, partitions = newest[0] + 1, set()  # the scheduler forgot us
        else:
            try:
                record = codec(ASSIGNMENT).decode(value)
            except DecodeError as exc:
                log.error("undecodable assignment ignored", error=str(exc))
                return
            if record["generation"] <= newest[0]:
                return
            generation, partitions = record["generation"], set(record["partitions"])
        newest[0] = generation
        log.info("assignment received", generation=generation, partitions=sorted(partitions))
        on_assignment(generation, partitions)

    return handle


def cancellation_handler(
    cancelled: set[str], on_cancelled: Callable[[str], object] = lambda _: None
) -> OnRecord:
    """Maintains the set of cancelled (or expired) job ids from the jobs topic, and tells
    `on_cancelled` (from the follower's thread) of each newly cancelled job."""

    def handle(key: bytes, value: bytes | None) -> None:
        job_id = key.decode()
        if value is None:
            cancelled.discard(job_id)
            return
        try:
            record = codec(JOB).decode(value)
        except DecodeError as exc:
            log.error("undecodable job record ignored", error=str(exc))
            return
        if record["cancelled"] and job_id not in cancelled:
            log.info("job cancelled", job_id=job_id, reason=record["cancel_reason"])
            cancelled.add(job_id)
            on_cancelled(job_id)

    return handle
