"""Settings shared by every service: Kafka connection, topic names, logging.

Each service has one settings class deriving from `CommonSettings`; its own
options sit in a nested model, so the environment reads e.g.
`KBATCH_BOOTSTRAP_SERVERS`, `KBATCH_TOPICS__PREFIX`, `KBATCH_INGEST__HTTP_PORT`.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.codec import ResultsFormat
from services.lanes import LaneLayout
from services.routing import RequestLayout


class KafkaClientSettings(BaseModel):
    """Security and pass-through options applied to every Kafka client."""

    model_config = ConfigDict(frozen=True)

    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="librdkafka security.protocol"
    )
    sasl_mechanism: str | None = Field(None, description="e.g. PLAIN, SCRAM-SHA-512")
    sasl_username: str | None = Field(None, description="SASL user name")
    sasl_password: SecretStr | None = Field(None, description="SASL password (never logged)")
    ssl_ca_location: str | None = Field(None, description="CA bundle for TLS")
    extra: dict[str, str] = Field(
        default_factory=dict, description="extra librdkafka properties, passed through as given"
    )


class TopicSettings(BaseModel):
    """Topic names (from one prefix), partition counts and the results format."""

    model_config = ConfigDict(frozen=True)

    prefix: str = Field("kbatch", description="every topic name starts with this")
    high_partitions: int = Field(4, ge=1, description="requests partitions in the high lane")
    normal_partitions: int = Field(8, ge=1, description="requests partitions in the normal lane")
    low_partitions: int = Field(4, ge=1, description="requests partitions in the low lane")
    results_partitions: int = Field(8, ge=1, description="results topic partitions")
    dlq_partitions: int = Field(4, ge=1, description="dead-letter topic partitions")
    submissions_partitions: int = Field(
        4, ge=1, description="partitions of the topic Kafka producers submit batch lines to"
    )
    replication_factor: int = Field(1, ge=1, description="replicas for every topic")
    results_format: ResultsFormat = Field(
        "avro",
        description="how workers write results: avro (single-object encoding) or json "
        "(plain JSON objects, for consumers without Avro); readers take both",
    )

    @property
    def results(self) -> str:
        return f"{self.prefix}.results"

    @property
    def dlq(self) -> str:
        return f"{self.prefix}.dlq"

    @property
    def heartbeats(self) -> str:
        return f"{self.prefix}.heartbeats"

    @property
    def assignments(self) -> str:
        return f"{self.prefix}.assignments"

    @property
    def jobs(self) -> str:
        return f"{self.prefix}.jobs"

    @property
    def dlq_replayed(self) -> str:
        return f"{self.prefix}.dlq-replayed"

    @property
    def batches(self) -> str:
        return f"{self.prefix}.batches"

    @property
    def job_progress(self) -> str:
        return f"{self.prefix}.job-progress"

    @property
    def submissions(self) -> str:
        return f"{self.prefix}.submissions"

    @property
    def rejections(self) -> str:
        return f"{self.prefix}.rejections"

    @property
    def models(self) -> str:
        return f"{self.prefix}.models"

    def lane_layout(self) -> LaneLayout:
        return LaneLayout(self.high_partitions, self.normal_partitions, self.low_partitions)

    def request_layout(self) -> RequestLayout:
        """The requests topics: one per model, each with the lanes' partitions."""
        return RequestLayout(self.prefix, self.lane_layout())

    def requests_of(self, model: str) -> str:
        """The requests topic of one model."""
        return self.request_layout().topic(model)


class CommonSettings(BaseSettings):
    """Options every kbatch process reads from `KBATCH_*` environment variables."""

    model_config = SettingsConfigDict(
        env_prefix="KBATCH_", env_nested_delimiter="__", frozen=True, extra="ignore"
    )

    bootstrap_servers: str = Field("127.0.0.1:9092", description="Kafka bootstrap servers")
    kafka: KafkaClientSettings = Field(default_factory=KafkaClientSettings)
    topics: TopicSettings = Field(default_factory=TopicSettings)
    inference_group: str = Field(
        "kbatch-inference",
        description="consumer group whose committed offsets mark requests as consumed",
    )
    log_level: str = Field("INFO", description="log level")
    log_format: Literal["json", "console"] = Field("json", description="log rendering")
    ops_token: SecretStr | None = Field(
        None,
        description="bearer token the operator endpoints require: /metrics of every "
        "service and the scheduler's /workers, /assignments, /jobs (they show job ids and "
        "tenants); /healthz stays open; unset or empty: open (never logged)",
    )

    @field_validator("ops_token")
    @classmethod
    def _empty_ops_token_is_none(cls, token: SecretStr | None) -> SecretStr | None:
        # `KBATCH_OPS_TOKEN=` (e.g. compose's `${KBATCH_OPS_TOKEN:-}`) means no token, not
        # a token that an empty `Bearer ` would match.
        return token if token is not None and token.get_secret_value() else None

    def ops_headers(self) -> dict[str, str]:
        """The headers a caller of the operator endpoints sends: the ops token, if any."""
        if self.ops_token is None:
            return {}
        return {"Authorization": f"Bearer {self.ops_token.get_secret_value()}"}

    def kafka_config(self, **overrides: Any) -> dict[str, Any]:
        """The librdkafka configuration for one client, security options included."""
        config: dict[str, Any] = {
            "bootstrap.servers": self.bootstrap_servers,
            "security.protocol": self.kafka.security_protocol,
        }
        if self.kafka.sasl_mechanism:
            config["sasl.mechanism"] = self.kafka.sasl_mechanism
        if self.kafka.sasl_username:
            config["sasl.username"] = self.kafka.sasl_username
        if self.kafka.sasl_password:
            config["sasl.password"] = self.kafka.sasl_password.get_secret_value()
        if self.kafka.ssl_ca_location:
            config["ssl.ca.location"] = self.kafka.ssl_ca_location
        config.update(self.kafka.extra)
        config.update(overrides)
        return config
