"""The transactional producer: records (and consumed offsets) committed together, or none.

Used by the worker, one per owned partition (the transactional.id names the
partition, not the worker, so whoever takes the partition next fences the previous
owner in `init_transactions()`), by the DLQ replay tool (one id for the tool) and by
ingest's submissions consumer (one per instance, fenced by its group's generation).
A failed commit never leaves a transaction open: it is aborted, or the producer is
dropped for a new one whose init ends it. Calls block: run them on a thread.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NoReturn

from confluent_kafka import KafkaError, KafkaException, Producer, TopicPartition

from services.errors import FencedError, KafkaUnavailableError, ProducerFatalError

_FENCED = {
    KafkaError._FENCED,
    KafkaError.PRODUCER_FENCED,
    KafkaError.INVALID_PRODUCER_EPOCH,
    KafkaError.INVALID_PRODUCER_ID_MAPPING,
    KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED,
}


# librdkafka's RD_KAFKA_PARTITION_UA: the producer's partitioner chooses (by key).
ANY_PARTITION = -1


@dataclass(frozen=True)
class OutRecord:
    """One record to produce inside a transaction."""

    topic: str
    key: bytes | None
    value: bytes
    headers: list[tuple[str, str | bytes | None]]
    partition: int = ANY_PARTITION


def produce_record(producer: Producer, record: OutRecord) -> None:
    """Hand one record to librdkafka, serving delivery callbacks while its queue is full."""
    while True:
        try:
            producer.produce(
                record.topic,
                record.value,
                key=record.key,
                headers=record.headers,
                partition=record.partition,
            )
            return
        except BufferError:
            producer.poll(0.05)


def transactional_id(prefix: str, topic: str, partition: int) -> str:
    """The id of the worker transactions of one requests partition."""
    return f"{prefix}.inference.{topic}.{partition}"


class TransactionalProducer:
    """Commits records, and optionally a consumed offset, together, atomically."""

    def __init__(self, config: dict[str, Any], txn_id: str, timeout_s: float = 30) -> None:
        self.txn_id = txn_id
        self._config = {**config, "transactional.id": txn_id}
        self._timeout_s = timeout_s
        self._producer: Producer | None = None
        self._ready = False  # init_transactions succeeded on the current producer

    def open(self) -> None:
        """Create the producer and fence any previous owner of this partition.

        A retryable failure (the cluster slow or without a transaction coordinator)
        keeps the producer: librdkafka asks for init_transactions to be called again
        on it, which resumes the same initialisation. Idempotent once it succeeded.
        """
        if self._ready:
            return
        if self._producer is None:
            self._producer = Producer(self._config)
        try:
            self._producer.init_transactions(self._timeout_s)
        except KafkaException as exc:
            error: KafkaError = exc.args[0]
            if error.fatal() or not error.retriable():
                self._producer = None
                if error.fatal():
                    raise ProducerFatalError(f"{self.txn_id}: {error.str()}") from exc
            raise self._translate(exc) from exc
        self._ready = True

    def commit(
        self,
        records: list[OutRecord],
        offsets: TopicPartition | list[TopicPartition] | None,
        group_metadata: Any,
    ) -> None:
        """Publish `records` and commit `offsets` (if any) in one transaction, or neither."""
        producer = self._require()
        positions = [offsets] if isinstance(offsets, TopicPartition) else offsets or []
        try:
            producer.begin_transaction()
            for record in records:
                produce_record(producer, record)
            if positions:
                producer.send_offsets_to_transaction(positions, group_metadata, self._timeout_s)
            producer.commit_transaction(self._timeout_s)
        except KafkaException as exc:
            error = self._translate(exc)
            if isinstance(error, FencedError):
                # Unusable from now on; its transaction belongs to the new owner's epoch.
                self._producer, self._ready = None, False
                raise error from exc
            if exc.args[0].fatal():
                self._discard(exc)
            # Any other failure may leave the transaction open (a timed-out
            # send_offsets is retriable yet leaves it "InTransaction", and every
            # later begin_transaction fails): abort it so the next commit starts clean.
            try:
                producer.abort_transaction(self._timeout_s)
            except KafkaException as abort_failed:
                self._discard(abort_failed)
            raise error from exc

    def _discard(self, exc: KafkaException) -> NoReturn:
        """Only a new producer's init_transactions() can end what this one left open."""
        self._producer, self._ready = None, False
        raise ProducerFatalError(f"{self.txn_id}: {exc.args[0].str()}") from exc

    def close(self) -> None:
        if self._producer is not None:
            self._producer.flush(self._timeout_s)
            self._producer, self._ready = None, False

    def discard(self) -> None:
        """Close without delivering what is queued: it belongs to an abandoned transaction."""
        if self._producer is not None:
            self._producer.purge()
            self._producer, self._ready = None, False

    def _require(self) -> Producer:
        if self._producer is None:
            raise RuntimeError(f"{self.txn_id}: transactions used before open()")
        return self._producer

    def _translate(self, exc: KafkaException) -> Exception:
        error: KafkaError = exc.args[0]
        if error.code() in _FENCED:
            return FencedError(f"{self.txn_id} fenced by a newer owner: {error.str()}")
        return KafkaUnavailableError(f"{self.txn_id}: {error.str()}")
