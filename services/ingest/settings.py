"""Ingest settings: `KBATCH_INGEST__*` plus the shared `KBATCH_*` options."""

from __future__ import annotations

from typing import Self

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator
from pydantic_settings import SettingsConfigDict

from services.prefix import DEFAULT_COMPLETION_PREFIX_CHARS, DEFAULT_LOAD_FACTOR
from services.settings import CommonSettings


class IngestOptions(BaseModel):
    """Limits and behaviour of the ingest service."""

    model_config = ConfigDict(frozen=True, hide_input_in_errors=True)

    http_host: str = Field("127.0.0.1", description="address the HTTP server binds")
    http_port: int = Field(8080, description="HTTP port")
    served_models: tuple[str, ...] = Field(
        ("kbatch-sim",),
        description="models ingest registers at start (JSON list): admitted whether or not a "
        "worker serves them yet (their requests wait in Kafka); workers register what they "
        "serve themselves, and `kbatch model register` adds more",
    )
    models_refresh_s: float = Field(
        2.0, gt=0, description="how often GET /v1/models's live workers are read from the scheduler"
    )
    max_lines_per_job: int = Field(
        500_000, ge=1, description="lines accepted per job (their custom_ids are held in memory)"
    )
    max_line_bytes: int = Field(1_000_000, ge=64, description="bytes per request line")
    max_max_tokens: int = Field(32_768, ge=1, description="largest max_tokens a line may ask")
    max_uploads_in_flight: int = Field(16, ge=1, description="concurrent uploads before 429")
    lane_backlog_limit: int = Field(
        200_000, ge=1, description="unconsumed requests per cell (a model's lane) before 429"
    )
    producer_queue_limit: int = Field(
        100_000, ge=1, description="records in the producer's local queue before 429"
    )
    retry_after_s: int = Field(5, ge=1, description="Retry-After seconds on 429")
    backlog_refresh_s: float = Field(0.5, gt=0, description="how often the backlog is measured")
    chunk_lines: int = Field(500, ge=1, description="lines admitted and published together")
    prefix_affinity: bool = Field(
        True,
        description="requests sharing a prompt prefix (a chat's leading system and developer "
        "messages, a completion's first characters) wait in the same partition of their lane, "
        "so they reach the same engine cache; false: spread by request id",
    )
    prefix_load_factor: float = Field(
        DEFAULT_LOAD_FACTOR,
        ge=0,
        description="a prefix keeps its partition until that holds (1 + this) times its "
        "lane's mean backlog; then its requests spill to the next partition at the mean",
    )
    prefix_completion_chars: int = Field(
        DEFAULT_COMPLETION_PREFIX_CHARS,
        ge=1,
        description="characters of a completion prompt that make its prefix key",
    )
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
    admin_tenants: tuple[str, ...] = Field(
        (),
        description="JSON list of tenants in tenant_tokens whose tokens are operators': "
        "they read, list and cancel every tenant's files, batches and jobs",
    )
    max_queued_requests_per_tenant: int = Field(
        0,
        ge=0,
        description="unfinished requests (accepted, not yet completed, failed or cancelled) "
        "a tenant may have across its batches and jobs before 429; a batch counts its whole "
        "input file when it is created; 0: no limit (lane_backlog_limit still bounds "
        "everyone's together)",
    )
    max_files_per_tenant: int = Field(
        10_000,
        ge=0,
        description="input files (purpose batch, unexpired) a tenant may store before an "
        "upload is refused with 429; admins too; 0: no limit",
    )
    max_file_bytes_per_tenant: int = Field(
        100 * 1024**3,
        ge=0,
        description="bytes of input files a tenant may store before an upload is refused "
        "with 429 (100 GiB); admins too; 0: no limit",
    )
    file_dir: str = Field(
        ".kbatch/files",
        description="file store: Batch API inputs and outputs (shared with the collector)",
    )
    scheduler_url: str | None = Field(
        None, description="scheduler web address for live batch counts; unset: the collector's"
    )
    batch_refresh_s: float = Field(
        1.0, gt=0, description="how often every unfinished batch's state and counts advance"
    )
    collector: bool = Field(True, description="run the results collector inside ingest")
    submissions: bool = Field(
        True, description="consume batch lines Kafka producers write to the submissions topic"
    )

    @model_validator(mode="after")
    def _tokens_name_tenants(self) -> Self:
        secrets = [token.get_secret_value() for token in self.tenant_tokens.values()]
        if any(not secret.strip() for secret in secrets):
            raise ValueError("tenant_tokens: every token must be non-empty")
        if len(set(secrets)) != len(secrets):
            raise ValueError("tenant_tokens: two tenants share a token")
        unknown = sorted(set(self.admin_tenants) - set(self.tenant_tokens))
        if unknown:
            raise ValueError(f"admin_tenants {unknown} have no token in tenant_tokens")
        return self


class IngestSettings(CommonSettings):
    """Everything the ingest process reads from its environment."""

    # A refused setting must not echo the input: it holds the tenants' tokens.
    model_config = SettingsConfigDict(hide_input_in_errors=True)

    ingest: IngestOptions = Field(default_factory=IngestOptions)

    @model_validator(mode="after")
    def _ops_token_is_no_tenants(self) -> Self:
        # The ops token opens /metrics only; as a tenant's token it would open the API too.
        if self.ops_token is not None:
            ops = self.ops_token.get_secret_value()
            if any(ops == token.get_secret_value() for token in self.ingest.tenant_tokens.values()):
                raise ValueError("ops_token must not be one of ingest.tenant_tokens")
        return self
