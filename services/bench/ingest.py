"""`kbatch bench ingest`: validated-and-published requests/s through ingest against raw
confluent-kafka produce (the anchor).

Both paths publish the same records (same bytes, partitions, acks=all, idempotence,
lz4, linger 5 ms) to a fresh requests topic on the same broker. Prints JSON.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import typer
from confluent_kafka import Producer

from services.bench.measure import OutOption, bench_broker, emit, run_facts
from services.codec import REQUEST, codec
from services.harness.kafka import unique_topics
from services.harness.pipeline import registered
from services.harness.ports import free_port
from services.harness.processes import ServiceProcess
from services.ingest.admission.validation import Limits, RequestContext, parse_line
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
        if not isinstance(record, dict):
            raise RuntimeError(f"bench line {number} rejected: {record}")
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
    _flushed(producer)
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
    _flushed(producer)
    return len(encoded) / (time.perf_counter() - started)


def _flushed(producer: Producer) -> None:
    if producer.flush(60) != 0:
        raise RuntimeError("raw produce: records still unacknowledged after 60 s")


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
        if response.status_code != 200 or response.json()["accepted"] != len(lines):
            raise RuntimeError(f"ingest answered {response.status_code}: {response.text}")
    finally:
        service.terminate()
    return len(lines) / elapsed


def measure(out: Path, n: int) -> dict[str, Any]:
    lines = batch_lines(n)
    with bench_broker() as bootstrap:
        topics = unique_topics(bootstrap)
        registered(bootstrap, topics, ["kbatch-sim"])
        raw = raw_rate(bootstrap, topics.requests_of("kbatch-sim"), lines)
        via_ingest = ingest_rate(
            bootstrap, unique_topics(bootstrap).prefix, lines, out / "ingest.log"
        )
    return {
        **run_facts(),
        "requests": n,
        "anchor": "raw confluent-kafka produce of the same pre-encoded records",
        "anchor_requests_per_s": round(raw, 1),
        "ingest": "ingest over HTTP: parse + validate + encode + publish + ack",
        "ingest_requests_per_s": round(via_ingest, 1),
        "ratio": round(via_ingest / raw, 3),
    }


def main(
    requests: int = typer.Argument(50_000, help="chat lines published each way"),
    out: Path = OutOption,
) -> None:
    """Ingest's validated-and-published rate against raw confluent-kafka produce; JSON."""
    out.mkdir(parents=True, exist_ok=True)
    emit(measure(out, requests), out / "ingest.json")


if __name__ == "__main__":
    typer.run(main)
