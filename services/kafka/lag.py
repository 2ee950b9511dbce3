"""Measure the requests backlog per lane from the broker's offsets."""

from __future__ import annotations

import threading
from typing import Any

from confluent_kafka import ConsumerGroupTopicPartitions, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec

from services.lanes import Lane, LaneLayout, lane_backlog
from services.logs import get_logger

log = get_logger("lag")


def measure_backlog(
    admin: AdminClient, topic: str, group: str, layout: LaneLayout, timeout_s: float = 10
) -> dict[Lane, int]:
    """One measurement: end offsets minus the inference group's committed offsets."""
    partitions = [TopicPartition(topic, p) for p in range(layout.total)]
    ends = admin.list_offsets(
        {tp: OffsetSpec.latest() for tp in partitions}, request_timeout=timeout_s
    )
    starts = admin.list_offsets(
        {tp: OffsetSpec.earliest() for tp in partitions}, request_timeout=timeout_s
    )
    group_request = [ConsumerGroupTopicPartitions(group, partitions)]
    committed_future = admin.list_consumer_group_offsets(group_request, request_timeout=timeout_s)[
        group
    ]
    committed: dict[int, int | None] = {}
    for tp in committed_future.result().topic_partitions:
        committed[tp.partition] = tp.offset if tp.offset >= 0 else None
    return lane_backlog(
        layout,
        {tp.partition: future.result().offset for tp, future in ends.items()},
        committed,
        {tp.partition: future.result().offset for tp, future in starts.items()},
    )


class BacklogMonitor:
    """Refreshes the per-lane backlog on a thread; adds what was published since."""

    def __init__(
        self,
        admin_config: dict[str, Any],
        topic: str,
        group: str,
        layout: LaneLayout,
        refresh_s: float,
    ) -> None:
        self._admin_config = admin_config
        self._topic = topic
        self._group = group
        self._layout = layout
        self._refresh_s = refresh_s
        self._lock = threading.Lock()
        self._measured: dict[Lane, int] | None = None
        self._published_since = dict.fromkeys(Lane, 0)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_error: str | None = None

    def start(self) -> None:
        admin = AdminClient(self._admin_config)
        self._refresh(admin)
        self._thread = threading.Thread(
            target=self._run, args=(admin,), name="backlog", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def backlog(self, lane: Lane) -> int | None:
        """Best estimate of the lane's backlog; None until a measurement succeeded."""
        with self._lock:
            if self._measured is None:
                return None
            return self._measured[lane] + self._published_since[lane]

    def note_published(self, lane: Lane, count: int) -> None:
        with self._lock:
            self._published_since[lane] += count

    def _run(self, admin: AdminClient) -> None:
        while not self._stop.wait(self._refresh_s):
            self._refresh(admin)

    def _refresh(self, admin: AdminClient) -> None:
        with self._lock:
            pending = dict(self._published_since)
        try:
            measured = measure_backlog(admin, self._topic, self._group, self._layout)
        except KafkaException as exc:
            # Admission then refuses (backlog unknown) rather than guessing; see backlog().
            self.last_error = str(exc)
            log.warning("backlog measurement failed", error=str(exc))
            with self._lock:
                self._measured = None
            return
        with self._lock:
            self._measured = measured
            # Records published while the measurement ran may or may not be in it:
            # keep them counted (conservative) and drop only what preceded it.
            for lane in Lane:
                self._published_since[lane] -= pending[lane]
        self.last_error = None
