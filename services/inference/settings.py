"""Inference worker settings: `KBATCH_INFERENCE__*` plus the shared `KBATCH_*` options."""

from __future__ import annotations

import os
import socket
from pathlib import PurePath
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from services.errors import ConfigurationError
from services.settings import CommonSettings

# A one-sequence engine (llamacpp) with an in-flight cap of 2 had one request queued behind
# the one decoding: any event-loop hiccup longer than a decode left it idle (bench.engines:
# 108 requests/s at 2, 124 at 8).
MIN_DEFAULT_IN_FLIGHT = 8
# The uncommitted window must hold what the worker takes in while a commit round is in
# flight, or intake stops on every commit: bounded by 4x a narrow engine's in-flight cap,
# every few results waited for a transaction (llamacpp, cap 2: 0.16 of the binding's own
# rate in bench.engines), and a floor of 512 still held the message path to ~3,000
# requests/s (bench.pipeline, zero-cost engine; 10,000-12,000 with 4,096-16,384). Records
# here are small (a request and its result); a crash redoes at most this many.
MIN_DEFAULT_UNCOMMITTED = 8192


def _default_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class SimulatedEngineOptions(BaseModel):
    """Cost model (and labelled fault injection) of the `simulated` engine."""

    model_config = ConfigDict(frozen=True)

    step_s: float = Field(0.01, ge=0, description="seconds per decode step; 0 = zero-cost")
    max_num_seqs: int = Field(64, ge=1, description="sequences decoded together per step")
    tokens_per_step: int = Field(1, ge=1, description="output tokens per sequence per step")
    default_max_tokens: int = Field(16, ge=1, description="output length when max_tokens unset")
    max_model_len: int = Field(4096, ge=1, description="prompt+output token limit")
    fault_transient_rate: float = Field(
        0.0, ge=0, le=1, description="fault injection: share of attempts failing transiently"
    )
    fault_oom_above: int | None = Field(
        None, description="fault injection: OOM when more sequences than this run together"
    )
    fault_die_after: int | None = Field(
        None, description="fault injection: engine dies after this many requests"
    )


class VllmEngineOptions(BaseModel):
    """Options passed to vLLM's AsyncEngineArgs."""

    model_config = ConfigDict(frozen=True)

    max_num_seqs: int = Field(256, ge=1, description="vLLM max_num_seqs")
    max_model_len: int | None = Field(None, description="vLLM max_model_len")
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1, description="vLLM memory share")
    dtype: str = Field("auto", description="vLLM dtype")
    tensor_parallel_size: int = Field(1, ge=1, description="GPUs per engine")
    task: Literal["generate", "embed"] = Field("generate", description="generate or embed")
    lora_modules: dict[str, str] = Field(
        default_factory=dict,
        description="LoRA adapters served beside the base model, JSON {served name: adapter "
        "path or hub id} (vLLM's --lora-modules); each name is a model of its own",
    )
    max_lora_rank: int = Field(16, ge=1, description="vLLM max_lora_rank: largest adapter rank")
    max_loras: int | None = Field(
        None, ge=1, description="adapters in one engine step (vLLM max_loras); unset: all of them"
    )


class LlamaCppEngineOptions(BaseModel):
    """Options of the `llamacpp` engine (llama-cpp-python, GGUF models)."""

    model_config = ConfigDict(frozen=True)

    instances: int = Field(
        1,
        ge=1,
        description="model instances, each one sequence at a time (llama-cpp-python decodes "
        "one sequence per instance); each holds its own weights and KV cache",
    )
    n_ctx: int = Field(0, ge=0, description="context length; 0 = the model's own")
    n_threads: int | None = Field(
        None,
        ge=1,
        description="CPU threads per instance, decoding and prompt evaluation alike; "
        "unset: every core",
    )
    n_batch: int = Field(512, ge=1, description="prompt tokens evaluated per step")
    n_gpu_layers: int = Field(0, description="layers offloaded to a GPU; -1 = all")
    task: Literal["generate", "embed"] = Field("generate", description="generate or embed")
    prefix_window: int = Field(
        32,
        ge=0,
        description="requests queued in the engine beyond those decoding, so that each "
        "instance can take the ones sharing its cached prompt prefix back to back",
    )
    max_prefix_skips: int = Field(
        64,
        ge=0,
        description="most times a queued request is passed over for others sharing an "
        "instance's prefix before it runs next (0: arrival order within a lane)",
    )


class OpenAIEngineOptions(BaseModel):
    """Options of the `openai` engine: any OpenAI-compatible server behind the worker."""

    model_config = ConfigDict(frozen=True)

    base_url: str = Field(
        "http://127.0.0.1:8000/v1", description="the server's OpenAI API root (ends in /v1)"
    )
    api_key: SecretStr | None = Field(None, description="bearer token for the server")
    max_concurrency: int = Field(64, ge=1, description="requests outstanding at the server")
    timeout_s: float = Field(600.0, gt=0, description="one request's limit (a transient error)")
    connect_timeout_s: float = Field(10.0, gt=0, description="connection limit")
    models_from_server: bool = Field(
        False,
        description="serve every model the server lists at GET /v1/models (read at start), "
        "each under its own name; the worker's one capacity is shared by them",
    )


class GpuHealthOptions(BaseModel):
    """When a GPU counts as unhealthy (the worker then stops taking work)."""

    model_config = ConfigDict(frozen=True)

    sample_interval_s: float = Field(5.0, gt=0, description="NVML sampling interval")
    max_temperature_c: int = Field(90, description="unhealthy at or above this temperature")
    max_memory_used_ratio: float = Field(0.99, gt=0, le=1, description="unhealthy above this")
    max_uncorrected_ecc_errors: int = Field(0, ge=0, description="unhealthy above this count")


class InferenceOptions(BaseModel):
    """Behaviour of one inference worker."""

    model_config = ConfigDict(frozen=True)

    engine: Literal["vllm", "llamacpp", "openai", "simulated"] | None = Field(
        None,
        description="required: vllm, llamacpp, openai or simulated; nothing falls back to another",
    )
    model: str = Field(
        "kbatch-sim",
        description="what the engine loads: vllm a path or hub id, llamacpp a GGUF file, "
        "openai the server's model name, simulated any name",
    )
    served_model_name: str | None = Field(
        None,
        description="the model name requests must ask for and results carry; unset: the "
        "GGUF file's stem, else `model`",
    )
    served_model_names: tuple[str, ...] = Field(
        (),
        description="JSON list: several model names this worker answers for, one capacity "
        "shared by them (simulated: any; openai: each sent to the server as named); "
        "overrides served_model_name; vllm and llamacpp hold one model each",
    )
    worker_id: str = Field(default_factory=_default_worker_id, description="unique worker name")
    pool: Literal["dedicated", "spot"] = Field("dedicated", description="capacity pool")
    partitions: str = Field(
        "", description="static assignment, e.g. '0-3,7' (the scheduler replaces it when used)"
    )
    follow_scheduler: bool = Field(
        False, description="take assignments from the scheduler instead of `partitions`"
    )
    capacity: int = Field(8, ge=1, description="most partitions the scheduler may give it")
    in_flight_cap: int | None = Field(
        None,
        ge=1,
        description="requests in the engine at once; default 2x engine concurrency, at "
        f"least {MIN_DEFAULT_IN_FLIGHT}",
    )
    max_uncommitted: int | None = Field(
        None,
        ge=1,
        description="consumed-but-uncommitted records; default 4x the in-flight cap, at "
        f"least {MIN_DEFAULT_UNCOMMITTED}",
    )
    lower_lane_share: float = Field(
        0.05,
        ge=0,
        le=0.5,
        description="share of the records a worker takes that lower lanes get while a higher "
        "lane has records waiting (0.05: 1 in 20); 0: strict priority, a lower lane waits "
        "until every higher one is empty",
    )
    commit_interval_s: float = Field(0.5, gt=0, description="commit at least this often")
    commit_max_records: int = Field(1000, ge=1, description="commit once this many are ready")
    transactions: bool = Field(
        True,
        description="false: at-least-once commits (results may repeat after a crash); "
        "only for measuring what transactions cost",
    )
    transaction_timeout_ms: int = Field(60_000, ge=1000, description="transaction.timeout.ms")
    commit_stall_s: float = Field(
        120.0,
        gt=0,
        description="a commit blocked this long (past librdkafka's own timeouts) is abandoned "
        "and its partition taken afresh by a new producer",
    )
    max_hung_commits: int = Field(
        2,
        ge=0,
        description="more abandoned commits than this still blocked (each holds a thread) "
        "exit the worker with code 4 for its supervisor to restart",
    )
    max_attempts: int = Field(4, ge=1, description="tries per request for transient errors")
    retry_initial_s: float = Field(0.1, ge=0, description="first retry backoff")
    retry_max_s: float = Field(5.0, ge=0, description="largest retry backoff")
    drain_grace_s: float = Field(20.0, ge=0, description="SIGTERM: time to finish in-flight work")
    fetch_max_bytes: int = Field(8 * 1024 * 1024, description="consumer fetch.max.bytes")
    queued_max_kbytes: int = Field(16 * 1024, description="consumer queued.max.messages.kbytes")
    http_host: str = Field("127.0.0.1", description="address of /healthz and /metrics")
    http_port: int = Field(8090, description="port of /healthz and /metrics")
    heartbeat_interval_s: float = Field(1.0, gt=0, description="heartbeat period")
    simulated: SimulatedEngineOptions = Field(default_factory=SimulatedEngineOptions)
    vllm: VllmEngineOptions = Field(default_factory=VllmEngineOptions)
    llamacpp: LlamaCppEngineOptions = Field(default_factory=LlamaCppEngineOptions)
    openai: OpenAIEngineOptions = Field(default_factory=OpenAIEngineOptions)
    gpu: GpuHealthOptions = Field(default_factory=GpuHealthOptions)

    @property
    def served_model(self) -> str:
        """The model name this worker answers for (like vLLM's --served-model-name)."""
        return self.served_model_name or served_name_of(self.model)

    @property
    def served_models(self) -> tuple[str, ...]:
        """Every model name this worker answers for, as configured (an `openai` engine
        with models_from_server adds the server's at start)."""
        return self.served_model_names or (self.served_model,)


def one_served_model(options: InferenceOptions, engine: str) -> str:
    """The one model name an engine that loads one model answers for."""
    if len(options.served_models) != 1:
        raise ConfigurationError(
            f"the {engine} engine holds one model; run a worker per model "
            f"(served_model_names lists {len(options.served_models)})"
        )
    return options.served_models[0]


def served_name_of(model: str) -> str:
    """'/models/qwen2-0.5b.Q4_K_M.gguf' -> 'qwen2-0.5b.Q4_K_M'; hub ids and names stay."""
    if model.lower().endswith(".gguf"):
        return PurePath(model).stem
    return model


class InferenceSettings(CommonSettings):
    """Everything an inference worker reads from its environment."""

    inference: InferenceOptions = Field(default_factory=InferenceOptions)


def parse_partitions(spec: str) -> set[int]:
    """'0-3,7' -> {0, 1, 2, 3, 7}."""
    partitions: set[int] = set()
    for part in filter(None, (p.strip() for p in spec.split(","))):
        low, _, high = part.partition("-")
        first, last = int(low), int(high or low)
        if first > last or first < 0:
            raise ValueError(f"bad partition range {part!r}")
        partitions.update(range(first, last + 1))
    return partitions
