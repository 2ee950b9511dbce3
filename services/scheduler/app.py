"""The scheduler as a faust-streaming app: tables fed by agents, a pass loop, web views.

Tables (changelog-backed, so a restarted scheduler recovers them without
replaying the source topics): `workers` from heartbeats and `jobs` from the job
records ingest writes. Job progress is counted by `progress.JobProgress`, a task
of the app with its own checkpoints.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import faust
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from services.codec import HEARTBEAT, JOB, codec
from services.errors import DecodeError, KbatchError
from services.kafka.lag import GroupBacklog
from services.kafka.producer import AsyncProducer
from services.kafka.topics import TopicSpec, ensure_topics
from services.lifecycle import exit_now, wait_event
from services.logs import get_logger
from services.models.registry import ModelRegistry
from services.routing import ModelPartition
from services.scheduler import metrics
from services.scheduler.book import AssignmentBook, read_published
from services.scheduler.core import SchedulerCore
from services.scheduler.fleet import WorkerState
from services.scheduler.progress import JobProgress
from services.scheduler.settings import SchedulerSettings
from services.scheduler.views import JobTables, register_views

log = get_logger("scheduler")

EXIT_STALLED = 3


def broker_urls(bootstrap_servers: str) -> str:
    return ";".join(f"kafka://{host.strip()}" for host in bootstrap_servers.split(","))


# One scheduler reads each table whole: one partition each, and so for their changelogs.
TABLE_PARTITIONS = 1


def now_ms() -> int:
    return int(time.time() * 1000)


class SchedulerService:
    """Builds the faust app and holds what its agents, loop and views share."""

    def __init__(self, settings: SchedulerSettings) -> None:
        self.settings = settings
        self.options = settings.scheduler
        topics = settings.topics
        self.app = faust.App(
            self.options.app_id or f"{topics.prefix}-scheduler",
            broker=broker_urls(settings.bootstrap_servers),
            store="memory://",
            processing_guarantee=self.options.processing_guarantee,
            topic_partitions=1,
            # Its changelog topics need the cluster's replication, or one broker down
            # stalls the scheduler's tables.
            topic_replication_factor=topics.replication_factor,
            datadir=self.options.data_dir,
            web_host=self.options.http_host,
            web_port=self.options.http_port,
            producer_linger_ms=5,
            broker_session_timeout=self.options.session_timeout_s,
            broker_heartbeat_interval=max(1.0, self.options.session_timeout_s / 3),
        )
        self.workers = self.app.Table("workers", partitions=TABLE_PARTITIONS)
        self.progress = JobProgress(
            settings, self.options.job_retention_s, self.options.progress_checkpoint_s
        )
        jobs = self.app.Table("jobs", partitions=TABLE_PARTITIONS)
        self.job_tables = JobTables(jobs, self.progress)
        self.producer = AsyncProducer(settings.kafka_config(**{"linger.ms": 0}))
        self.registry = ModelRegistry(settings.kafka_config(), topics, self._models_changed)
        self.core = SchedulerCore(
            topics.request_layout(),
            AssignmentBook(self.producer, topics.assignments),
            self._read_backlog,
            self.options.heartbeat_timeout_s,
            self.registry.names,
        )
        self._backlog_reader: GroupBacklog | None = None
        self._heartbeat_position = -1  # of the last heartbeat taken (stall watchdog)
        self._wire()

    def create_changelogs(self) -> None:
        """Create the tables' changelog topics, and wait for their leaders, before faust
        starts. Left to faust on a fresh broker, its agents could start before the new
        topics showed in their metadata: the heartbeats agent died of PartitionsMismatch
        ("...-workers-changelog has 0 partitions") while the process stayed up, and no
        worker was ever assigned (3 of 4 first runs of deploy/compose.yaml)."""
        specs = [
            TopicSpec(
                table.changelog_topic.get_topic_name(),
                TABLE_PARTITIONS,
                "scheduler table changelog (compacted)",
                {"cleanup.policy": "compact"},
            )
            for table in (self.workers, self.job_tables.records)
        ]
        admin = AdminClient(self.settings.kafka_config())
        ensure_topics(admin, specs, self.settings.topics.replication_factor)

    def _wire(self) -> None:
        topics = self.settings.topics
        self.app.agent(self._raw_topic(topics.heartbeats), name="heartbeats")(self._heartbeats)
        self.app.agent(self._raw_topic(topics.jobs), name="jobs")(self._jobs)
        self.app.task(self._assignment_loop)
        self.app.task(self._stall_watchdog)
        self.app.task(self.progress.run)
        register_views(
            self.app,
            self.core,
            self.worker_states,
            self.options.heartbeat_timeout_s,
            self.job_tables,
            ops_token=self.settings.ops_token,
        )

    def _raw_topic(self, name: str) -> Any:
        return self.app.topic(
            name, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw"
        )

    def worker_states(self) -> list[WorkerState]:
        return [WorkerState(v["heartbeat"], v["received_at_ms"]) for v in self.workers.values()]

    # -- agents ---------------------------------------------------------------
    async def _heartbeats(self, stream: Any) -> None:
        async for event in stream.events():
            self._heartbeat_position = event.message.offset
            beat = _decode(HEARTBEAT, event.value, "heartbeats")
            if beat is None:
                continue
            previous = self.workers.get(beat["worker_id"])
            self.workers[beat["worker_id"]] = {"heartbeat": beat, "received_at_ms": now_ms()}
            if previous is None or _changed(previous["heartbeat"], beat):
                self.core.wake.set()

    async def _jobs(self, stream: Any) -> None:
        async for event in stream.events():
            job_id = (event.key or b"").decode()
            if event.value is None:
                self.job_tables.records.pop(job_id, None)  # tombstone: the job was deleted
                continue
            record = _decode(JOB, event.value, "jobs")
            if record is not None:
                self.job_tables.records[job_id] = record

    # -- assignment -----------------------------------------------------------
    def _models_changed(self, _models: frozenset[str]) -> None:
        # From the registry's thread: a new model's partitions are placed at once.
        self.app.loop.call_soon_threadsafe(self.core.wake.set)

    async def _assignment_loop(self) -> None:
        try:
            with self.producer, self.registry:
                await self._assign_forever()
        finally:
            if self._backlog_reader is not None:
                self._backlog_reader.close()

    async def _assign_forever(self) -> None:
        latest = await asyncio.to_thread(
            read_published, self.settings.kafka_config(), self.settings.topics.assignments
        )
        self.core.book.load(latest)
        self.core.start_from(self.core.book.published)
        # Heartbeats from before a restart are old: wait one timeout so every live
        # worker is heard from again before anything is judged gone.
        await asyncio.sleep(self.options.heartbeat_timeout_s)
        while True:
            await self._one_pass()
            self.core.wake.clear()
            await wait_event(self.core.wake, self.options.assign_interval_s)

    async def _stall_watchdog(self) -> None:
        """Exit when faust stops consuming heartbeats that are there to consume.

        After a broker restart under load faust-streaming 0.15 stopped fetching for
        good in the chaos test, freezing the worker table (and so every assignment)
        while the process looked alive.
        Its state is in changelog tables and the assignments topic, so the cheap,
        proven way back is a restart by the supervisor: exit code 3. The heartbeats
        topic's end offset growing while the agent's position stood still for the
        whole limit is the sign.
        """
        limit_s = 3 * self.options.session_timeout_s + 30
        topic = self.settings.topics.heartbeats
        seen: tuple[int, int, float] | None = None  # position, end offset, since
        while True:
            await asyncio.sleep(5)
            try:
                reader = self._backlog_reader_or_new()
                [end] = (await asyncio.to_thread(reader.end_offsets, topic, [0])).values()
            except KafkaException as exc:
                log.warning("watchdog cannot read end offsets", error=str(exc))
                continue
            now = time.monotonic()
            position = self._heartbeat_position
            if seen is None or position != seen[0]:
                seen = (position, end, now)
            elif end > seen[1] and now - seen[2] > limit_s:
                log.error("faust stopped consuming heartbeats; exiting for a restart")
                exit_now(EXIT_STALLED)

    async def _one_pass(self) -> None:
        try:
            await self.core.run_pass(self.worker_states())
        except (KafkaException, KbatchError) as exc:
            metrics.PASSES.labels("failed").inc()
            log.warning("assignment pass failed; the next pass retries", error=str(exc))
            return
        metrics.PASSES.labels("ok").inc()

    def _backlog_reader_or_new(self) -> GroupBacklog:
        if self._backlog_reader is None:
            self._backlog_reader = GroupBacklog(
                self.settings.kafka_config(), self.settings.inference_group
            )
        return self._backlog_reader

    def _read_backlog(self, models: list[str]) -> dict[ModelPartition, int]:
        return self._backlog_reader_or_new().by_model_partition(
            self.settings.topics.request_layout(), models
        )


def _decode(name: str, value: bytes | None, topic: str) -> dict[str, Any] | None:
    """Decode a record; an undecodable one is counted and logged, not counted as progress."""
    try:
        return codec(name).decode(value)
    except DecodeError as exc:
        metrics.UNDECODABLE.labels(topic).inc()
        log.error("undecodable record skipped", topic=topic, error=str(exc))
        return None


def _changed(before: dict[str, Any], after: dict[str, Any]) -> bool:
    """A heartbeat that changes what the assignment depends on wakes the pass loop."""
    fields = (
        "healthy",
        "draining",
        "leaving",
        "capacity",
        "pool",
        "owned_partitions",
        "served_models",
        "generation",
    )
    return any(before.get(f) != after.get(f) for f in fields)
