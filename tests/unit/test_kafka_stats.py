"""librdkafka statistics to gauges (pure)."""

from __future__ import annotations

from services.kafka.stats import BROKER_RTT, CONSUMER_LAG, QUEUE, client_gauges


def test_queue_rtt_and_lag_from_a_statistics_document() -> None:
    stats = {
        "msg_cnt": 12,
        "brokers": {
            "127.0.0.1:9092/1": {"nodeid": 1, "rtt": {"avg": 2500}},
            "GroupCoordinator": {"nodeid": -1, "rtt": {"avg": 9}},
        },
        "topics": {
            "t.requests": {
                "partitions": {
                    "0": {"consumer_lag": 7},
                    "1": {"consumer_lag": -1, "ls_offset": 50, "app_offset": 42},
                    "2": {"consumer_lag": -1, "ls_offset": -1, "hi_offset": -1, "app_offset": -1},
                    "-1": {"consumer_lag": 0},
                }
            }
        },
    }
    samples = {(g._name, labels): value for g, labels, value in client_gauges("c", stats)}
    assert samples == {
        (QUEUE._name, ("c",)): 12.0,
        (BROKER_RTT._name, ("c", "127.0.0.1:9092/1")): 0.0025,
        (CONSUMER_LAG._name, ("c", "t.requests", "0")): 7.0,
        (CONSUMER_LAG._name, ("c", "t.requests", "1")): 8.0,
    }
