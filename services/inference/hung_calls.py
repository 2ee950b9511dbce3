"""Transaction calls that ignored their timeouts, and the producers they still hold.

librdkafka's send_offsets_to_transaction can block past its timeout, forever, once
the group coordinator went away (librdkafka issues 5456 and 5511, open in 2.16; seen
here when a broker of a rolling restart came back). The blocked thread cannot be
interrupted, so the worker stops waiting on it: the partition is taken afresh by a
new producer with the same transactional id, whose init_transactions fences the
old one and aborts whatever it left open. The old producer must outlive its call
(destroying a librdkafka handle in use crashes the process); it is discarded (what it
queued purged) when the call returns, if ever.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

from services.inference.request_partitions import PartitionKey
from services.logs import get_logger

log = get_logger("worker")


class Discardable(Protocol):
    def discard(self) -> None: ...


class HungCalls:
    """The calls abandoned and still blocked, each with the producer it blocks."""

    def __init__(self) -> None:
        self._held: dict[asyncio.Future[Any], Discardable] = {}
        self._closing: set[asyncio.Task[None]] = set()

    def __len__(self) -> int:
        return len(self._held)

    def abandon(
        self, call: asyncio.Future[Any], producer: Discardable, partition: PartitionKey
    ) -> None:
        self._held[call] = producer
        call.add_done_callback(lambda done: self._returned(done, partition))

    def _returned(self, call: asyncio.Future[Any], partition: PartitionKey) -> None:
        producer = self._held.pop(call)
        error = None if call.cancelled() else call.exception()
        log.warning(
            "an abandoned transaction call returned; its producer is discarded",
            partition=partition,
            error=str(error) if error is not None else None,
        )
        closing = asyncio.get_running_loop().create_task(asyncio.to_thread(producer.discard))
        self._closing.add(closing)
        closing.add_done_callback(self._closed)

    def _closed(self, task: asyncio.Task[None]) -> None:
        self._closing.discard(task)
        error = None if task.cancelled() else task.exception()
        if error is not None:
            log.warning("closing an abandoned producer failed", error=str(error))
