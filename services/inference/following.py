"""Follow compacted control topics: this worker's assignment, and cancelled jobs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Message, TopicPartition

from services.codec import ASSIGNMENT, JOB, codec
from services.errors import DecodeError
from services.kafka.consumers import ConsumerRole, make_consumer
from services.kafka.reader import TopicReader
from services.logs import get_logger
from services.routing import ModelPartition, decode_partitions

log = get_logger("following")

OnAssignment = Callable[[int, set[ModelPartition]], None]
OnRecord = Callable[[bytes, bytes | None], None]


class TopicFollower:
    """Reads partition 0 of a control topic from the start, forever, on a thread, and
    hands each (key, value) to `on_record`. Control topics have one partition so that
    their records stay in order."""

    def __init__(self, kafka_config: dict[str, Any], topic: str, on_record: OnRecord) -> None:
        self._kafka_config = kafka_config
        self._topic = topic
        self._on_record = on_record
        # One record a call: consume() returns with the first, as soon as it arrives.
        self._reader = TopicReader(
            f"follow-{topic}",
            self._open,
            lambda _: [TopicPartition(topic, 0, OFFSET_BEGINNING)],
            self._hand_on,
            self._on_error,
            max_records=1,
            timeout_s=0.2,
        )

    def start(self) -> None:
        self._reader.start()

    def stop(self) -> None:
        self._reader.stop()

    def _open(self) -> Consumer:
        return make_consumer(self._kafka_config, ConsumerRole.COMMITTED_READER, "kbatch-follower")

    def _hand_on(self, records: list[Message]) -> None:
        for message in records:
            self._on_record(message.key() or b"", message.value())

    def _on_error(self, error: KafkaError) -> None:
        # librdkafka reconnects and fetches again; the follower reads on.
        log.warning("control topic read error", topic=self._topic, error=str(error))


def assignment_handler(worker_id: str, on_assignment: OnAssignment) -> OnRecord:
    """Keeps this worker's newest generation; older generations are ignored."""
    newest = [-1]

    def handle(key: bytes, value: bytes | None) -> None:
        if key != worker_id.encode():
            return
        partitions: set[ModelPartition]
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
            generation = record["generation"]
            partitions = set(decode_partitions(record["model_partitions"]))
        newest[0] = generation
        log.info(
            "assignment received",
            generation=generation,
            partitions=[f"{m}/{p}" for m, p in sorted(partitions)],
        )
        on_assignment(generation, partitions)

    return handle


def cancellation_handler(
    cancelled: dict[str, str], on_cancelled: Callable[[str], object] = lambda _: None
) -> OnRecord:
    """Maintains the cancelled (or expired) job ids, with the reason, from the jobs topic,
    and tells `on_cancelled` (from the follower's thread) of each newly cancelled job."""

    def handle(key: bytes, value: bytes | None) -> None:
        job_id = key.decode()
        if value is None:
            cancelled.pop(job_id, None)
            return
        try:
            record = codec(JOB).decode(value)
        except DecodeError as exc:
            log.error("undecodable job record ignored", error=str(exc))
            return
        if record["cancelled"] and job_id not in cancelled:
            log.info("job cancelled", job_id=job_id, reason=record["cancel_reason"])
            cancelled[job_id] = record["cancel_reason"] or "cancelled"
            on_cancelled(job_id)

    return handle
