"""The model registry: which models this deployment knows, on a compacted topic.

A model is known when an operator configures it (ingest's `KBATCH_INGEST__SERVED_MODELS`,
`kbatch models register`) or a worker declares it at start. Registering creates the
model's requests topic first and writes the registry record after, so whoever reads
the record can publish at once. Every service follows the topic: the set survives
restarts of every service, and a model registered at runtime reaches ingest and the
scheduler without a restart. Nothing is ever unregistered by a worker leaving: a known
model with no live worker is a model whose requests wait.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient

from services.errors import DeliveryError
from services.inference.following import TopicFollower
from services.kafka.topics import ensure_topics, model_topic_spec
from services.logs import get_logger
from services.settings import TopicSettings

log = get_logger("models.registry")


@dataclass(frozen=True)
class ModelEntry:
    """One registered model: its id, its requests topic, who registered it last."""

    model: str
    topic: str
    registered_by: str
    registered_at_ms: int

    def encode(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def decode(cls, value: bytes) -> ModelEntry:
        raw = json.loads(value)
        return cls(
            str(raw["model"]),
            str(raw["topic"]),
            str(raw["registered_by"]),
            int(raw["registered_at_ms"]),
        )


def register_models(
    kafka_config: dict[str, Any],
    topics: TopicSettings,
    models: Iterable[str],
    registered_by: str,
    timeout_s: float = 30,
) -> list[ModelEntry]:
    """Create each model's requests topic, then record the model; idempotent (a model
    registered again keeps its topic; its record is rewritten with the same topic)."""
    layout = topics.request_layout()
    wanted = sorted(set(models))
    if not wanted:
        return []
    admin = AdminClient(kafka_config)
    ensure_topics(
        admin, [model_topic_spec(topics, m) for m in wanted], topics.replication_factor, timeout_s
    )
    now_ms = int(time.time() * 1000)
    entries = [ModelEntry(m, layout.topic(m), registered_by, now_ms) for m in wanted]
    # Records are whole values keyed by model: a retried duplicate changes nothing, so
    # no idempotent producer (its producer-id round trip delayed every service's start).
    producer = Producer({**kafka_config, "acks": "all"})
    failures: list[str] = []

    def on_delivery(err: Any, _msg: Any) -> None:
        if err is not None:
            failures.append(str(err))

    for entry in entries:
        producer.produce(
            topics.models, entry.encode(), key=entry.model.encode(), on_delivery=on_delivery
        )
    left = producer.flush(timeout_s)
    if left or failures:
        raise DeliveryError(f"model registry not written: {failures or f'{left} undelivered'}")
    log.info("models registered", models=wanted, by=registered_by)
    return entries


class ModelRegistry:
    """The registered models, followed from the compacted topic on a thread."""

    def __init__(
        self,
        kafka_config: dict[str, Any],
        topics: TopicSettings,
        on_change: Callable[[frozenset[str]], None] = lambda _: None,
    ) -> None:
        self._entries: dict[str, ModelEntry] = {}
        self._lock = threading.Lock()
        self._on_change = on_change
        self._follower = TopicFollower(kafka_config, topics.models, self._on_record)

    def start(self) -> None:
        self._follower.start()

    def stop(self) -> None:
        self._follower.stop()

    def __enter__(self) -> ModelRegistry:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def names(self) -> frozenset[str]:
        with self._lock:
            return frozenset(self._entries)

    def entries(self) -> list[ModelEntry]:
        with self._lock:
            return sorted(self._entries.values(), key=lambda e: e.model)

    def wait_for(self, models: Iterable[str], timeout_s: float) -> bool:
        """Whether every one of `models` is known within `timeout_s` (a service that
        registered them itself waits for its own records before serving)."""
        deadline = time.monotonic() + timeout_s
        wanted = set(models)
        while not wanted <= self.names():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    def _on_record(self, key: bytes, value: bytes | None) -> None:
        model = key.decode()
        with self._lock:
            before = frozenset(self._entries)
            if value is None:
                self._entries.pop(model, None)
            else:
                try:
                    self._entries[model] = ModelEntry.decode(value)
                except (ValueError, KeyError, TypeError) as exc:
                    log.error("undecodable registry record ignored", model=model, error=str(exc))
                    return
            after = frozenset(self._entries)
        if after != before:
            log.info("models known", models=sorted(after))
            self._on_change(after)
