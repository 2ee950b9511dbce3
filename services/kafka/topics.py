"""The topic catalog (pure) and its idempotent creation on a broker."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from services.errors import TopicMismatchError
from services.settings import TopicSettings

_DAY_MS = 24 * 3600 * 1000


@dataclass(frozen=True)
class TopicSpec:
    """What one topic must look like."""

    name: str
    partitions: int
    role: str
    config: dict[str, str] = field(default_factory=dict)


def topic_catalog(topics: TopicSettings) -> list[TopicSpec]:
    """Every topic kbatch uses, with partition counts and configs."""
    compacted = {"cleanup.policy": "compact", "min.compaction.lag.ms": "0"}
    return [
        TopicSpec(
            topics.results,
            topics.results_partitions,
            "results (exactly once)",
            {"retention.ms": str(14 * _DAY_MS)},
        ),
        TopicSpec(
            topics.dlq, topics.dlq_partitions, "dead letters", {"retention.ms": str(30 * _DAY_MS)}
        ),
        TopicSpec(
            topics.models, 1, "model registry: model id -> requests topic (compacted)", compacted
        ),
        TopicSpec(topics.heartbeats, 1, "worker heartbeats", {"retention.ms": str(3600 * 1000)}),
        TopicSpec(topics.assignments, 1, "partition assignments (compacted)", compacted),
        TopicSpec(topics.jobs, 1, "job records (compacted)", compacted),
        TopicSpec(topics.dlq_replayed, 1, "dead letters already replayed (compacted)", compacted),
        TopicSpec(topics.batches, 1, "Batch API objects, JSON (compacted)", compacted),
        TopicSpec(
            topics.job_progress,
            1,
            "job progress per source partition, JSON checkpoints (compacted)",
            compacted,
        ),
        TopicSpec(
            topics.submissions,
            topics.submissions_partitions,
            "batch lines from Kafka producers, JSON (headers: kbatch-job, -tenant, -priority)",
            {"retention.ms": str(7 * _DAY_MS)},
        ),
        TopicSpec(
            topics.rejections,
            topics.dlq_partitions,
            "submitted lines refused, with the reason, JSON",
            {"retention.ms": str(30 * _DAY_MS)},
        ),
    ]


def model_topic_spec(topics: TopicSettings, model: str) -> TopicSpec:
    """A model's requests topic: created when the model is registered."""
    layout = topics.request_layout()
    return TopicSpec(
        layout.topic(model),
        layout.partitions_per_model,
        f"requests for model {model}, partitions grouped into lanes high|normal|low",
        {"retention.ms": str(7 * _DAY_MS)},
    )


def ensure_topics(
    admin: AdminClient, specs: list[TopicSpec], replication_factor: int = 1, timeout_s: float = 30
) -> dict[str, str]:
    """Create missing topics; existing ones are checked. Returns name -> created|exists."""
    existing = admin.list_topics(timeout=timeout_s).topics
    outcome: dict[str, str] = {}
    missing: list[NewTopic] = []
    for spec in specs:
        if spec.name in existing:
            have = len(existing[spec.name].partitions)
            if have != spec.partitions:
                raise TopicMismatchError(
                    f"topic {spec.name} has {have} partitions, catalog says {spec.partitions}"
                )
            outcome[spec.name] = "exists"
        else:
            missing.append(
                NewTopic(spec.name, spec.partitions, replication_factor, config=spec.config)
            )
    if missing:
        for name, future in admin.create_topics(missing, request_timeout=timeout_s).items():
            try:
                future.result()
                outcome[name] = "created"
            except KafkaException as exc:
                # Another process created it between our listing and the create call.
                if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                    raise
                outcome[name] = "exists"
        _wait_for_leaders(admin, [t.topic for t in missing], timeout_s)
    return outcome


def _wait_for_leaders(admin: AdminClient, names: list[str], timeout_s: float) -> None:
    """New topics answer NOT_LEADER until every partition has a leader; wait for that."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        topics = admin.list_topics(timeout=timeout_s).topics
        if all(
            name in topics
            and topics[name].partitions
            and all(p.leader >= 0 for p in topics[name].partitions.values())
            for name in names
        ):
            return
        time.sleep(0.1)
    raise TimeoutError(f"topics {names} have no leaders after {timeout_s}s")


def describe_topics(
    admin: AdminClient, specs: list[TopicSpec], timeout_s: float = 30
) -> list[dict[str, object]]:
    """One row per catalog topic: name, role, partitions on the broker (or missing)."""
    existing = admin.list_topics(timeout=timeout_s).topics
    return [
        {
            "topic": spec.name,
            "role": spec.role,
            "partitions": len(existing[spec.name].partitions) if spec.name in existing else None,
            "expected_partitions": spec.partitions,
            "config": spec.config,
        }
        for spec in specs
    ]
