"""Every dashboard panel and alert rule, with its PromQL, in one place.

`python -m services.observability.render` writes them out as Grafana dashboard JSON
(`deploy/grafana/dashboards/`) and Prometheus rules (`deploy/prometheus/alerts.yml`);
tests check the files are current, that every metric they name is exported by a
service, and that a real Prometheus parses and answers every expression.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Panel:
    title: str
    exprs: tuple[str, ...]
    unit: str = "short"
    legend: str = "{{instance}}"


@dataclass(frozen=True)
class Dashboard:
    uid: str
    title: str
    panels: tuple[Panel, ...]
    # A Grafana variable over this label's values: the panels repeat as a row per value,
    # their queries selecting it as `$<label>` (e.g. a row per model).
    repeat_by: str | None = None
    repeat_values: str = ""  # the PromQL series whose label values the variable lists


MODEL = '{model=~"$model"}'


@dataclass(frozen=True)
class Alert:
    name: str
    expr: str
    for_: str
    severity: str
    summary: str
    signal: str  # the quantity the rule compares: must return data while kbatch runs
    labels: dict[str, str] = field(default_factory=dict)


def _rate(metric: str, by: str = "", window: str = "1m") -> str:
    grouping = f" by ({by})" if by else ""
    return f"sum{grouping}(rate({metric}[{window}]))"


def _p(q: float, histogram: str, by: str = "") -> str:
    grouping = f", {by}" if by else ""
    return f"histogram_quantile({q}, sum by (le{grouping}) (rate({histogram}_bucket[1m])))"


DASHBOARDS: tuple[Dashboard, ...] = (
    Dashboard(
        "kbatch-overview",
        "kbatch / overview",
        (
            Panel(
                "Requests in (accepted by ingest) /s",
                (_rate("kbatch_ingest_lines_accepted_total", "lane"),),
                "reqps",
                "{{lane}}",
            ),
            Panel(
                "Results out /s",
                (_rate("kbatch_inference_results_total", "engine"),),
                "reqps",
                "{{engine}}",
            ),
            Panel(
                "Backlog by lane",
                ("sum by (lane) (kbatch_scheduler_backlog_requests)",),
                "short",
                "{{lane}}",
            ),
            Panel(
                "Dead letters /s by stage",
                (_rate("kbatch_inference_dead_letters_total", "stage"),),
                "reqps",
                "{{stage}}",
            ),
            Panel(
                "Job outcomes counted /s",
                (_rate("kbatch_scheduler_job_outcomes_total", "outcome"),),
                "reqps",
                "{{outcome}}",
            ),
        ),
    ),
    Dashboard(
        "kbatch-inference",
        "kbatch / inference workers",
        (
            Panel("Engine batch size", ("kbatch_inference_batch_size",)),
            Panel(
                "In flight, and held for their lane's share",
                ("kbatch_inference_in_flight_requests", "kbatch_inference_held_requests"),
            ),
            Panel(
                "Output tokens /s",
                ("sum by (instance) (rate(kbatch_inference_output_tokens_total[1m]))",),
                "short",
            ),
            Panel(
                "Request latency p50 / p95",
                (
                    _p(0.5, "kbatch_inference_request_seconds", "instance"),
                    _p(0.95, "kbatch_inference_request_seconds", "instance"),
                ),
                "s",
            ),
            Panel(
                "Queue wait p95",
                (_p(0.95, "kbatch_inference_queue_wait_seconds", "instance"),),
                "s",
            ),
            Panel(
                "Transaction commits /s",
                ("sum by (instance) (rate(kbatch_inference_transaction_commits_total[1m]))",),
                "ops",
            ),
            Panel(
                "Transaction commit p95",
                (_p(0.95, "kbatch_inference_transaction_commit_seconds", "instance"),),
                "s",
            ),
            Panel("GPU healthy", ("kbatch_inference_gpu_healthy",)),
            Panel(
                "GPU memory used",
                ("kbatch_gpu_memory_used_bytes",),
                "bytes",
                "{{instance}} gpu {{gpu}}",
            ),
            Panel(
                "GPU temperature",
                ("kbatch_gpu_temperature_celsius",),
                "celsius",
                "{{instance}} gpu {{gpu}}",
            ),
            Panel(
                "GPU utilization",
                ("kbatch_gpu_utilization_ratio",),
                "percentunit",
                "{{instance}} gpu {{gpu}}",
            ),
            Panel(
                "Consumer lag (librdkafka)",
                ("sum by (instance) (kbatch_kafka_consumer_lag_messages)",),
            ),
        ),
    ),
    Dashboard(
        "kbatch-scheduler",
        "kbatch / scheduler",
        (
            Panel(
                "Workers by pool and health",
                ("kbatch_scheduler_workers",),
                "short",
                "{{pool}} {{health}}",
            ),
            Panel(
                "Partitions assigned by lane",
                ("sum by (lane) (kbatch_scheduler_partitions_assigned)",),
                "short",
                "{{lane}}",
            ),
            Panel(
                "Partitions waiting by lane",
                ("sum by (lane) (kbatch_scheduler_partitions_waiting)",),
                "short",
                "{{lane}}",
            ),
            Panel("Assignment generation", ("kbatch_scheduler_assignment_generation",)),
            Panel(
                "Failover time p95", (_p(0.95, "kbatch_scheduler_failover_seconds"),), "s", "p95"
            ),
            Panel(
                "Assignment passes /s",
                (_rate("kbatch_scheduler_assignment_passes_total", "outcome"),),
                "ops",
                "{{outcome}}",
            ),
        ),
    ),
    Dashboard(
        "kbatch-ingest",
        "kbatch / ingest",
        (
            Panel(
                "Accepted lines /s by lane",
                (_rate("kbatch_ingest_lines_accepted_total", "lane"),),
                "reqps",
                "{{lane}}",
            ),
            Panel(
                "Rejected lines /s by reason",
                (_rate("kbatch_ingest_lines_rejected_total", "reason"),),
                "reqps",
                "{{reason}}",
            ),
            Panel(
                "429 refusals /s by cause",
                (_rate("kbatch_ingest_backpressure_refusals_total", "cause"),),
                "reqps",
                "{{cause}}",
            ),
            Panel("Publish latency p95", (_p(0.95, "kbatch_ingest_publish_seconds"),), "s", "p95"),
            Panel(
                "Producer queue (librdkafka)",
                ("kbatch_kafka_client_queue_messages",),
                "short",
                "{{instance}} {{client}}",
            ),
        ),
    ),
    Dashboard(
        "kbatch-models",
        "kbatch / models",
        (
            Panel(
                "Backlog by lane",
                (f"sum by (model, lane) (kbatch_scheduler_backlog_requests{MODEL})",),
                "short",
                "{{lane}}",
            ),
            Panel(
                "Results /s",
                (f"sum by (model) (rate(kbatch_inference_results_total{MODEL}[1m]))",),
                "reqps",
                "{{model}}",
            ),
            Panel(
                "Workers serving",
                (f"sum by (model) (kbatch_scheduler_model_workers{MODEL})",),
                "short",
                "{{model}}",
            ),
            Panel(
                "Partitions waiting for capacity or a worker, by lane",
                (f"sum by (model, lane) (kbatch_scheduler_partitions_waiting{MODEL})",),
                "short",
                "{{lane}}",
            ),
            Panel(
                "Prompt tokens from the prefix cache (hit ratio)",
                (
                    'sum by (model) (rate(kbatch_inference_prompt_tokens_total{model=~"$model",'
                    'source="cache"}[5m])) / sum by (model) (rate(kbatch_inference_prompt_tokens'
                    '_total{model=~"$model",source=~"cache|evaluated"}[5m]))',
                ),
                "percentunit",
                "{{model}}",
            ),
            Panel(
                "Prompt tokens /s by source",
                (
                    "sum by (model, source) "
                    f"(rate(kbatch_inference_prompt_tokens_total{MODEL}[1m]))",
                ),
                "short",
                "{{source}}",
            ),
        ),
        repeat_by="model",
        repeat_values="kbatch_scheduler_model_workers",
    ),
)

ALERTS: tuple[Alert, ...] = (
    Alert(
        "KbatchWorkerDown",
        'up{job="kbatch-inference"} == 0',
        "1m",
        "page",
        "An inference worker is not scraped",
        'up{job="kbatch-inference"}',
    ),
    Alert(
        "KbatchBacklogGrowing",
        "sum(deriv(kbatch_scheduler_backlog_requests[10m])) > 0"
        " and sum(kbatch_scheduler_backlog_requests) > 10000",
        "30m",
        "ticket",
        "The request backlog keeps growing",
        "sum(deriv(kbatch_scheduler_backlog_requests[10m]))",
    ),
    Alert(
        "KbatchDeadLetterRate",
        "sum(rate(kbatch_inference_dead_letters_total[5m])) > 1",
        "10m",
        "ticket",
        "More than one request a second goes to the DLQ",
        "sum(rate(kbatch_inference_dead_letters_total[5m]))",
    ),
    Alert(
        "KbatchGpuUnhealthy",
        "kbatch_inference_gpu_healthy == 0",
        "5m",
        "page",
        "A worker's GPU is over its health thresholds",
        "kbatch_inference_gpu_healthy",
    ),
    Alert(
        "KbatchNoResultsWithBacklog",
        "sum(rate(kbatch_inference_results_total[5m])) == 0"
        " and sum(kbatch_scheduler_backlog_requests) > 0",
        "10m",
        "page",
        "Requests wait but no results are produced",
        "sum(rate(kbatch_inference_results_total[5m]))",
    ),
    Alert(
        "KbatchTransactionAborts",
        "sum(rate(kbatch_inference_transaction_aborts_total[5m])) > 0.1",
        "10m",
        "ticket",
        "Inference transactions keep failing",
        "sum(rate(kbatch_inference_transaction_aborts_total[5m]))",
    ),
    Alert(
        "KbatchModelWithoutWorker",
        "sum by (model) (kbatch_scheduler_backlog_requests) > 0"
        " and on (model) kbatch_scheduler_model_workers == 0",
        "5m",
        "page",
        "A model has requests waiting and no live worker serving it",
        "kbatch_scheduler_model_workers",
    ),
    Alert(
        "KbatchMisroutedRequests",
        "sum(increase(kbatch_inference_misrouted_requests_total[10m])) > 0",
        "0m",
        "ticket",
        "A worker received requests for a model it does not serve (dead-lettered)",
        "sum(kbatch_inference_misrouted_requests_total)",
    ),
    Alert(
        "KbatchPartitionsWaiting",
        "sum(kbatch_scheduler_partitions_waiting) > 0",
        "30m",
        "ticket",
        "Request partitions wait for capacity",
        "sum(kbatch_scheduler_partitions_waiting)",
    ),
)


def _panel_exprs() -> list[str]:
    """Panel queries as Prometheus gets them: a repeated row's variable selects all."""
    return [
        e.replace(f"${d.repeat_by}", ".+") if d.repeat_by else e
        for d in DASHBOARDS
        for p in d.panels
        for e in p.exprs
    ]


def all_exprs() -> list[str]:
    """Every expression a dashboard draws or a rule evaluates."""
    return _panel_exprs() + [a.expr for a in ALERTS]


def data_exprs() -> list[str]:
    """The expressions that must return data while kbatch runs: every panel and every
    rule's signal (a rule's condition is rightly empty while all is well)."""
    return _panel_exprs() + [a.signal for a in ALERTS]
