"""A running deployment to break: broker, topics, scheduler, workers, a job, and its checks.

Used by the short chaos test (every fault in turn on one job) and by
`kbatch bench chaos` (each fault alone, many times, into a report). The rig plays
the supervisor too: a service that exits asking for a restart is restarted.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from confluent_kafka import KafkaError, Message, Producer, TopicPartition

from services.codec import DEAD_LETTER, REQUEST, codec, results_codec
from services.harness.cluster import Cluster
from services.harness.kafka import unique_topics, wait_for
from services.harness.pipeline import (
    Outcomes,
    outcomes,
    owned_partitions,
    publish_to,
    request_record,
    start_follower,
    start_scheduler,
)
from services.harness.ports import free_port
from services.harness.processes import ServiceProcess
from services.inference.worker import EXIT_TRANSACTION_HUNG
from services.kafka import local_broker
from services.kafka.consumers import ConsumerRole, make_consumer
from services.lanes import Lane
from services.routing import ModelPartition
from services.settings import CommonSettings, TopicSettings

JOB = "chaos"
HEARTBEAT_TIMEOUT_S = 4.0  # start_scheduler's test setting
JAR_CACHE = Path(".kbatch") / "jars"  # relative to the current directory
MAX_TOKENS = 12  # per request of the job
_TAIL_BATCH = 5000


def own_broker(directory: Path, jar_cache: Path = JAR_CACHE) -> local_broker.BrokerLayout:
    """A broker of the rig's own: restarting it must not disturb anyone else's."""
    layout = local_broker.BrokerLayout(
        directory,
        port=free_port(),
        controller_port=free_port(),
        jar_cache=jar_cache.resolve(),
    )
    local_broker.up(layout)
    return layout


@dataclass
class Verdict:
    """What the results topic and the DLQ hold for the job, against what was published."""

    requests: int
    lost: int
    duplicated: int
    dead_letters: int
    counted: int  # the scheduler's job count

    @property
    def exact(self) -> bool:
        return self.lost == 0 and self.duplicated == 0 and self.counted == self.requests


class ResultsTail:
    """Outcomes of the job committed so far, read incrementally (read_committed)."""

    def __init__(self, bootstrap: str, topics: TopicSettings) -> None:
        self._consumer = make_consumer(
            {"bootstrap.servers": bootstrap}, ConsumerRole.COMMITTED_READER
        )
        self._consumer.assign(
            [TopicPartition(topics.results, p, 0) for p in range(topics.results_partitions)]
            + [TopicPartition(topics.dlq, p, 0) for p in range(topics.dlq_partitions)]
        )
        self._results = topics.results
        self._lock = threading.Lock()  # a feeding thread counts too
        self.seen = 0

    def count(self) -> int:
        """What has arrived by now. Reading on until the stream paused for 0.2 s made one
        call last seconds, up to tens of seconds, while the workers committed steadily."""
        with self._lock:
            while True:
                messages = self._consumer.consume(_TAIL_BATCH, 0.2)
                for message in messages:
                    if message.error() is None:
                        is_result = message.topic() == self._results
                        decoder = results_codec() if is_result else codec(DEAD_LETTER)
                        self.seen += decoder.decode(message.value())["job_id"] == JOB
                if len(messages) < _TAIL_BATCH:
                    return self.seen

    def close(self) -> None:
        self._consumer.close()


@dataclass
class ChaosRig:
    broker: local_broker.BrokerLayout | None  # the rig's own single broker, or
    log_dir: Path
    engine: dict[str, str]
    cluster: Cluster | None = None  # a 3-node cluster (topics replicated 3 times)
    scheduler_options: dict[str, str] = field(default_factory=dict)  # start_scheduler's
    topics: TopicSettings = field(init=False)
    records: list[dict[str, Any]] = field(default_factory=list)
    workers: dict[str, ServiceProcess] = field(default_factory=dict)
    pools: dict[str, str] = field(default_factory=dict)
    exits: dict[str, int] = field(default_factory=dict)
    _scheduler: ServiceProcess | None = None
    _tail: ResultsTail | None = None
    _lanes: list[int] = field(default_factory=list)  # the job's partitions
    _feeder: _Feeder | None = None
    url: str = ""
    _names: int = 0
    # The services started here inherit this environment, KBATCH_OPS_TOKEN included.
    _ops_headers: dict[str, str] = field(
        default_factory=lambda: CommonSettings().ops_headers(), repr=False
    )

    @property
    def bootstrap(self) -> str:
        if self.cluster is not None:
            return self.cluster.bootstrap
        assert self.broker is not None
        return self.broker.bootstrap

    def start(self, requests: int, workers: int = 2, capacity: int = 6) -> None:
        self.topics = unique_topics(
            self.bootstrap,
            high_partitions=2,
            normal_partitions=2,
            low_partitions=2,
            replication_factor=3 if self.cluster is not None else 1,
        )
        self.records = [request_record(JOB, i, max_tokens=MAX_TOKENS) for i in range(requests)]
        # Normal and low lanes only: the high lane stays free for the ingest scenario's batch.
        layout = self.topics.lane_layout()
        self._lanes = [*layout.partitions(Lane.NORMAL), *layout.partitions(Lane.LOW)]
        publish_to(self.bootstrap, self.topics, self.records, self._lanes)
        self._tail = ResultsTail(self.bootstrap, self.topics)
        self.start_scheduler()
        for pool in ["dedicated", "spot", "dedicated", "spot"][:workers]:
            self.start_worker(pool, capacity)

    # -- processes --------------------------------------------------------------
    def _name(self, kind: str) -> str:
        self._names += 1
        return f"{kind}-{self._names}"

    def start_scheduler(self) -> None:
        name = self._name("scheduler")
        self._scheduler, self.url = start_scheduler(
            self.bootstrap, self.topics, self.log_dir, name, **self.scheduler_options
        )

    @property
    def scheduler(self) -> ServiceProcess:
        assert self._scheduler is not None
        return self._scheduler

    def start_worker(self, pool: str, capacity: int = 6) -> str:
        name = self._name("worker")
        self.workers[name] = start_follower(
            self.bootstrap, self.topics, self.log_dir, name, pool, capacity, **self.engine
        )[0]
        self.pools[name] = pool
        return name

    def stopped(self, name: str, code: int) -> None:
        """A worker the test stopped on purpose: forget it, keep its exit code."""
        self.workers.pop(name)
        self.exits[name] = code

    def supervise(self) -> None:
        """Restart what exited asking for a restart, as a supervisor would."""
        # Here, not at the top: the scheduler app imports faust (the scheduler extra).
        from services.scheduler.app import EXIT_STALLED

        if self.scheduler.process.poll() == EXIT_STALLED:
            self.exits[f"stalled {time.monotonic_ns()}"] = self.scheduler.terminate()
            self.start_scheduler()
        for name, process in list(self.workers.items()):
            if process.process.poll() == EXIT_TRANSACTION_HUNG:
                self.stopped(name, process.terminate())  # exited already; closes its log
                self.start_worker(self.pools[name])

    def close(self) -> None:
        for name, process in self.workers.items():
            self.exits[name] = process.terminate(timeout_s=60)
        if self._scheduler is not None:
            self._scheduler.terminate(timeout_s=60)
        if self._tail is not None:
            self._tail.close()

    # -- observing --------------------------------------------------------------
    def outcomes(self, expect: int = 0, timeout_s: float = 0) -> Outcomes:
        found = outcomes(self.bootstrap, self.topics, expect, timeout_s)
        return Outcomes(
            [r for r in found.results if r["job_id"] == JOB],
            [(d, h) for d, h in found.dead if d["job_id"] == JOB],
        )

    def done(self) -> int:
        """Outcomes committed so far (cheap: read incrementally)."""
        assert self._tail is not None
        return self._tail.count()

    def outstanding(self) -> int:
        """Requests of the job published with no outcome committed yet."""
        return len(self.records) - self.done()

    @contextmanager
    def fed(self, backlog: int) -> Iterator[None]:
        """Within the block, further requests of the job are published (to the same
        partitions, round-robin on) whenever fewer than `backlog` are outstanding, checked
        every 0.2 s and on `top_up`: the job cannot run dry before the last fault, however
        long the faults take, and has at most about `backlog` requests left to finish
        after the block. Publishing is asynchronous (an outage only delays it); the
        block's end waits for every acknowledgement, and a failed one fails the block."""
        feeder = _Feeder(self, backlog)
        stop = threading.Event()

        def feed() -> None:
            while not stop.wait(0.2):
                if not feeder.top_up():
                    return

        thread = threading.Thread(target=feed, name="chaos-feeder", daemon=True)
        self._feeder = feeder
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()
            self._feeder = None
        feeder.close()

    def top_up(self) -> int:
        """Inside `fed`: publish what the backlog lacks now; the requests outstanding."""
        assert self._feeder is not None, "top_up feeds a job inside `fed` only"
        return self._feeder.top_up()

    def wait_progress(self, more: int, what: str, timeout_s: float = 120) -> None:
        """Wait until `more` further outcomes are committed (or the job is done)."""
        target = min(self.done() + more, len(self.records))

        def advanced() -> bool:
            self.supervise()
            return self.done() >= target

        wait_for(advanced, timeout_s, what, interval_s=0.2)

    def owned(self) -> dict[str, set[ModelPartition]]:
        """Partitions each live worker reports owning, from the scheduler's view."""
        return owned_partitions(self.url, self._ops_headers)

    def job_count(self) -> int:
        try:
            view = httpx.get(f"{self.url}/jobs/{JOB}", headers=self._ops_headers, timeout=5).json()
        except httpx.HTTPError:
            return -1
        return int(view["completed"]) + int(view["failed"])

    def verdict(self, timeout_s: float = 300) -> Verdict:
        """Wait for every request's outcome and the scheduler's count, then compare."""
        total = len(self.records)
        deadline = time.monotonic() + timeout_s
        while self.done() < total and time.monotonic() < deadline:
            self.supervise()
            time.sleep(0.2)
        found = self.outcomes()
        while self.job_count() < total and time.monotonic() < deadline:
            self.supervise()
            time.sleep(0.2)
        seen = found.result_ids() + found.dead_ids()
        published = {r["request_id"] for r in self.records}
        return Verdict(
            requests=total,
            lost=len(published - set(seen)),
            duplicated=sum(n - 1 for n in seen.values() if n > 1),
            dead_letters=len(found.dead),
            counted=self.job_count(),
        )


class _Feeder:
    """Publishes further requests of a rig's job up to a backlog (for `ChaosRig.fed`)."""

    def __init__(self, rig: ChaosRig, backlog: int) -> None:
        self._rig = rig
        self._backlog = backlog
        self._lock = threading.Lock()  # the feeding thread and `top_up` callers
        self._producer = Producer({"bootstrap.servers": rig.bootstrap, "enable.idempotence": True})
        self._failures: list[KafkaError | Exception] = []

    def _delivered(self, error: KafkaError | None, _: Message) -> None:
        if error is not None:
            self._failures.append(error)

    def top_up(self) -> int:
        """The requests outstanding once topped up; 0 once feeding failed."""
        rig = self._rig
        with self._lock:
            if self._failures:
                return 0
            try:
                outstanding = rig.outstanding()
                for _ in range(self._backlog - outstanding):
                    index = len(rig.records)
                    record = request_record(JOB, index, max_tokens=MAX_TOKENS)
                    self._producer.produce(
                        rig.topics.requests_of(record["model"]),
                        codec(REQUEST).encode(record),
                        key=record["request_id"].encode(),
                        partition=rig._lanes[index % len(rig._lanes)],
                        on_delivery=self._delivered,
                    )
                    rig.records.append(record)
                self._producer.poll(0)
            except Exception as exc:  # noqa: BLE001 - reported by `close`, at the block's end
                self._failures.append(exc)
                return 0
            return max(outstanding, self._backlog)

    def close(self) -> None:
        unsent = self._producer.flush(120)
        if unsent or self._failures:
            raise AssertionError(f"feeding the job: {unsent} unacknowledged, {self._failures[:3]}")
