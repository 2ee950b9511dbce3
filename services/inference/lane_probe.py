"""The lane gate's inputs: the owned partitions' end offsets, probed beside the loop,
and the gate built from them each round."""

from __future__ import annotations

import asyncio

from confluent_kafka import KafkaException

from services.inference.flow import LaneGate, lane_gate
from services.inference.ownership import Ownership
from services.inference.request_partitions import PartitionKey
from services.inference.settings import InferenceSettings
from services.kafka.consumers import ConsumerRole, make_consumer
from services.lifecycle import wait_event
from services.logs import get_logger

log = get_logger("worker")

LANE_PROBE_S = 0.1  # a fast engine took ~280 low records in the 0.5 s it once was


class EndOffsetsProbe:
    """Keeps the lane gate's end offsets fresh, every LANE_PROBE_S, beside the loop.

    librdkafka fetches no partition while its prefetch queue is full (of lower
    lane records, under a large backlog), and its cached end offsets move only
    with fetches: a high lane's new records stayed invisible to the gate. The
    probe is a round trip per partition, so it must not hold up consuming
    (awaited inline it cut one worker with 8 partitions to 38 requests/s), and it
    asks through a handle of its own: confluent-kafka serializes the calls on one
    handle, so probing through the worker's consumer stalled its consume() and
    the event loop behind it (bench.engines, llamacpp: 0.33 of the binding's rate).
    """

    def __init__(self, settings: InferenceSettings, ownership: Ownership) -> None:
        self.ends: dict[PartitionKey, int] = {}  # of owned partitions, for the lane gate
        self._settings = settings
        self._ownership = ownership

    async def run(self, stop: asyncio.Event) -> None:
        probe = make_consumer(
            self._settings.kafka_config(),
            ConsumerRole.COMMITTED_READER,  # its end offsets: last stable offsets
            self._settings.inference_group,
        )
        requests = self._ownership.requests
        try:
            while not stop.is_set():
                await wait_event(stop, LANE_PROBE_S)
                owned = list(self._ownership.owned)
                if len(owned) < 2 or stop.is_set():
                    continue
                try:
                    self.ends = await asyncio.to_thread(requests.end_offsets, probe, owned, 5)
                except KafkaException as exc:
                    log.warning(
                        "end offsets unavailable; lane gate uses the last known", error=str(exc)
                    )
        finally:
            await asyncio.to_thread(probe.close)


def current_gate(
    ownership: Ownership, ends: dict[PartitionKey, int], hold_window: int
) -> LaneGate[PartitionKey]:
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
    owned = ownership.owned
    if len(owned) < 2:
        return LaneGate()
    lanes = {key: ownership.requests.lane_of(key) for key in owned}
    backlog: dict[PartitionKey, int | None] = {}
    for key, part in owned.items():
        high = ends.get(key, -1)
        waiting = high - part.progress.next_to_consume
        backlog[key] = max(0, waiting) if high >= 0 else None
    return lane_gate(lanes, backlog, ownership.held, hold_window)
