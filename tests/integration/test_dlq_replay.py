"""`kbatch dlq replay` on the real broker: interrupted and rerun, each dead letter once."""

from __future__ import annotations

import subprocess
from collections import Counter
from pathlib import Path

from confluent_kafka import Message

from services.harness.kafka import read_topic, unique_topics
from services.harness.pipeline import outcomes, publish, request_record, shared_env, start_worker
from services.harness.processes import KBATCH


def kbatch(env: dict[str, str], *args: str) -> str:
    done = subprocess.run([KBATCH, *args], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def replay_of(message: Message) -> str | None:
    """The dead letter a republished request replays, from its header."""
    value = dict(message.headers() or []).get("kbatch-replay-of")
    return value.decode() if isinstance(value, bytes) else None


def test_replay_twice_after_an_interruption_republishes_each_once(
    bootstrap: str, tmp_path: Path
) -> None:
    topics = unique_topics(bootstrap, high_partitions=1, normal_partitions=2, low_partitions=1)
    good = [request_record("job-d", i) for i in range(20)]
    too_long = [request_record("job-d", 100 + i, max_tokens=100_000) for i in range(7)]
    publish(bootstrap, topics, good + too_long, raw=[b"not avro at all"])
    worker, _ = start_worker(bootstrap, topics, tmp_path, "w", "0-3")
    try:
        found = outcomes(bootstrap, topics, expect=28, timeout_s=60)
    finally:
        assert worker.terminate() == 0, worker.log()
    assert len(found.dead) == 8
    env = {**shared_env(bootstrap, topics), "KBATCH_LOG_LEVEL": "WARNING", "COLUMNS": "300"}

    listing = kbatch(env, "dlq", "list", "--job", "job-d")
    assert listing.count("InvalidRequestError") == 7
    first = kbatch(env, "dlq", "replay", "--limit", "3")
    assert "7 to replay (3 now), 1 refused, 0 replayed before" in " ".join(first.split())
    second = kbatch(env, "dlq", "replay", "--rate", "100")
    assert "4 to replay (4 now), 1 refused, 3 replayed before" in " ".join(second.split())
    third = kbatch(env, "dlq", "replay")
    assert "0 to replay (0 now), 1 refused, 7 replayed before" in " ".join(third.split())

    requests = read_topic(bootstrap, topics.requests_of("kbatch-sim"), timeout_s=10)
    replays = Counter(origin for m in requests if (origin := replay_of(m)) is not None)
    assert len(replays) == 7 and set(replays.values()) == {1}
    originals = {d["original_value"] for d, _ in found.dead if d["stage"] != "decode"}
    republished = {m.value() for m in requests if replay_of(m) is not None}
    assert republished == originals
