"""The inference worker loop: consume assigned partitions, keep the engine fed,
publish and commit in per-partition transactions.

Design notes:
- Ownership (taking, releasing, fencing) is `ownership.Ownership`; committing is
  `commits.Commits`; the lane gate's end offsets come from `lane_probe`. This loop
  calls them and holds none of their state.
- Requests run as asyncio tasks; the engine batches them continuously. The
  number in flight is capped (`sizing`); consumption pauses when the cap or the
  uncommitted bound is reached.
- Outputs wait in PartitionProgress until every lower offset finished, then
  go out in the transaction that commits past them.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Consumer, KafkaError, Message

from services.codec import REQUEST, codec
from services.errors import DecodeError, EngineDeadError
from services.inference import metrics
from services.inference.commits import EXIT_TRANSACTION_HUNG, Commits
from services.inference.committers import CommitterFactory, committer_factory
from services.inference.engines.base import Engine
from services.inference.flow import (
    FlowState,
    LaneRound,
    lane_credit,
    paused_partitions,
    room,
    starts_now,
)
from services.inference.hung_calls import HungCalls
from services.inference.in_flight import InFlight
from services.inference.lane_probe import EndOffsetsProbe, current_gate
from services.inference.outputs import (
    Origin,
    cancelled_record,
    dead_letter_record,
    origin_of,
)
from services.inference.ownership import Assignment, OwnedPartition, Ownership
from services.inference.request_partitions import PartitionKey, RequestPartitions
from services.inference.runner import RequestRunner, RunnerConfig
from services.inference.settings import InferenceSettings
from services.inference.sizing import Sizing
from services.kafka.consumers import ConsumerRole, make_consumer
from services.kafka.stats import stats_config
from services.kafka.transactions import OutRecord
from services.lifecycle import wait_event
from services.logs import get_logger

__all__ = ["EXIT_ENGINE_DEAD", "EXIT_TRANSACTION_HUNG", "Worker"]

log = get_logger("worker")


EXIT_ENGINE_DEAD = 3


@dataclass(frozen=True)
class _Running:
    """What exists only while `run()` does."""

    consumer: Consumer
    fetcher: ThreadPoolExecutor  # fetching never queues behind commits and probes
    ownership: Ownership
    commits: Commits
    probe: EndOffsetsProbe


class Worker:
    """One inference worker process's consuming, running and committing."""

    def __init__(
        self,
        settings: InferenceSettings,
        engine: Engine,
        committers: CommitterFactory | None = None,
    ) -> None:
        self.settings = settings
        self.options = settings.inference
        self.engine = engine
        self.requests = RequestPartitions.of(settings.topics)
        self.assignment = Assignment()  # of the scheduler, applied by the main loop
        self.draining = False
        # job id -> why it ended early (cancelled, expired), from the jobs topic
        self.cancelled_jobs: dict[str, str] = {}
        self.engine_ready = asyncio.Event()  # started: its served models are known
        self.on_ownership_changed: Callable[[], None] = lambda: None
        self.accepting_work = True  # cleared by an unhealthy GPU
        self.dead_reason: str | None = None
        self.hung_calls = HungCalls()
        self.in_flight = InFlight()
        self._committers = committers or committer_factory(settings)
        self._running: _Running | None = None
        self._lane_credit = 0.0  # lower-lane records owed while a higher lane waits
        self._runner = RequestRunner(
            engine,
            RunnerConfig(
                worker_id=self.options.worker_id,
                results_topic=settings.topics.results,
                dlq_topic=settings.topics.dlq,
                max_attempts=self.options.max_attempts,
                retry_initial_s=self.options.retry_initial_s,
                retry_max_s=self.options.retry_max_s,
                results_format=settings.topics.results_format,
            ),
        )

    # -- what the rest of the process reads -----------------------------------
    @property
    def owned(self) -> Mapping[PartitionKey, OwnedPartition]:
        return self._running.ownership.owned if self._running is not None else {}

    @property
    def desired(self) -> set[PartitionKey]:
        return self.assignment.keys

    @property
    def generation(self) -> int:
        """Of the scheduler's assignment being applied."""
        return self.assignment.generation

    @property
    def degraded(self) -> Mapping[str, str]:
        """What is being retried, for /healthz."""
        return self._running.ownership.degraded if self._running is not None else {}

    @property
    def sizing(self) -> Sizing:
        return Sizing(self.options, self.engine.max_concurrency)

    @property
    def in_flight_cap(self) -> int:
        return self.sizing.in_flight_cap

    @property
    def max_uncommitted(self) -> int:
        return self.sizing.max_uncommitted

    def set_assignment(self, partitions: set[PartitionKey], generation: int = 0) -> None:
        """The partitions this worker should own; applied by the main loop."""
        self.assignment.keys = set(partitions)
        self.assignment.generation = generation

    def cancel_job(self, job_id: str) -> None:
        """A job was cancelled: its requests in the engine stop now (the engine aborts
        them) and end as cancelled results, like those not started yet."""
        self.in_flight.cancel_job(job_id)

    # -- main loop ------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> int:
        """Run until `stop` (exit 0 after draining) or engine death (exit 3). The
        consumer, the engine and every transactional producer are closed on every exit."""
        async with contextlib.AsyncExitStack() as resources:
            consumer = self._open_consumer()
            resources.callback(consumer.close)
            # Fetching never queues behind commits and probes in the default executor.
            fetcher = ThreadPoolExecutor(1, thread_name_prefix="fetch")
            resources.callback(fetcher.shutdown)
            ownership = Ownership(
                consumer,
                self.requests,
                self.assignment,
                lambda key: self._committers(key, consumer),
                self.in_flight,
                self.options.drain_grace_s,
            )
            resources.push_async_callback(ownership.close)
            commits = Commits(
                ownership,
                self.in_flight,
                self.hung_calls,
                consumer.consumer_group_metadata(),
                self.options,
                self.settings.topics.results,
                self.engine.name,
            )
            probe = EndOffsetsProbe(self.settings, ownership)
            self._running = _Running(consumer, fetcher, ownership, commits, probe)
            await self.engine.start()
            self.engine_ready.set()
            resources.push_async_callback(self.engine.close)
            metrics.ENGINE_CONCURRENCY.set(self.engine.max_concurrency)
            return await self._serve(self._running, stop)

    async def _serve(self, running: _Running, stop: asyncio.Event) -> int:
        ownership, commits = running.ownership, running.commits
        stop_committing, stop_probing = asyncio.Event(), asyncio.Event()
        committer = asyncio.create_task(commits.run(stop_committing), name="committer")
        prober = asyncio.create_task(running.probe.run(stop_probing), name="end-offsets")
        try:
            while not stop.is_set() and self.dead_reason is None:
                if not ownership.settled and await ownership.reconcile(commits.commit):
                    self.on_ownership_changed()
                await self._consume_once(running, stopping=False)
                self._update_gauges(ownership)
        finally:
            self.draining = True
            self.on_ownership_changed()
            stop_probing.set()
            await prober
            # Never cancel a commit midway: its thread would finish the transaction
            # while the progress it covers stayed uncommitted, to be published again.
            stop_committing.set()
            commits.wanted.set()
            await committer
        if self.dead_reason is not None:
            await self._die(ownership)
            return EXIT_ENGINE_DEAD
        await self._drain(ownership, commits)
        return 0

    def _flow(self, ownership: Ownership, stopping: bool) -> FlowState:
        return FlowState(
            in_flight=self.in_flight.count,
            in_flight_cap=self.in_flight_cap,
            uncommitted=ownership.uncommitted(),
            max_uncommitted=self.max_uncommitted,
            accepting=self.accepting_work and not stopping and self.dead_reason is None,
        )

    async def _consume_once(self, running: _Running, stopping: bool) -> None:
        ownership = running.ownership
        releasing = ownership.releasing()
        gate = current_gate(ownership, running.probe.ends, self.sizing.hold_window)
        round_ = LaneRound(gate.busy_rank, int(self._lane_credit))
        if ownership.held and self._flow(ownership, stopping).accepting:
            self._start_held(running, round_)
        flow = self._flow(ownership, stopping)
        ownership.set_paused(paused_partitions(flow, set(ownership.owned), releasing, gate.paused))
        budget = room(flow)
        if budget and ownership.owned:
            messages = await asyncio.get_running_loop().run_in_executor(
                running.fetcher, running.consumer.consume, min(budget, 500), 0.1
            )
            for message in messages:
                self._accept(running, message, round_)
        else:
            self.in_flight.slot_freed.clear()
            await wait_event(self.in_flight.slot_freed, 0.1)
        self._lane_credit = lane_credit(
            self._lane_credit,
            self.options.lower_lane_share,
            gate.busy_rank,
            round_.started,
            self.sizing.lower_lane_burst,
        )

    def _accept(self, running: _Running, message: Message, round_: LaneRound) -> None:
        """Take one fetched record (or event): run it now, or hold it for its lane's share."""
        error = message.error()
        offset = message.offset()
        if error is not None:
            if error.code() == KafkaError._PARTITION_EOF:
                assert offset is not None  # set on EOF events
                self._reached_end(running.ownership, self.requests.key_of(message), offset)
            else:
                log.warning("consume error", error=str(error))
            return
        assert offset is not None  # set on every fetched record
        key = self.requests.key_of(message)
        part = running.ownership.owned.get(key)
        if part is None or part.releasing:
            return  # fetched before the partition was released: its new owner reads it
        origin = origin_of(
            message, self.requests.topic_of(key), self.requests.partition_of(key), offset
        )
        part.progress.started(offset)
        if starts_now(part.lane_rank, round_.busy_rank, round_.owed):
            self._start(running, part, origin, round_.take(part.lane_rank))
        else:
            running.ownership.hold(part, origin)

    def _start_held(self, running: _Running, round_: LaneRound) -> None:
        """Run held records while the round allows (their lane owed, or nothing busy),
        within the in-flight cap; the higher lanes' and the older ones first."""
        ownership = running.ownership
        for part in sorted(ownership.owned.values(), key=lambda p: (p.lane_rank, p.key)):
            while (
                part.held
                and not part.releasing
                and self.in_flight.count < self.in_flight_cap
                and starts_now(part.lane_rank, round_.busy_rank, round_.owed)
            ):
                origin = ownership.unhold(part)
                self._start(running, part, origin, round_.take(part.lane_rank))

    def _reached_end(self, ownership: Ownership, key: PartitionKey, offset: int) -> None:
        """Every record below `offset` was delivered: what lay between them and `offset`
        (transaction markers, aborted records) is no backlog, and commits move past it."""
        part = ownership.owned.get(key)
        if part is not None and not part.releasing:
            part.progress.reached(offset)

    def _start(
        self,
        running: _Running,
        part: OwnedPartition,
        origin: Origin,
        engine_priority: str | None,
    ) -> None:
        """Run a taken record: decode it, then into the engine (or straight to its outcome)."""
        offset = origin.offset
        try:
            record = codec(REQUEST).decode(origin.value)
        except DecodeError as exc:
            metrics.DEAD_LETTERS.labels("decode", "DecodeError").inc()
            dead = dead_letter_record(
                self.settings.topics.dlq,
                origin,
                "DecodeError",
                str(exc),
                "decode",
                0,
                self.options.worker_id,
            )
            part.progress.finished(offset, [dead])
            return
        if record["job_id"] in self.cancelled_jobs:
            part.progress.finished(offset, [self._cancelled(origin, record)])
            return
        request = self._run_request(running, part, origin, record, engine_priority)
        self.in_flight.start(part.key, record["job_id"], request)

    def _cancelled(self, origin: Origin, record: dict[str, Any]) -> OutRecord:
        metrics.CANCELLED.inc()
        topic = self.settings.topics.results
        return cancelled_record(
            topic,
            record,
            self.engine,
            self.options.worker_id,
            origin,
            reason=self.cancelled_jobs.get(record["job_id"], "cancelled"),
            results_format=self.settings.topics.results_format,
        )

    async def _run_request(
        self,
        running: _Running,
        part: OwnedPartition,
        origin: Origin,
        record: dict[str, Any],
        engine_priority: str | None,
    ) -> None:
        try:
            outputs = await self._runner.run(origin, record, engine_priority)
        except asyncio.CancelledError:
            if record["job_id"] not in self.cancelled_jobs:
                raise  # stopping, or its partition released: the next owner runs it
            outputs = [self._cancelled(origin, record)]
        except EngineDeadError as exc:
            self.dead_reason = str(exc)
            log.error("engine dead", error=str(exc))
            return
        finally:
            self.in_flight.ended()
        if not running.ownership.owns(part):
            return  # released or lost meanwhile: the new owner redoes it from the commit
        part.progress.finished(origin.offset, outputs)
        running.commits.note_finished(self.sizing.commit_size_bound)

    # -- stopping -------------------------------------------------------------
    async def _drain(self, ownership: Ownership, commits: Commits) -> None:
        """SIGTERM: stop fetching, finish in-flight work within the grace period, commit."""
        ownership.set_paused(set(ownership.owned))
        await self.in_flight.finish(None, self.options.drain_grace_s)
        abandoned = self.in_flight.count
        await self.in_flight.cancel()
        await commits.commit_all()
        for part in list(ownership.owned.values()):
            await ownership.forget(part)
        log.info("drained", abandoned=abandoned)

    async def _die(self, ownership: Ownership) -> None:
        """Engine dead: publish nothing more; abandon in-flight work to the next owner."""
        await self.in_flight.cancel()
        for part in list(ownership.owned.values()):
            await ownership.forget(part)

    # -- helpers --------------------------------------------------------------
    def _update_gauges(self, ownership: Ownership) -> None:
        metrics.IN_FLIGHT.set(self.in_flight.count)
        metrics.HELD.set(ownership.held)
        metrics.BATCH_SIZE.set(self.engine.running)
        metrics.UNCOMMITTED.set(ownership.uncommitted())

    def _open_consumer(self) -> Consumer:
        return make_consumer(
            self.settings.kafka_config(),
            ConsumerRole.MEMBER,
            self.settings.inference_group,
            **{
                "client.id": f"kbatch-inference-{self.options.worker_id}",
                "fetch.max.bytes": self.options.fetch_max_bytes,
                "queued.max.messages.kbytes": self.options.queued_max_kbytes,
                # A resumed partition's first fetch must not sit behind a long poll.
                "fetch.wait.max.ms": 100,
                # Reaching a partition's end says the offsets left below it hold no
                # work (transaction markers, aborted records): see _reached_end.
                "enable.partition.eof": True,
                **stats_config("inference-consumer"),
            },
        )
