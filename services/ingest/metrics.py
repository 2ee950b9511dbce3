"""Prometheus metrics of the ingest service."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

LINES_ACCEPTED = Counter(
    "kbatch_ingest_lines_accepted_total", "Request lines published and acknowledged", ["lane"]
)
LINES_REJECTED = Counter(
    "kbatch_ingest_lines_rejected_total", "Request lines refused, by reason", ["reason"]
)
BACKPRESSURE_REFUSALS = Counter(
    "kbatch_ingest_backpressure_refusals_total", "Uploads answered 429, by cause", ["cause"]
)
PUBLISH_SECONDS = Histogram(
    "kbatch_ingest_publish_seconds",
    "Time from handing a chunk to the producer to its acknowledgement",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
UPLOADS_IN_FLIGHT = Gauge("kbatch_ingest_uploads_in_flight", "Uploads being processed")
LANE_BACKLOG = Gauge(
    "kbatch_ingest_lane_backlog_requests",
    "Unconsumed requests per lane, as ingest sees it",
    ["lane"],
)
# Per tenant: the label is a tenant the token settings name, or "(other)" for every
# other tenant (see tenant_limits.tenant_label), so the label set stays bounded.
TENANT_QUEUED_REQUESTS = Gauge(
    "kbatch_ingest_tenant_queued_requests",
    "Requests accepted (or reserved) and not yet completed, failed or cancelled, per tenant",
    ["tenant"],
)
TENANT_STORED_FILES = Gauge(
    "kbatch_ingest_tenant_stored_files", "Input files stored, per tenant", ["tenant"]
)
TENANT_STORED_BYTES = Gauge(
    "kbatch_ingest_tenant_stored_bytes", "Bytes of input files stored, per tenant", ["tenant"]
)
TENANT_REFUSALS = Counter(
    "kbatch_ingest_tenant_refusals_total",
    "Requests answered 429 by a per-tenant limit, by tenant and limit",
    ["tenant", "limit"],
)

# Known, bounded label values start at zero, so rates exist before the first event.
for _cause in (
    "backlog",
    "producer_queue",
    "backlog_unknown",
    "uploads_in_flight",
    "tenant_queued_requests",
):
    BACKPRESSURE_REFUSALS.labels(_cause)
