"""`kbatch up` settings: `KBATCH_STACK__*` plus the shared `KBATCH_*` options.

The services' own ports come from their own settings (`KBATCH_INGEST__HTTP_PORT`,
`KBATCH_SCHEDULER__HTTP_PORT`; worker i listens on `KBATCH_INFERENCE__HTTP_PORT` + i).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from services.settings import CommonSettings

EngineName = Literal["simulated", "llamacpp", "openai", "vllm"]


class StackOptions(BaseModel):
    """What `kbatch up` starts, where it keeps state, how it restarts and stops."""

    model_config = ConfigDict(frozen=True)

    data_dir: str = Field(
        ".kbatch/stack",
        description="`kbatch up`'s logs, state file, broker data, ingest files and scheduler "
        "state; the next `up` reuses them",
    )
    workers: int = Field(2, ge=1, description="inference workers `kbatch up` starts per model")
    engine: EngineName | None = Field(
        None,
        description="the workers' engine; unset: vllm with a GPU and vLLM, else llamacpp on "
        "the tiny model",
    )
    http_host: str = Field(
        "127.0.0.1", description="address of the supervisor's /healthz and /metrics"
    )
    http_port: int = Field(
        8060, description="port of the supervisor's /healthz and /metrics (0: any free port)"
    )
    broker_port: int = Field(
        9092,
        description="client port of the broker `kbatch up` starts (controller: +1); none is "
        "started when KBATCH_BOOTSTRAP_SERVERS is set",
    )
    restart_initial_s: float = Field(
        1.0, gt=0, description="wait before restarting a service that exited"
    )
    restart_max_s: float = Field(
        30.0, gt=0, description="the wait doubles per exit in a row up to this"
    )
    stable_s: float = Field(
        30.0,
        gt=0,
        description="a service up this long before it exits starts back at the first wait",
    )
    stop_timeout_s: float = Field(
        40.0, gt=0, description="SIGTERM to SIGKILL when stopping a service"
    )


class StackSettings(CommonSettings):
    """Everything `kbatch up` reads from its environment."""

    stack: StackOptions = Field(default_factory=StackOptions)
