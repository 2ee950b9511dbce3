"""Job progress read from the results topic and the DLQ, checkpointed to a compacted topic.

Why not a faust agent with changelog tables: under kill -9 and broker restarts
faust-streaming 0.15's exactly-once tables came back short of the results they
had consumed (counts stuck below the total in the chaos test). Here the state is
a pure function of the two topics: each source partition's tally (next offset
and counts, saved in one record) is the only thing restored, so a restart
resumes exactly where a consistent checkpoint left it. Reads are read_committed:
aborted results are never counted.
"""

from __future__ import annotations

import asyncio
import time

from confluent_kafka import Consumer, Message, TopicPartition

from services.codec import DEAD_LETTER, codec, results_codec
from services.errors import DecodeError, DeliveryError
from services.kafka.compacted import read_latest
from services.kafka.consumers import ConsumerRole, make_consumer
from services.kafka.producer import AsyncProducer, DeliveryBatch
from services.logs import get_logger
from services.scheduler import metrics
from services.scheduler.jobs import UNKNOWN_JOB, JobCount, PartitionTally, tally_key
from services.settings import CommonSettings

log = get_logger("scheduler.progress")

SWEEP_EVERY_S = 60.0


class JobProgress:
    """Counts outcomes per job; serves them to the views; saves them now and then."""

    def __init__(
        self, settings: CommonSettings, retention_s: float, checkpoint_interval_s: float
    ) -> None:
        self._settings = settings
        self._retention_ms = int(retention_s * 1000)
        self._interval_s = checkpoint_interval_s
        topics = settings.topics
        self._sources = {
            topics.results: range(topics.results_partitions),
            topics.dlq: range(topics.dlq_partitions),
        }
        self.tallies: dict[tuple[str, int], PartitionTally] = {}
        self._dirty: set[tuple[str, int]] = set()

    # -- reading, for the views ------------------------------------------------
    def counts(self, job_id: str) -> tuple[list[JobCount], list[JobCount]]:
        """The job's counts from results partitions and from DLQ partitions."""
        results: list[JobCount] = []
        dead: list[JobCount] = []
        for (topic, _), tally in self.tallies.items():
            count = tally.jobs.get(job_id)
            if count is not None:
                (results if topic == self._settings.topics.results else dead).append(count)
        return results, dead

    def job_ids(self) -> set[str]:
        return {job for tally in self.tallies.values() for job in tally.jobs}

    # -- the loop --------------------------------------------------------------
    async def run(self) -> None:
        checkpoints = await asyncio.to_thread(
            read_latest,
            self._settings.kafka_config(),
            self._settings.topics.job_progress,
            PartitionTally.from_json,
        )
        for topic, partitions in self._sources.items():
            for p in partitions:
                self.tallies[(topic, p)] = checkpoints.get(tally_key(topic, p), PartitionTally())
        log.info("job progress restored", partitions=len(self.tallies), jobs=len(self.job_ids()))
        # The role's auto.offset.reset (earliest) applies only where a checkpoint's
        # offset has been deleted by retention.
        consumer = make_consumer(
            self._settings.kafka_config(),
            ConsumerRole.COMMITTED_READER,
            f"{self._settings.topics.prefix}-job-progress",
        )
        consumer.assign(
            [TopicPartition(t, p, tally.next_offset) for (t, p), tally in self.tallies.items()]
        )
        producer = AsyncProducer(self._settings.kafka_config(**{"linger.ms": 5}))
        try:
            with producer:
                await self._consume_forever(consumer, producer)
        finally:
            consumer.close()

    async def _consume_forever(self, consumer: Consumer, producer: AsyncProducer) -> None:
        saved_at = swept_at = time.monotonic()
        try:
            while True:
                for message in await _consume(consumer):
                    self._take(message)
                now = time.monotonic()
                if now - swept_at >= SWEEP_EVERY_S:
                    swept_at = now
                    self._sweep()
                if self._dirty and now - saved_at >= self._interval_s:
                    saved_at = now
                    await self._checkpoint(producer)
        finally:
            # A graceful stop saves what was counted; a crash re-reads it.
            self._checkpoint_now(producer)

    def _take(self, message: Message) -> None:
        error = message.error()
        if error is not None:
            # Consumer-level errors (a broker away); no record is lost: the
            # position only advances past records that were counted.
            log.warning("job progress read error", error=str(error))
            return
        topic, partition, offset = message.topic(), message.partition(), message.offset()
        assert topic is not None and partition is not None and offset is not None
        tally = self.tallies[(topic, partition)]
        decoded = self._decode(topic, message.value())
        if decoded is None:
            tally.skip_to(offset + 1)
        else:
            job_id, failed, outcome = decoded
            if tally.add(offset, job_id, failed=failed, now_ms=_now_ms()):
                metrics.JOB_OUTCOMES.labels(outcome).inc()
        self._dirty.add((topic, partition))

    def _decode(self, topic: str, value: bytes | None) -> tuple[str, bool, str] | None:
        """(job id, failed, outcome label), or None for an undecodable record."""
        is_result = topic == self._settings.topics.results
        try:
            # Results in either format (Avro or JSON); dead letters are always Avro.
            record = (results_codec() if is_result else codec(DEAD_LETTER)).decode(value)
        except DecodeError as exc:
            metrics.UNDECODABLE.labels("results" if is_result else "dlq").inc()
            log.error("undecodable record not counted", topic=topic, error=str(exc))
            return None
        if not is_result:
            return record["job_id"] or UNKNOWN_JOB, True, "dead_letter"
        failed = record["error"] is not None
        return record["job_id"], failed, "failed" if failed else "completed"

    def _sweep(self) -> None:
        now = _now_ms()
        for key, tally in self.tallies.items():
            if tally.sweep(now, self._retention_ms):
                self._dirty.add(key)

    async def _checkpoint(self, producer: AsyncProducer) -> None:
        # Nothing is counted while this waits (one task reads and saves), so what
        # is saved is exactly the state the dirty set describes.
        batch = DeliveryBatch(asyncio.get_running_loop())
        for key in self._dirty:
            value, record_key = self._record(key)
            await producer.produce(batch, self._settings.topics.job_progress, value, record_key)
        await batch.wait()
        try:
            batch.raise_for_errors()
        except DeliveryError as exc:
            log.warning("job progress checkpoint not saved; the next one retries", error=str(exc))
            return
        metrics.PROGRESS_CHECKPOINTS.inc()
        self._dirty.clear()

    def _checkpoint_now(self, producer: AsyncProducer) -> None:
        for key in self._dirty:
            value, record_key = self._record(key)
            producer.producer.produce(self._settings.topics.job_progress, value, record_key)
        unsaved = producer.flush(10)
        if unsaved:
            log.warning("job progress not saved at stop; a restart re-reads it", records=unsaved)

    def _record(self, key: tuple[str, int]) -> tuple[bytes, bytes]:
        return self.tallies[key].to_json(), tally_key(*key).encode()


async def _consume(consumer: Consumer) -> list[Message]:
    """One consume call on a thread; a cancelled caller still waits for it to return,
    so the consumer is never closed while a call is inside it."""
    call = asyncio.ensure_future(asyncio.to_thread(consumer.consume, 500, 0.5))
    try:
        return await asyncio.shield(call)
    except asyncio.CancelledError:
        await asyncio.wait([call])
        raise


def _now_ms() -> int:
    return int(time.time() * 1000)
