"""`kbatch dlq replay` while its broker is killed -9 and restarted: the run rides out the
outage (each chunk's transaction aborted and sent again) and every parked record is
republished exactly once (read_committed)."""

from __future__ import annotations

import os
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest
from confluent_kafka import Producer

from services.codec import REQUEST, codec
from services.harness.chaos_rig import own_broker
from services.harness.kafka import read_topic, unique_topics, wait_for
from services.harness.pipeline import request_record, shared_env
from services.harness.processes import KBATCH
from services.inference.outputs import Origin, dead_letter_record
from services.kafka import local_broker
from services.kafka.transactions import produce_record

PARKED = 2000
RATE = 150  # records/s: the replay runs ~13 s, long enough to be cut in the middle


@pytest.mark.timeout(600)
def test_a_replay_cut_by_a_broker_restart_republishes_each_record_once(tmp_path: Path) -> None:
    broker = own_broker(tmp_path / "kafka")
    try:
        topics = unique_topics(broker.bootstrap, high_partitions=1, normal_partitions=2)
        producer = Producer({"bootstrap.servers": broker.bootstrap, "enable.idempotence": True})
        for i in range(PARKED):
            request = request_record("parked", i)
            key, value = request["request_id"].encode(), codec(REQUEST).encode(request)
            origin = Origin(topics.requests_of("kbatch-sim"), 1, i, key, value)
            letter = dead_letter_record(
                topics.dlq, origin, "TransientEngineError", "busy", "retries_exhausted", 4, "w",
                request,
            )  # fmt: skip
            produce_record(producer, letter)
        assert producer.flush(30) == 0
        env = {**shared_env(broker.bootstrap, topics), "KBATCH_LOG_LEVEL": "WARNING"}
        with (tmp_path / "replay.log").open("wb") as log:
            replay = subprocess.Popen(
                [KBATCH, "dlq", "replay", "--rate", str(RATE)],
                env={**os.environ, **env},
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            time.sleep(4)  # time is the fault's position: in the middle of the replay
            assert replay.poll() is None, (tmp_path / "replay.log").read_text()
            local_broker.down(broker, sig=9)
            time.sleep(6)  # time is the fault: the broker away while the replay runs
            local_broker.up(broker)
            code = replay.wait(timeout=300)
        output = (tmp_path / "replay.log").read_text()
        assert code == 0, output
        republished = wait_for(
            lambda: _replays(broker.bootstrap, topics.requests_of("kbatch-sim"), PARKED),
            60,
            "the replays",
        )
    finally:
        local_broker.down(broker)
    assert len(republished) == PARKED and set(republished.values()) == {1}


def _replays(bootstrap: str, topic: str, expect: int) -> Counter[str] | None:
    found: Counter[str] = Counter()
    for message in read_topic(bootstrap, topic, timeout_s=10):
        headers = dict(message.headers() or [])
        if "kbatch-replay-of" in headers:
            found[str(headers["kbatch-replay-of"])] += 1
    return found if sum(found.values()) >= expect else None
