"""Prometheus metrics of the scheduler."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

WORKERS = Gauge("kbatch_scheduler_workers", "Live workers", ["pool", "health"])
# Models are operator-registered, a bounded set: a label, like the lane.
PARTITIONS_ASSIGNED = Gauge(
    "kbatch_scheduler_partitions_assigned",
    "Request partitions with an owner",
    ["model", "lane"],
)
PARTITIONS_WAITING = Gauge(
    "kbatch_scheduler_partitions_waiting",
    "Request partitions waiting for capacity or for a worker serving their model",
    ["model", "lane"],
)
BACKLOG = Gauge("kbatch_scheduler_backlog_requests", "Requests not yet consumed", ["model", "lane"])
WORKERS_SERVING = Gauge(
    "kbatch_scheduler_model_workers",
    "Live, eligible workers serving each registered model",
    ["model"],
)
GENERATION = Gauge("kbatch_scheduler_assignment_generation", "Latest published generation")
MOVES = Counter("kbatch_scheduler_partition_moves_total", "Partitions moved between workers")
PASSES = Counter("kbatch_scheduler_assignment_passes_total", "Assignment passes", ["outcome"])
WORKERS_LOST = Counter("kbatch_scheduler_workers_lost_total", "Workers declared gone", ["reason"])
FAILOVER_SECONDS = Histogram(
    "kbatch_scheduler_failover_seconds",
    "From a worker's last heartbeat to its partitions being owned by another worker",
    buckets=(0.5, 1, 2, 3, 5, 7.5, 10, 15, 20, 30, 60, 120),
)
JOB_OUTCOMES = Counter(
    "kbatch_scheduler_job_outcomes_total", "Outcomes counted into job progress", ["outcome"]
)
PROGRESS_CHECKPOINTS = Counter(
    "kbatch_scheduler_progress_checkpoints_total", "Job progress checkpoints saved"
)
UNDECODABLE = Counter(
    "kbatch_scheduler_undecodable_records_total",
    "Records the scheduler could not decode",
    ["topic"],
)

# Known, bounded label values start at zero, so rates exist before the first event.
for _outcome in ("ok", "failed"):
    PASSES.labels(_outcome)
for _outcome in ("completed", "failed", "dead_letter"):
    JOB_OUTCOMES.labels(_outcome)
for _reason in ("timeout", "leaving"):
    WORKERS_LOST.labels(_reason)
