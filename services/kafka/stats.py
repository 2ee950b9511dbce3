"""librdkafka statistics (`stats_cb`) as Prometheus gauges.

`statistics.interval.ms` makes librdkafka hand a JSON document to the callback;
`client_gauges` (pure) picks what operators look at, `stats_config` wires it in.
Labels stay bounded: the client's role, the broker, the topic and partition.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from prometheus_client import Gauge

QUEUE = Gauge(
    "kbatch_kafka_client_queue_messages", "Messages in the client's local queue", ["client"]
)
BROKER_RTT = Gauge(
    "kbatch_kafka_broker_rtt_seconds", "Average broker round-trip time", ["client", "broker"]
)
CONSUMER_LAG = Gauge(
    "kbatch_kafka_consumer_lag_messages",
    "Messages between the consumer's position and the partition end",
    ["client", "topic", "partition"],
)

Sample = tuple[Gauge, tuple[str, ...], float]


def client_gauges(role: str, stats: dict[str, Any]) -> list[Sample]:
    """(gauge, labels, value) for one statistics document (pure)."""
    samples: list[Sample] = [(QUEUE, (role,), float(stats.get("msg_cnt", 0)))]
    for name, broker in (stats.get("brokers") or {}).items():
        rtt = (broker.get("rtt") or {}).get("avg")
        if rtt and broker.get("nodeid", -1) >= 0:
            samples.append((BROKER_RTT, (role, name), rtt / 1_000_000))
    for topic, detail in (stats.get("topics") or {}).items():
        for partition, values in (detail.get("partitions") or {}).items():
            lag = _lag(values)
            if partition != "-1" and lag is not None:
                samples.append((CONSUMER_LAG, (role, topic, partition), float(lag)))
    return samples


def _lag(values: dict[str, Any]) -> int | None:
    """librdkafka's consumer_lag needs offsets committed by this consumer; kbatch commits
    through transactions, so fall back to the end minus the application's position."""
    lag = values.get("consumer_lag", -1)
    if lag is not None and lag >= 0:
        return int(lag)
    end = values.get("ls_offset", -1)
    end = end if end is not None and end >= 0 else values.get("hi_offset", -1)
    position = values.get("app_offset", -1)
    if end is None or position is None or end < 0 or position < 0:
        return None
    return max(0, int(end) - int(position))


def stats_callback(role: str) -> Callable[[str], None]:
    def on_stats(document: str) -> None:
        for gauge, labels, value in client_gauges(role, json.loads(document)):
            gauge.labels(*labels).set(value)

    return on_stats


def stats_config(role: str, interval_ms: int = 5000) -> dict[str, Any]:
    """Client settings that export `role`'s statistics every `interval_ms`."""
    return {"statistics.interval.ms": interval_ms, "stats_cb": stats_callback(role)}
