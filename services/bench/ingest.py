"""Validated-and-published requests/s through ingest vs raw confluent-kafka produce.

Run: make bench-ingest   (or .venv/bin/python -m bench.ingest [N])
Both paths publish the same records (same bytes, partitions, acks=all,
idempotence, lz4, linger 5 ms) to a fresh requests topic on the same broker.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
from confluent_kafka import Producer

from bench.common import OUT, broker, machine
from services.codec import REQUEST, codec
from services.harness.kafka import unique_topics
from services.harness.ports import free_port
from services.harness.processes import ServiceProcess
from services.ingest.validation import Limits, RequestContext, parse_line
from services.lanes import Lane


def batch_lines(n: int) -> list[bytes]:
    return [
        json.dumps(
            {
                "custom_id": f"c{i}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {
                    "model": "kbatch-sim",
                    "messages": [{"role": "user", "content": f"Summarise candidate {i} " * 8}],
                    "max_tokens": 64,
                    "temperature": 0.2,
                },
            }
        ).encode()
        for i in range(n)
    ]


def raw_rate(bootstrap: str, topic: str, lines: list[bytes]) -> float:
    context = RequestContext("raw-job", "bench", Lane.NORMAL, int(time.time() * 1000))
    limits = Limits(frozenset({"kbatch-sim"}), 32768)
    layout_partitions = list(range(4, 12))  # the default normal lane
    encoded = []
    for number, line in enumerate(lines, 1):
        record = parse_line(number, line, context, limits)
        assert isinstance(record, dict)
        encoded.append((record["request_id"].encode(), codec(REQUEST).encode(record)))
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 5,
            "compression.type": "lz4",
        }
    )
    # Warm up: the idempotent producer's id and metadata are not part of the rate.
    producer.produce(topic, encoded[0][1], key=b"warmup", partition=layout_partitions[0])
    assert producer.flush(60) == 0
    started = time.perf_counter()
    for i, (key, value) in enumerate(encoded):
        partition = layout_partitions[i % len(layout_partitions)]
        while True:
            try:
                producer.produce(topic, value, key=key, partition=partition)
                break
            except BufferError:
                producer.poll(0.01)
        producer.poll(0)
    assert producer.flush(60) == 0
    return len(encoded) / (time.perf_counter() - started)


def ingest_rate(bootstrap: str, prefix: str, lines: list[bytes], log: Path) -> float:
    port = free_port()
    env = {
        "KBATCH_BOOTSTRAP_SERVERS": bootstrap,
        "KBATCH_TOPICS__PREFIX": prefix,
        "KBATCH_INGEST__HTTP_PORT": str(port),
        "KBATCH_INGEST__LANE_BACKLOG_LIMIT": str(10 * len(lines)),
        "KBATCH_INGEST__MAX_LINES_PER_JOB": str(len(lines)),
        "KBATCH_LOG_LEVEL": "WARNING",
    }
    service = ServiceProcess(["ingest"], env, log)
    url = f"http://127.0.0.1:{port}"
    service.wait_healthy(f"{url}/healthz")

    def body() -> Iterator[bytes]:
        for start in range(0, len(lines), 500):
            yield b"\n".join(lines[start : start + 500]) + b"\n"

    try:
        started = time.perf_counter()
        response = httpx.post(f"{url}/v1/jobs/bench/requests", content=body(), timeout=600)
        elapsed = time.perf_counter() - started
        assert response.status_code == 200, response.text
        assert response.json()["accepted"] == len(lines), response.text
    finally:
        service.terminate()
    return len(lines) / elapsed


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 50_000
    OUT.mkdir(parents=True, exist_ok=True)
    lines = batch_lines(n)
    with broker() as bootstrap:
        raw = raw_rate(bootstrap, unique_topics(bootstrap).requests, lines)
        via_ingest = ingest_rate(
            bootstrap, unique_topics(bootstrap).prefix, lines, OUT / "ingest.log"
        )
    print(f"machine: {machine()}; {n} chat lines")
    print("| path | requests/s |")
    print("|---|---|")
    print(f"| raw confluent-kafka produce (pre-encoded) | {raw:,.0f} |")
    print(f"| ingest HTTP: parse + validate + encode + publish + ack | {via_ingest:,.0f} |")
    print(f"| ratio ingest / raw | {via_ingest / raw:.2f} |")


if __name__ == "__main__":
    main()
