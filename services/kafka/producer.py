"""An idempotent producer for asyncio callers that need each batch confirmed.

librdkafka acknowledges records on its own threads; a background thread
serves the delivery callbacks, and a `DeliveryBatch` resolves an awaitable
once every record in it is acknowledged, keeping the first error.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from types import TracebackType
from typing import Any

from confluent_kafka import KafkaError, Message, Producer

from services.errors import DeliveryError


class DeliveryBatch:
    """Acknowledgements for a group of records, awaitable from the event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._lock = threading.Lock()
        self._done = asyncio.Event()
        self._pending = 0
        self._sealed = False
        self.delivered = 0
        self.failed = 0
        self.failed_keys: list[bytes | None] = []  # which records failed, by key
        self.first_error: str | None = None

    def add(self) -> None:
        with self._lock:
            self._pending += 1

    def on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        """librdkafka's delivery callback (runs on the poll thread)."""
        with self._lock:
            self._pending -= 1
            if err is None:
                self.delivered += 1
            else:
                self.failed += 1
                self.failed_keys.append(msg.key())
                self.first_error = self.first_error or str(err)
            finished = self._sealed and self._pending == 0
        if finished:
            self._loop.call_soon_threadsafe(self._done.set)

    async def wait(self) -> None:
        """Wait until every added record is acknowledged (or failed)."""
        with self._lock:
            self._sealed = True
            finished = self._pending == 0
        if finished:
            self._done.set()
        await self._done.wait()

    def raise_for_errors(self) -> None:
        if self.first_error is not None:
            raise DeliveryError(f"{self.failed} record(s) not acknowledged: {self.first_error}")


class AsyncProducer:
    """confluent-kafka Producer with a polling thread; a context manager."""

    def __init__(self, config: dict[str, Any]) -> None:
        self._config = {"enable.idempotence": True, "acks": "all", **config}
        self._producer: Producer | None = None
        self._stopping = threading.Event()
        self._poller: threading.Thread | None = None

    def __enter__(self) -> AsyncProducer:
        self._producer = Producer(self._config)
        self._poller = threading.Thread(
            target=self._poll_forever, name="producer-poll", daemon=True
        )
        self._poller.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def producer(self) -> Producer:
        if self._producer is None:
            raise RuntimeError("producer used outside its context")
        return self._producer

    def queued(self) -> int:
        """Records waiting in librdkafka's local queue."""
        return len(self.producer)

    async def produce(
        self,
        batch: DeliveryBatch,
        topic: str,
        value: bytes,
        key: bytes | None = None,
        partition: int | None = None,
        headers: Sequence[tuple[str, str | bytes | None]] = (),
    ) -> None:
        """Hand one record to librdkafka; waits, without blocking the loop, while it is full."""
        kwargs: dict[str, Any] = {"key": key, "on_delivery": batch.on_delivery}
        if partition is not None:
            kwargs["partition"] = partition
        if headers:
            kwargs["headers"] = list(headers)
        while True:
            try:
                self.producer.produce(topic, value, **kwargs)
            except BufferError:
                await asyncio.sleep(0.01)
                continue
            batch.add()
            return

    def flush(self, timeout_s: float) -> int:
        return int(self.producer.flush(timeout_s))

    def close(self, timeout_s: float = 30.0) -> None:
        """Flush what is queued, then stop the poll thread."""
        if self._producer is None:
            return
        remaining = self._producer.flush(timeout_s)
        self._stopping.set()
        if self._poller is not None:
            self._poller.join()
        self._producer = None
        if remaining:
            raise DeliveryError(f"{remaining} record(s) still unacknowledged at close")

    def _poll_forever(self) -> None:
        producer = self._producer
        assert producer is not None
        while not self._stopping.is_set():
            producer.poll(0.1)
