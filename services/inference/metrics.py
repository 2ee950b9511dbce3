"""Prometheus metrics of inference workers."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)

IN_FLIGHT = Gauge("kbatch_inference_in_flight_requests", "Requests handed to the engine")
HELD = Gauge(
    "kbatch_inference_held_requests",
    "Lower-lane requests taken and waiting for their lane's share while a higher lane is busy",
)
BATCH_SIZE = Gauge("kbatch_inference_batch_size", "Sequences the engine runs right now")
ENGINE_CONCURRENCY = Gauge(
    "kbatch_inference_engine_concurrency", "Sequences the engine may run together"
)
UNCOMMITTED = Gauge(
    "kbatch_inference_uncommitted_records", "Records consumed but not yet committed"
)
OWNED_PARTITIONS = Gauge("kbatch_inference_owned_partitions", "Request partitions owned")
CANCELLED = Counter(
    "kbatch_inference_cancelled_requests_total", "Requests of cancelled jobs recorded, not run"
)
# Models are operator-registered, a bounded set: a label, like the engine.
RESULTS = Counter("kbatch_inference_results_total", "Results committed", ["engine", "model"])
MISROUTED = Counter(
    "kbatch_inference_misrouted_requests_total",
    "Requests for a model this worker does not serve, dead-lettered (model_not_served); "
    "routing keeps this at 0",
    ["model"],
)
DEAD_LETTERS = Counter(
    "kbatch_inference_dead_letters_total", "Records sent to the DLQ", ["stage", "error_class"]
)
RETRIES = Counter("kbatch_inference_retries_total", "Engine retries after transient errors")
OOM_SHRINKS = Counter(
    "kbatch_inference_oom_shrinks_total", "Concurrency halvings after out-of-memory errors"
)
OUTPUT_TOKENS = Counter("kbatch_inference_output_tokens_total", "Completion tokens produced")
PROMPT_TOKENS = Counter(
    "kbatch_inference_prompt_tokens_total",
    "Prompt tokens processed, by where they came from: the engine's prefix cache, "
    "evaluated, or unreported (a remote server that does not say)",
    ["model", "source"],
)
REQUEST_SECONDS = Histogram(
    "kbatch_inference_request_seconds", "Engine time per request", buckets=_LATENCY_BUCKETS
)
QUEUE_WAIT_SECONDS = Histogram(
    "kbatch_inference_queue_wait_seconds",
    "Submission (ingest) to engine start",
    buckets=_LATENCY_BUCKETS,
)
COMMIT_SECONDS = Histogram(
    "kbatch_inference_transaction_commit_seconds",
    "Duration of one partition transaction",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
COMMITS = Counter("kbatch_inference_transaction_commits_total", "Transactions committed")
ABORTS = Counter(
    "kbatch_inference_transaction_aborts_total", "Transactions that failed, by cause", ["cause"]
)
GPU_HEALTHY = Gauge("kbatch_inference_gpu_healthy", "1 when every GPU is within thresholds")
GPU_MEMORY_USED = Gauge("kbatch_gpu_memory_used_bytes", "GPU memory in use", ["gpu"])
GPU_MEMORY_TOTAL = Gauge("kbatch_gpu_memory_total_bytes", "GPU memory size", ["gpu"])
GPU_TEMPERATURE = Gauge("kbatch_gpu_temperature_celsius", "GPU temperature", ["gpu"])
GPU_UTILIZATION = Gauge("kbatch_gpu_utilization_ratio", "GPU busy share (0..1)", ["gpu"])

# Known, bounded label values start at zero, so rates exist before the first event.
for _cause in ("fenced", "broker", "hung"):
    ABORTS.labels(_cause)
