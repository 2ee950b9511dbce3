"""`kbatch demo`: broker, topics, ingest and two simulated workers; a sample job end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient

from services.kafka import local_broker
from services.kafka.topics import ensure_topics, topic_catalog
from services.settings import TopicSettings

KBATCH = str(Path(sys.executable).with_name("kbatch"))


def _lines(priority: str, count: int) -> bytes:
    return b"".join(
        json.dumps(
            {
                "custom_id": f"{priority}-{i}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {
                    "model": "kbatch-sim",
                    "messages": [{"role": "user", "content": f"Rate candidate {i} ({priority})"}],
                    "max_tokens": 16,
                },
            }
        ).encode()
        + b"\n"
        for i in range(count)
    )


def _count_results(bootstrap: str, topic: str, partitions: int) -> int:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "kbatch-demo-count"})
    total = 0
    for p in range(partitions):
        low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
        total += high - low
    consumer.close()
    return total


def run_demo(per_priority: int = 1500) -> None:
    print("ENGINE: simulated (no GPU here) - every output is labelled [simulated]", flush=True)
    layout = local_broker.BrokerLayout(
        Path(".kbatch/demo-kafka").resolve(), port=19092, controller_port=19093
    )
    bootstrap = local_broker.up(layout)
    topics = TopicSettings(prefix=f"demo{int(time.time())}")
    ensure_topics(AdminClient({"bootstrap.servers": bootstrap}), topic_catalog(topics))
    env = {
        **os.environ,
        "KBATCH_BOOTSTRAP_SERVERS": bootstrap,
        "KBATCH_TOPICS__PREFIX": topics.prefix,
        "KBATCH_LOG_LEVEL": "WARNING",
        "KBATCH_INGEST__HTTP_PORT": "18080",
    }
    procs = [subprocess.Popen([KBATCH, "ingest"], env=env)]
    for name, parts, port in (("worker-a", "0-7", "18091"), ("worker-b", "8-15", "18092")):
        procs.append(
            subprocess.Popen(
                [KBATCH, "inference"],
                env={
                    **env,
                    "KBATCH_INFERENCE__ENGINE": "simulated",
                    "KBATCH_INFERENCE__WORKER_ID": name,
                    "KBATCH_INFERENCE__PARTITIONS": parts,
                    "KBATCH_INFERENCE__HTTP_PORT": port,
                },
            )
        )
    try:
        for _ in range(100):
            try:
                if httpx.get("http://127.0.0.1:18080/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.3)
        started = time.monotonic()
        for priority in ("high", "low"):
            reply = httpx.post(
                f"http://127.0.0.1:18080/v1/jobs/demo/requests?priority={priority}",
                content=_lines(priority, per_priority),
                timeout=120,
            )
            print(f"{priority}: {reply.json()['accepted']} accepted", flush=True)
        expected = 2 * per_priority
        done = 0
        while done < expected and time.monotonic() - started < 150:
            time.sleep(1)
            done = _count_results(bootstrap, topics.results, topics.results_partitions)
            print(f"results: {done}/{expected}", flush=True)
        elapsed = time.monotonic() - started
        print(
            f"done: {done} results in {elapsed:.1f}s ({done / elapsed:.0f} requests/s), "
            f"topic {topics.results}",
            flush=True,
        )
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(60)
        local_broker.down(layout)
