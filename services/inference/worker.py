"""The inference worker loop: consume assigned partitions, keep the engine fed,
publish and commit in per-partition transactions.

Design notes:
- Assignment is external (`assign()`): the worker never joins a consumer group,
  so ownership and fencing come from per-partition transactional ids.
- Requests run as asyncio tasks; the engine batches them continuously. The
  number in flight is capped; consumption pauses when the cap or the
  uncommitted bound is reached.
- Outputs wait in PartitionProgress until every lower offset finished, then
  go out in the transaction that commits past them.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
)

from services.codec import REQUEST, codec
from services.errors import (
    DecodeError,
    DeliveryError,
    EngineDeadError,
    FencedError,
    KafkaUnavailableError,
    ProducerFatalError,
)
from services.inference import metrics
from services.inference.at_least_once import PartitionAtLeastOnce
from services.inference.engines.base import Engine
from services.inference.flow import (
    FlowState,
    LaneGate,
    LaneRound,
    lane_credit,
    lane_gate,
    paused_partitions,
    room,
    starts_now,
)
from services.inference.hung_calls import HungCalls
from services.inference.outputs import (
    Origin,
    cancelled_record,
    dead_letter_record,
    replays_of,
)
from services.inference.progress import PartitionProgress
from services.inference.runner import RequestRunner, RunnerConfig
from services.inference.settings import (
    MIN_DEFAULT_IN_FLIGHT,
    MIN_DEFAULT_UNCOMMITTED,
    InferenceSettings,
)
from services.kafka.consumers import ConsumerRole, make_consumer
from services.kafka.lag import end_offsets
from services.kafka.retries import KAFKA_RETRIES, jittered_backoff_s
from services.kafka.stats import stats_config
from services.kafka.transactions import OutRecord, TransactionalProducer, transactional_id
from services.lanes import LANE_ORDER
from services.lifecycle import exit_now, wait_event
from services.logs import get_logger

log = get_logger("worker")


EXIT_ENGINE_DEAD = 3
EXIT_TRANSACTION_HUNG = 4
LANE_PROBE_S = 0.1  # a fast engine took ~280 low records in the 0.5 s it once was


# What commits a partition's outputs: a transaction, or (measuring only) at-least-once.
Committer = TransactionalProducer | PartitionAtLeastOnce


@dataclass(eq=False)
class OwnedPartition:
    partition: int
    txn: Committer
    progress: PartitionProgress[OutRecord]
    lane_rank: int  # its lane's index in LANE_ORDER
    # Taken (started in progress) but not run yet: lower-lane records waiting for their
    # lane's share while a higher lane is busy. A new owner runs them if released.
    held: deque[Origin] = field(default_factory=deque)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    releasing: bool = False


class Worker:
    """One inference worker process's consuming, running and committing."""

    def __init__(self, settings: InferenceSettings, engine: Engine) -> None:
        self.settings = settings
        self.options = settings.inference
        self.engine = engine
        self.topic = settings.topics.requests
        self.owned: dict[int, OwnedPartition] = {}
        self.desired: set[int] = set()
        self.generation = 0  # of the scheduler's assignment being applied
        self.draining = False
        self.cancelled_jobs: set[str] = set()  # filled from the jobs topic
        self.on_ownership_changed: Callable[[], None] = lambda: None
        self._layout = settings.topics.lane_layout()
        self.accepting_work = True  # cleared by an unhealthy GPU
        self.dead_reason: str | None = None
        self._consumer: Consumer | None = None
        self._fetcher: ThreadPoolExecutor | None = None
        self._group_metadata: Any = None
        # Partitions being taken (their producers kept for a retry to resume) and the
        # failures in a row of each with the loop time of its next try.
        self._taking: dict[int, Committer] = {}
        self._take_failures: dict[int, tuple[int, float]] = {}
        self.degraded: dict[str, str] = {}  # what is being retried, for /healthz
        # Each request's task, with its partition and job: cancelled with either.
        self._tasks: dict[asyncio.Task[None], tuple[int, str]] = {}
        self._in_flight = 0
        self._lane_credit = 0.0  # lower-lane records owed while a higher lane waits
        self._held = 0  # records held over all owned partitions
        self._paused: set[int] = set()
        self._ends: dict[int, int] = {}  # end offsets of owned partitions, for the lane gate
        self._slot_freed = asyncio.Event()
        self._commit_wanted = asyncio.Event()
        self.hung_calls = HungCalls()
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

    # -- sizing ---------------------------------------------------------------
    @property
    def in_flight_cap(self) -> int:
        return self.options.in_flight_cap or max(
            2 * self.engine.max_concurrency, MIN_DEFAULT_IN_FLIGHT
        )

    @property
    def _burst(self) -> int:
        """Most lower-lane records owed at once: what one round can earn them (a round
        starts at most the in-flight cap), and one more."""
        share = self.options.lower_lane_share
        return math.ceil(self.in_flight_cap * share / (1 - share)) + 1

    @property
    def _hold_window(self) -> int:
        """Most lower-lane records held for their share: an eighth of the uncommitted
        window, so that held records never stop intake; none under strict priority.
        Enough to last the consumer's queue latency: a resumed lower lane's records
        come after everything prefetched for the busy one."""
        return self.max_uncommitted // 8 if self.options.lower_lane_share > 0 else 0

    @property
    def max_uncommitted(self) -> int:
        return self.options.max_uncommitted or max(4 * self.in_flight_cap, MIN_DEFAULT_UNCOMMITTED)

    def _flow(self, stopping: bool) -> FlowState:
        return FlowState(
            in_flight=self._in_flight,
            in_flight_cap=self.in_flight_cap,
            uncommitted=sum(p.progress.uncommitted for p in self.owned.values()),
            max_uncommitted=self.max_uncommitted,
            accepting=self.accepting_work and not stopping and self.dead_reason is None,
        )

    def set_assignment(self, partitions: set[int], generation: int = 0) -> None:
        """The partitions this worker should own; applied by the main loop."""
        self.desired = set(partitions)
        self.generation = generation

    # -- main loop ------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> int:
        """Run until `stop` (exit 0 after draining) or engine death (exit 3). The
        consumer, the engine and every transactional producer are closed on every exit."""
        async with contextlib.AsyncExitStack() as resources:
            self._consumer = self._open_consumer()
            resources.callback(self._close_consumer)
            # Fetching never queues behind commits and probes in the default executor.
            self._fetcher = ThreadPoolExecutor(1, thread_name_prefix="fetch")
            resources.callback(self._fetcher.shutdown)
            resources.push_async_callback(self._close_producers)
            self._group_metadata = self._consumer.consumer_group_metadata()
            await self.engine.start()
            resources.push_async_callback(self.engine.close)
            metrics.ENGINE_CONCURRENCY.set(self.engine.max_concurrency)
            return await self._serve(stop)

    async def _serve(self, stop: asyncio.Event) -> int:
        stop_committing, stop_probing = asyncio.Event(), asyncio.Event()
        committer = asyncio.create_task(self._commit_loop(stop_committing), name="committer")
        prober = asyncio.create_task(self._probe_ends(stop_probing), name="end-offsets")
        try:
            while not stop.is_set() and self.dead_reason is None:
                if self.desired != set(self.owned) and await self._reconcile():
                    self.on_ownership_changed()
                await self._consume_once(stopping=False)
                self._update_gauges()
        finally:
            self.draining = True
            self.on_ownership_changed()
            stop_probing.set()
            await prober
            # Never cancel a commit midway: its thread would finish the transaction
            # while the progress it covers stayed uncommitted, to be published again.
            stop_committing.set()
            self._commit_wanted.set()
            await committer
        if self.dead_reason is not None:
            await self._die()
            return EXIT_ENGINE_DEAD
        await self._drain()
        return 0

    async def _consume_once(self, stopping: bool) -> None:
        consumer = self._require_consumer()
        releasing = {p for p, owned in self.owned.items() if owned.releasing}
        gate = self._lane_gate()
        round_ = LaneRound(gate.busy_rank, int(self._lane_credit))
        if self._held and self._flow(stopping).accepting:
            self._start_held(round_)
        flow = self._flow(stopping)
        self._set_paused(paused_partitions(flow, set(self.owned), releasing, gate.paused))
        budget = room(flow)
        if budget and self.owned:
            messages = await asyncio.get_running_loop().run_in_executor(
                self._fetcher, consumer.consume, min(budget, 500), 0.1
            )
            for message in messages:
                self._accept(message, round_)
        else:
            self._slot_freed.clear()
            await wait_event(self._slot_freed, 0.1)
        self._lane_credit = lane_credit(
            self._lane_credit,
            self.options.lower_lane_share,
            gate.busy_rank,
            round_.started,
            self._burst,
        )

    def _accept(self, message: Message, round_: LaneRound) -> None:
        """Take one fetched record (or event): run it now, or hold it for its lane's share."""
        error = message.error()
        partition, offset = message.partition(), message.offset()
        if error is not None:
            if error.code() == KafkaError._PARTITION_EOF:
                assert partition is not None and offset is not None  # set on EOF events
                self._reached_end(partition, offset)
            else:
                log.warning("consume error", error=str(error))
            return
        assert partition is not None and offset is not None  # set on every fetched record
        part = self.owned.get(partition)
        if part is None or part.releasing:
            return  # fetched before the partition was released: its new owner reads it
        origin = Origin(
            self.topic, partition, offset, message.key(), message.value(), replays_of(message)
        )
        part.progress.started(offset)
        if starts_now(part.lane_rank, round_.busy_rank, round_.owed):
            self._start(part, origin, round_.take(part.lane_rank))
        else:
            part.held.append(origin)
            self._held += 1

    def _start_held(self, round_: LaneRound) -> None:
        """Run held records while the round allows (their lane owed, or nothing busy),
        within the in-flight cap; the higher lanes' and the older ones first."""
        for part in sorted(self.owned.values(), key=lambda p: (p.lane_rank, p.partition)):
            while (
                part.held
                and not part.releasing
                and self._in_flight < self.in_flight_cap
                and starts_now(part.lane_rank, round_.busy_rank, round_.owed)
            ):
                self._held -= 1
                self._start(part, part.held.popleft(), round_.take(part.lane_rank))

    def _reached_end(self, partition: int, offset: int) -> None:
        """Every record below `offset` was delivered: what lay between them and `offset`
        (transaction markers, aborted records) is no backlog, and commits move past it."""
        part = self.owned.get(partition)
        if part is not None and not part.releasing:
            part.progress.reached(offset)

    def _start(self, part: OwnedPartition, origin: Origin, engine_priority: str | None) -> None:
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
        self._in_flight += 1
        task = asyncio.create_task(self._run_request(part, origin, record, engine_priority))
        self._tasks[task] = (part.partition, record["job_id"])
        task.add_done_callback(self._tasks.pop)

    def _cancelled(self, origin: Origin, record: dict[str, Any]) -> OutRecord:
        metrics.CANCELLED.inc()
        topic = self.settings.topics.results
        return cancelled_record(
            topic,
            record,
            self.engine,
            self.options.worker_id,
            origin,
            results_format=self.settings.topics.results_format,
        )

    def cancel_job(self, job_id: str) -> None:
        """A job was cancelled: its requests in the engine stop now (the engine aborts
        them) and end as cancelled results, like those not started yet."""
        for task, (_, job) in list(self._tasks.items()):
            if job == job_id:
                task.cancel()

    async def _run_request(
        self,
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
            self._in_flight -= 1
            self._slot_freed.set()
        if self.owned.get(part.partition) is not part:
            return  # released or lost meanwhile: the new owner redoes it from the commit
        part.progress.finished(origin.offset, outputs)
        # The size trigger must fire before the uncommitted bound stalls consumption.
        size_bound = min(self.options.commit_max_records, self.max_uncommitted // 2)
        if sum(p.progress.ready() for p in self.owned.values()) >= size_bound:
            self._commit_wanted.set()

    # -- committing -----------------------------------------------------------
    async def _commit_loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await wait_event(self._commit_wanted, self.options.commit_interval_s)
            self._commit_wanted.clear()
            if not stop.is_set():
                await self.commit_all()

    async def commit_all(self) -> None:
        await asyncio.gather(*(self._commit(part) for part in list(self.owned.values())))

    async def _commit(self, part: OwnedPartition) -> None:
        async with part.lock:
            if self.owned.get(part.partition) is not part:
                return
            plan = part.progress.plan()
            if plan is None:
                return
            offset = TopicPartition(self.topic, part.partition, plan.next_offset)
            started = asyncio.get_running_loop().time()
            call = asyncio.ensure_future(
                asyncio.to_thread(part.txn.commit, plan.outputs, offset, self._group_metadata)
            )
            try:
                await asyncio.wait_for(asyncio.shield(call), self.options.commit_stall_s)
            except TimeoutError:
                await self._abandon(part, call)
                return
            except FencedError as exc:
                metrics.ABORTS.labels("fenced").inc()
                log.warning(
                    "partition fenced by a new owner", partition=part.partition, error=str(exc)
                )
                # Lost, not released: only a new assignment may give it back, or two
                # owners would fence each other in turn.
                self.desired.discard(part.partition)
                await self._forget(part)
                return
            except ProducerFatalError as exc:
                metrics.ABORTS.labels("broker").inc()
                log.warning("producer failed for good; taking the partition afresh", error=str(exc))
                await self._forget(part)  # still desired: the main loop takes it again
                return
            except (KafkaUnavailableError, DeliveryError) as exc:
                metrics.ABORTS.labels("broker").inc()
                log.warning("commit failed, will retry", partition=part.partition, error=str(exc))
                return
            metrics.COMMIT_SECONDS.observe(asyncio.get_running_loop().time() - started)
            metrics.COMMITS.inc()
            results = sum(1 for r in plan.outputs if r.topic == self.settings.topics.results)
            metrics.RESULTS.labels(self.engine.name).inc(results)
            part.progress.committed(plan)

    async def _abandon(self, part: OwnedPartition, call: asyncio.Future[None]) -> None:
        """A commit outlived every timeout it was given (see hung_calls): leave its
        producer to its call and take the partition afresh, fencing that producer.
        Its transaction is aborted by the fencing, or was committed before it; the
        new owner starts from whichever offset is committed, so nothing is lost or
        published twice. Past `max_hung_commits` blocked calls (each holds a thread)
        the worker exits for its supervisor instead."""
        metrics.ABORTS.labels("hung").inc()
        self.hung_calls.abandon(call, part.txn, part.partition)
        if len(self.hung_calls) > self.options.max_hung_commits:
            log.error(
                "too many transaction calls hung past their timeouts; exiting for a restart",
                hung=len(self.hung_calls),
                limit=self.options.max_hung_commits,
            )
            exit_now(EXIT_TRANSACTION_HUNG)
        log.error(
            "transaction call hung past its timeouts; its producer is abandoned and the "
            "partition taken afresh",
            partition=part.partition,
            limit_s=self.options.commit_stall_s,
            hung=len(self.hung_calls),
        )
        await self._forget(part, close=False)
        # Their results belong to the abandoned transaction: the retake runs them again.
        await self._cancel_tasks(part.partition)

    # -- ownership ------------------------------------------------------------
    async def _reconcile(self) -> bool:
        """Release what is no longer desired, take what is newly desired; whether the
        owned set changed. A take that fails retryably is tried again after a back-off."""
        before = set(self.owned)
        for partition in sorted(set(self.owned) - self.desired):
            part = self.owned.get(partition)
            if part is not None:  # a concurrent commit may have lost it to fencing meanwhile
                await self._release(part)
        for partition in sorted(set(self._taking) - self.desired):
            await asyncio.to_thread(self._taking.pop(partition).close)
            self._take_failures.pop(partition, None)
        now = asyncio.get_running_loop().time()
        due = [
            p
            for p in sorted(self.desired - set(self.owned))
            if self._take_failures.get(p, (0, 0.0))[1] <= now
        ]
        # Taking a partition waits on init_transactions (the fence): do them together.
        await asyncio.gather(*(self._take_or_retry(p) for p in due))
        metrics.OWNED_PARTITIONS.set(len(self.owned))
        return set(self.owned) != before

    async def _take_or_retry(self, partition: int) -> None:
        try:
            await self._take(partition)
        except (KafkaUnavailableError, ProducerFatalError, KafkaException) as exc:
            failures = self._take_failures.get(partition, (0, 0.0))[0] + 1
            delay = jittered_backoff_s(failures)
            retry_at = asyncio.get_running_loop().time() + delay
            self._take_failures[partition] = (failures, retry_at)
            KAFKA_RETRIES.labels("inference", "take_partition").inc()
            self.degraded[f"partition {partition}"] = f"not taken yet: {exc}"
            log.warning(
                "partition not taken; retrying",
                partition=partition,
                failures=failures,
                retry_in_s=round(delay, 2),
                error=str(exc),
            )
        else:
            self._take_failures.pop(partition, None)
            self.degraded.pop(f"partition {partition}", None)

    async def _take(self, partition: int) -> None:
        """Fence the previous owner, read the committed offset, start consuming. A
        failure keeps the producer being initialised, for the retry to resume."""
        consumer = self._require_consumer()
        txn = self._taking.get(partition) or self._committer(partition)
        self._taking[partition] = txn
        await asyncio.to_thread(txn.open)  # fences the previous owner first
        tp = TopicPartition(self.topic, partition)
        [committed] = await asyncio.to_thread(consumer.committed, [tp], 30)
        start = committed.offset
        if start < 0:
            low, _ = await asyncio.to_thread(consumer.get_watermark_offsets, tp, 30, False)
            start = low
        del self._taking[partition]
        lane_rank = LANE_ORDER.index(self._layout.lane_of(partition))
        self.owned[partition] = OwnedPartition(partition, txn, PartitionProgress(start), lane_rank)
        consumer.incremental_assign(
            [TopicPartition(self.topic, partition, start or OFFSET_BEGINNING)]
        )
        # librdkafka keeps a partition's pause flag across unassign and assign: one this
        # worker paused while releasing it earlier would stay silent when taken back.
        consumer.resume([TopicPartition(self.topic, partition)])
        log.info("partition taken", partition=partition, offset=start)

    def _committer(self, partition: int) -> Committer:
        config = self.settings.kafka_config(**self._producer_overrides())
        if self.options.transactions:
            txn_id = transactional_id(self.settings.topics.prefix, self.topic, partition)
            return TransactionalProducer(config, txn_id)
        return PartitionAtLeastOnce(config, self._require_consumer())

    async def _release(self, part: OwnedPartition) -> None:
        """Stop taking records, let in-flight ones finish (bounded), commit, hand over."""
        part.releasing = True
        self._set_paused(self._paused | {part.partition})
        self._drop_held(part)
        await self._finish_in_flight(lambda: self._running_of(part.partition))
        # Left past the grace period: the engine stops them; the new owner redoes them.
        await self._cancel_tasks(part.partition)
        await self._commit(part)
        await self._forget(part)
        log.info("partition released", partition=part.partition)

    def _drop_held(self, part: OwnedPartition) -> None:
        """Held records are left to the next owner: the commit stops below them."""
        self._held -= len(part.held)
        part.held.clear()

    def _running_of(self, partition: int) -> int:
        return sum(1 for p, _ in self._tasks.values() if p == partition)

    async def _forget(self, part: OwnedPartition, close: bool = True) -> None:
        if self.owned.get(part.partition) is not part:
            return  # forgotten already: fenced while it was being released
        self._drop_held(part)
        del self.owned[part.partition]
        self._paused.discard(part.partition)
        self._require_consumer().incremental_unassign([TopicPartition(self.topic, part.partition)])
        if close:
            await asyncio.to_thread(part.txn.close)
        metrics.OWNED_PARTITIONS.set(len(self.owned))

    # -- stopping -------------------------------------------------------------
    async def _drain(self) -> None:
        """SIGTERM: stop fetching, finish in-flight work within the grace period, commit."""
        self._set_paused(set(self.owned))
        await self._finish_in_flight(lambda: self._in_flight)
        abandoned = self._in_flight
        await self._cancel_tasks()
        await self.commit_all()
        for part in list(self.owned.values()):
            await self._forget(part)
        log.info("drained", abandoned=abandoned)

    async def _die(self) -> None:
        """Engine dead: publish nothing more; abandon in-flight work to the next owner."""
        await self._cancel_tasks()
        for part in list(self.owned.values()):
            await self._forget(part)

    async def _finish_in_flight(self, remaining: Callable[[], int]) -> None:
        """Wait, up to the drain grace period, until `remaining()` requests are left."""
        deadline = asyncio.get_running_loop().time() + self.options.drain_grace_s
        while remaining() and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)

    async def _cancel_tasks(self, partition: int | None = None) -> None:
        """Cancel the requests in flight (of one partition, or all) and wait for them."""
        doomed = [t for t, (p, _) in self._tasks.items() if partition in (None, p)]
        for task in doomed:
            task.cancel()
        await asyncio.gather(*doomed, return_exceptions=True)

    def _close_consumer(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None

    async def _close_producers(self) -> None:
        """Producers of partitions still owned (an exit past drain) or still being taken."""
        for txn in [*(part.txn for part in self.owned.values()), *self._taking.values()]:
            await asyncio.to_thread(txn.close)
        self._taking.clear()

    # -- helpers --------------------------------------------------------------
    def _set_paused(self, wanted: set[int]) -> None:
        consumer = self._require_consumer()
        to_pause = wanted - self._paused
        to_resume = (self._paused - wanted) & set(self.owned)
        if to_pause:
            consumer.pause([TopicPartition(self.topic, p) for p in to_pause])
        if to_resume:
            consumer.resume([TopicPartition(self.topic, p) for p in to_resume])
        self._paused = wanted & set(self.owned)

    async def _probe_ends(self, stop: asyncio.Event) -> None:
        """Keep the lane gate's end offsets fresh, every LANE_PROBE_S, beside the loop.

        librdkafka fetches no partition while its prefetch queue is full (of lower
        lane records, under a large backlog), and its cached end offsets move only
        with fetches: a high lane's new records stayed invisible to the gate. The
        probe is a round trip per partition, so it must not hold up consuming
        (awaited inline it cut one worker with 8 partitions to 38 requests/s), and it
        asks through a handle of its own: confluent-kafka serializes the calls on one
        handle, so probing through the worker's consumer stalled its consume() and
        the event loop behind it (bench.engines, llamacpp: 0.33 of the binding's rate).
        """
        probe = make_consumer(
            self.settings.kafka_config(),
            ConsumerRole.COMMITTED_READER,  # its end offsets: last stable offsets
            self.settings.inference_group,
        )
        try:
            while not stop.is_set():
                await wait_event(stop, LANE_PROBE_S)
                owned = list(self.owned)
                if len(owned) < 2 or stop.is_set():
                    continue
                try:
                    self._ends = await asyncio.to_thread(end_offsets, probe, self.topic, owned, 5)
                except KafkaException as exc:
                    log.warning(
                        "end offsets unavailable; lane gate uses the last known", error=str(exc)
                    )
        finally:
            await asyncio.to_thread(probe.close)

    def _lane_gate(self) -> LaneGate:
        """Lower-lane partitions held back while a higher lane has records waiting.

        A partition's backlog runs from the worker's next position: one past the last
        record taken, or the end the consumer reached (partition EOF), so that the
        commit marker closing every transaction, and aborted records, count as nothing
        (they take offsets but are never delivered; counted, one marker held every
        lower lane back for good). The consumer's position() is invalid for a
        partition nothing was taken from yet, which hid a fresh high lane's records
        from the gate (seen: 77 s queue waits). End offsets come from the probe only:
        reading even librdkafka's cached watermarks waits while consume() holds the
        consumer's handle, blocking the event loop.
        """
        if len(self.owned) < 2:
            return LaneGate()
        lanes = {p: self._layout.lane_of(p) for p in self.owned}
        backlog: dict[int, int | None] = {}
        for partition, part in self.owned.items():
            high = self._ends.get(partition, -1)
            waiting = high - part.progress.next_to_consume
            backlog[partition] = max(0, waiting) if high >= 0 else None
        return lane_gate(lanes, backlog, self._held, self._hold_window)

    def _update_gauges(self) -> None:
        metrics.IN_FLIGHT.set(self._in_flight)
        metrics.HELD.set(self._held)
        metrics.BATCH_SIZE.set(self.engine.running)
        metrics.UNCOMMITTED.set(sum(p.progress.uncommitted for p in self.owned.values()))

    def _require_consumer(self) -> Consumer:
        if self._consumer is None:
            raise RuntimeError("worker consumer used outside run()")
        return self._consumer

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

    def _producer_overrides(self) -> dict[str, Any]:
        return {
            "transaction.timeout.ms": self.options.transaction_timeout_ms,
            "linger.ms": 5,
            "compression.type": "lz4",
            "client.id": f"kbatch-inference-{self.options.worker_id}",
        }
