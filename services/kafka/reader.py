"""A consumer on a thread of its own: reads assigned partitions until stopped."""

from __future__ import annotations

import threading
from collections.abc import Callable

from confluent_kafka import Consumer, KafkaError, Message, TopicPartition

OpenConsumer = Callable[[], Consumer]
Positions = Callable[[Consumer], list[TopicPartition]]
OnRecords = Callable[[list[Message]], None]
OnError = Callable[[KafkaError], None]


class TopicReader:
    """Opens a consumer on its thread, assigns it `positions(consumer)`, and reads until
    stopped; each batch of records goes to `on_records`, each consume error to `on_error`.

    `on_error` decides: it raises to end the reader (the batch it came in is then not
    handed on), or returns to skip the error and read on. Partition EOF events are not
    errors, only news that a partition was read to its end, and are skipped. The
    consumer is closed on every exit.
    """

    def __init__(
        self,
        name: str,
        open_consumer: OpenConsumer,
        positions: Positions,
        on_records: OnRecords,
        on_error: OnError,
        *,
        max_records: int = 1,
        timeout_s: float = 0.2,
    ) -> None:
        self.name = name
        self._open_consumer = open_consumer
        self._positions = positions
        self._on_records = on_records
        self._on_error = on_error
        # consume() waits for max_records or timeout_s, whichever comes first.
        self._max_records = max_records
        self._timeout_s = timeout_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name=self.name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def run(self) -> None:
        """Read on the calling thread until `stop()`."""
        consumer = self._open_consumer()
        try:
            consumer.assign(self._positions(consumer))
            while not self._stop.is_set():
                records = self._records(consumer.consume(self._max_records, self._timeout_s))
                if records:
                    self._on_records(records)
        finally:
            consumer.close()

    def _records(self, messages: list[Message]) -> list[Message]:
        records = []
        for message in messages:
            error = message.error()
            if error is None:
                records.append(message)
            elif error.code() != KafkaError._PARTITION_EOF:
                self._on_error(error)
        return records
