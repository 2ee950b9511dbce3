"""A transaction call that ignores its timeout (librdkafka issues 5456 and 5511) costs
the worker one producer, not its life: the partition is taken afresh and nothing is
lost or published twice.

librdkafka's hang cannot be provoked on demand, so the first producer's
send_offsets_to_transaction is held at the point where the real one blocks: inside an
open transaction whose records are already produced. Everything else is real: the
broker, the worker, the fencing of the held producer by its successor.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any, cast

import pytest
from confluent_kafka import Consumer, Producer
from prometheus_client import REGISTRY

from services.harness.kafka import unique_topics
from services.harness.pipeline import outcomes, publish_to, request_record, shared_env
from services.inference.committers import Committer, committer_factory
from services.inference.engines import build_engine
from services.inference.request_partitions import PartitionKey
from services.inference.settings import InferenceSettings
from services.inference.worker import Worker
from services.kafka.transactions import TransactionalProducer

REQUESTS = 300
STALL_S = 3.0


class HeldSendOffsets:
    """A real producer whose first send_offsets_to_transaction waits for `release`."""

    def __init__(self, producer: Producer, release: threading.Event) -> None:
        self._producer = producer
        self.release = release
        self.entered = threading.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._producer, name)

    def send_offsets_to_transaction(self, *args: Any) -> None:
        self.entered.set()
        self.release.wait()
        self._producer.send_offsets_to_transaction(*args)


def hung_aborts() -> float:
    sample = REGISTRY.get_sample_value(
        "kbatch_inference_transaction_aborts_total", {"cause": "hung"}
    )
    return sample or 0.0


async def until(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


@pytest.mark.timeout(180)
async def test_a_commit_hung_past_its_timeouts_is_abandoned_and_the_partition_retaken(
    bootstrap: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    topics = unique_topics(bootstrap, high_partitions=1, normal_partitions=1, low_partitions=1)
    normal = topics.lane_layout().total // 2  # high, normal, low: one partition each
    records = [request_record("hung", i, max_tokens=4) for i in range(REQUESTS)]
    owned = PartitionKey(records[0]["model"], normal)  # the model's normal-lane partition
    publish_to(bootstrap, topics, records, [normal])
    env = {
        **shared_env(bootstrap, topics),
        "KBATCH_INFERENCE__ENGINE": "simulated",
        "KBATCH_INFERENCE__WORKER_ID": "held",
        "KBATCH_INFERENCE__COMMIT_INTERVAL_S": "0.2",
        "KBATCH_INFERENCE__COMMIT_STALL_S": str(STALL_S),
        "KBATCH_INFERENCE__SIMULATED__STEP_S": "0.005",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = InferenceSettings()
    release = threading.Event()
    held: list[HeldSendOffsets] = []
    make_committer = committer_factory(settings)

    def committer(key: PartitionKey, consumer: Consumer) -> Committer:
        made = make_committer(key, consumer)
        if held or not isinstance(made, TransactionalProducer):
            return made
        opened = made.open

        def open_then_hold() -> None:
            opened()
            producer = HeldSendOffsets(cast(Producer, made._producer), release)
            held.append(producer)
            made._producer = cast(Producer, producer)

        made.open = open_then_hold  # type: ignore[method-assign]
        return made

    worker = Worker(settings, build_engine(settings.inference), committers=committer)
    aborts_before = hung_aborts()
    worker.set_assignment({owned})
    stop = asyncio.Event()
    running = asyncio.create_task(worker.run(stop))
    try:
        await until(lambda: bool(held) and held[0].entered.is_set(), 60, "the first commit")
        await until(lambda: len(worker.hung_calls) == 1, STALL_S + 30, "the commit abandoned")
        assert not running.done(), "the worker exited instead of abandoning the commit"
        assert hung_aborts() - aborts_before == 1
        found = await asyncio.to_thread(outcomes, bootstrap, topics, REQUESTS, 90)
        assert found.result_ids() == {r["request_id"]: 1 for r in records}
        # The held producer, let go, finds itself fenced; its results stay aborted.
        release.set()
        await until(lambda: len(worker.hung_calls) == 0, 60, "the abandoned call to return")
    finally:
        release.set()
        stop.set()
        code = await asyncio.wait_for(running, 120)
    assert code == 0
    again = await asyncio.to_thread(outcomes, bootstrap, topics, REQUESTS, 5)
    assert again.result_ids() == {r["request_id"]: 1 for r in records}
    assert not again.dead
