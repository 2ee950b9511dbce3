"""Poison records written straight to the requests topic go to the DLQ with the reason,
and the partition keeps flowing."""

from __future__ import annotations

import os
from pathlib import Path

from services.codec import MARKER, REQUEST, codec
from services.harness.kafka import unique_topics
from services.harness.pipeline import outcomes, publish_to, request_record, start_worker


def test_poison_records_are_dead_lettered_and_the_partition_flows(
    bootstrap: str, tmp_path: Path
) -> None:
    topics = unique_topics(bootstrap, high_partitions=1, normal_partitions=1, low_partitions=1)
    valid = codec(REQUEST).encode(request_record("job-p", 0))
    poison = {
        "truncated": valid[: len(valid) // 2],
        "unknown fingerprint": MARKER + os.urandom(8) + valid[10:],
        "random": os.urandom(64),
        "trailing": valid + b"\x00\x01",
    }
    good = [request_record("job-p", i) for i in range(1, 41)]
    # Poison first on the one partition, good records behind it: they must still flow.
    publish_to(bootstrap, topics, [], [1], raw=list(poison.values()))
    publish_to(bootstrap, topics, good, [1])
    worker, _ = start_worker(bootstrap, topics, tmp_path, "w", "1")
    try:
        found = outcomes(bootstrap, topics, expect=len(good) + len(poison), timeout_s=60)
    finally:
        assert worker.terminate() == 0, worker.log()
    assert len(found.results) == len(good)
    assert {d["stage"] for d, _ in found.dead} == {"decode"}
    reasons = sorted(d["error_message"] for d, _ in found.dead)
    assert any("unknown schema fingerprint" in r for r in reasons), reasons
    assert any("trailing bytes" in r for r in reasons), reasons
    assert all(d["original_value"] in poison.values() for d, _ in found.dead)
