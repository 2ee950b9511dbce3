"""Ingest settings: `KBATCH_INGEST__*` plus the shared `KBATCH_*` options."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from services.settings import CommonSettings


class IngestOptions(BaseModel):
    """Limits and behaviour of the ingest service."""

    model_config = ConfigDict(frozen=True)

    http_host: str = Field("127.0.0.1", description="address the HTTP server binds")
    http_port: int = Field(8080, description="HTTP port")
    served_models: tuple[str, ...] = Field(
        ("kbatch-sim",),
        description="models always admitted (JSON list); models live workers declare are "
        "added from the scheduler's /workers when scheduler_url is set",
    )
    models_refresh_s: float = Field(
        2.0, gt=0, description="how often the workers' served models are read"
    )
    max_lines_per_job: int = Field(
        500_000, ge=1, description="lines accepted per job (their custom_ids are held in memory)"
    )
    max_line_bytes: int = Field(1_000_000, ge=64, description="bytes per request line")
    max_max_tokens: int = Field(32_768, ge=1, description="largest max_tokens a line may ask")
    max_uploads_in_flight: int = Field(16, ge=1, description="concurrent uploads before 429")
    lane_backlog_limit: int = Field(
        200_000, ge=1, description="unconsumed requests per lane before 429"
    )
    producer_queue_limit: int = Field(
        100_000, ge=1, description="records in the producer's local queue before 429"
    )
    retry_after_s: int = Field(5, ge=1, description="Retry-After seconds on 429")
    backlog_refresh_s: float = Field(0.5, gt=0, description="how often the backlog is measured")
    chunk_lines: int = Field(500, ge=1, description="lines admitted and published together")
    max_rejections_listed: int = Field(1_000, ge=1, description="rejections listed per response")
    tracked_jobs: int = Field(
        1_000, ge=1, description="jobs whose custom_ids are remembered for duplicate checks"
    )
    default_tenant: str = Field("default", description="tenant when the request names none")
    tenant_tokens: dict[str, SecretStr] = Field(
        default_factory=dict,
        description='JSON {"tenant": "token"}: when set, every API call needs a bearer token '
        "and the token names the tenant (secrets never logged)",
    )
    file_dir: str = Field(
        ".kbatch/files",
        description="file store: Batch API inputs and outputs (shared with the collector)",
    )
    scheduler_url: str | None = Field(
        None, description="scheduler web address for live batch counts; unset: the collector's"
    )
    collector: bool = Field(True, description="run the results collector inside ingest")


class IngestSettings(CommonSettings):
    """Everything the ingest process reads from its environment."""

    ingest: IngestOptions = Field(default_factory=IngestOptions)
