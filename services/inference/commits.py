"""Committing the owned partitions: each one's outputs, published in the transaction
that commits past their offsets, on an interval or once enough are ready.

Outputs wait in PartitionProgress until every lower offset finished, then go out in
the transaction that commits past them.
"""

from __future__ import annotations

import asyncio
from typing import Any

from services.errors import (
    DeliveryError,
    FencedError,
    KafkaUnavailableError,
    ProducerFatalError,
)
from services.inference import metrics
from services.inference.hung_calls import HungCalls
from services.inference.in_flight import InFlight
from services.inference.ownership import OwnedPartition, Ownership
from services.inference.settings import InferenceOptions
from services.lifecycle import exit_now, wait_event
from services.logs import get_logger

log = get_logger("worker")

EXIT_TRANSACTION_HUNG = 4


class Commits:
    """One commit round and its steps: plan what finished, commit it with its offset,
    then count it; a fenced, failed or hung commit changes ownership instead."""

    def __init__(
        self,
        ownership: Ownership,
        in_flight: InFlight,
        hung_calls: HungCalls,
        group_metadata: Any,
        options: InferenceOptions,
        results_topic: str,
        engine_name: str,
    ) -> None:
        self.wanted = asyncio.Event()  # commit now, before the interval is up
        self._ownership = ownership
        self._in_flight = in_flight
        self._hung_calls = hung_calls
        self._group_metadata = group_metadata
        self._options = options
        self._results_topic = results_topic
        self._engine_name = engine_name

    async def run(self, stop: asyncio.Event) -> None:
        """Commit every `commit_interval_s`, or when wanted sooner, until `stop`."""
        while not stop.is_set():
            await wait_event(self.wanted, self._options.commit_interval_s)
            self.wanted.clear()
            if not stop.is_set():
                await self.commit_all()

    def note_finished(self, size_bound: int) -> None:
        """A request finished: commit without waiting once `size_bound` outputs are ready."""
        if sum(p.progress.ready() for p in self._ownership.owned.values()) >= size_bound:
            self.wanted.set()

    async def commit_all(self) -> None:
        await asyncio.gather(*(self.commit(part) for part in list(self._ownership.owned.values())))

    async def commit(self, part: OwnedPartition) -> None:
        """Commit what `part` finished below its lowest offset still in flight."""
        async with part.lock:
            if not self._ownership.owns(part):
                return
            plan = part.progress.plan()
            if plan is None:
                return
            offset = self._ownership.requests.topic_partition(part.key, plan.next_offset)
            started = asyncio.get_running_loop().time()
            call = asyncio.ensure_future(
                asyncio.to_thread(part.txn.commit, plan.outputs, offset, self._group_metadata)
            )
            try:
                await asyncio.wait_for(asyncio.shield(call), self._options.commit_stall_s)
            except TimeoutError:
                await self._abandon(part, call)
                return
            except FencedError as exc:
                metrics.ABORTS.labels("fenced").inc()
                log.warning("partition fenced by a new owner", partition=part.key, error=str(exc))
                # Lost, not released: only a new assignment may give it back, or two
                # owners would fence each other in turn.
                await self._ownership.lose(part)
                return
            except ProducerFatalError as exc:
                metrics.ABORTS.labels("broker").inc()
                log.warning("producer failed for good; taking the partition afresh", error=str(exc))
                await self._ownership.forget(part)  # still desired: the main loop takes it again
                return
            except (KafkaUnavailableError, DeliveryError) as exc:
                metrics.ABORTS.labels("broker").inc()
                log.warning("commit failed, will retry", partition=part.key, error=str(exc))
                return
            metrics.COMMIT_SECONDS.observe(asyncio.get_running_loop().time() - started)
            metrics.COMMITS.inc()
            results = sum(1 for r in plan.outputs if r.topic == self._results_topic)
            metrics.RESULTS.labels(self._engine_name, part.key.model).inc(results)
            part.progress.committed(plan)

    async def _abandon(self, part: OwnedPartition, call: asyncio.Future[None]) -> None:
        """A commit outlived every timeout it was given (see hung_calls): leave its
        producer to its call and take the partition afresh, fencing that producer.
        Its transaction is aborted by the fencing, or was committed before it; the
        new owner starts from whichever offset is committed, so nothing is lost or
        published twice. Past `max_hung_commits` blocked calls (each holds a thread)
        the worker exits for its supervisor instead."""
        metrics.ABORTS.labels("hung").inc()
        self._hung_calls.abandon(call, part.txn, part.key)
        if len(self._hung_calls) > self._options.max_hung_commits:
            log.error(
                "too many transaction calls hung past their timeouts; exiting for a restart",
                hung=len(self._hung_calls),
                limit=self._options.max_hung_commits,
            )
            exit_now(EXIT_TRANSACTION_HUNG)
        log.error(
            "transaction call hung past its timeouts; its producer is abandoned and the "
            "partition taken afresh",
            partition=part.key,
            limit_s=self._options.commit_stall_s,
            hung=len(self._hung_calls),
        )
        await self._ownership.forget(part, close=False)
        # Their results belong to the abandoned transaction: the retake runs them again.
        await self._in_flight.cancel(part.key)
