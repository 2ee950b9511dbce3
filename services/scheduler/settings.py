"""Scheduler settings: `KBATCH_SCHEDULER__*` plus the shared `KBATCH_*` options."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from services.settings import CommonSettings


class SchedulerOptions(BaseModel):
    """Timing and limits of the scheduler."""

    model_config = ConfigDict(frozen=True)

    app_id: str | None = Field(
        None, description="faust app id (its group and changelogs); default `<prefix>-scheduler`"
    )
    http_host: str = Field("127.0.0.1", description="address of the web views and /metrics")
    http_port: int = Field(8070, description="port of the web views and /metrics")
    heartbeat_timeout_s: float = Field(
        6.0, gt=0, description="a worker silent this long is gone and its partitions move"
    )
    assign_interval_s: float = Field(
        1.0, gt=0, description="longest time between assignment passes (heartbeats wake it sooner)"
    )
    job_retention_s: float = Field(
        7 * 24 * 3600.0,
        gt=0,
        description="job progress is forgotten this long after its last change",
    )
    session_timeout_s: float = Field(
        10.0,
        gt=0,
        description="faust consumer group session: how long a restarted scheduler may wait "
        "for its dead predecessor to leave the group",
    )
    data_dir: str = Field(".kbatch/scheduler", description="faust's local data directory")
    processing_guarantee: Literal["exactly_once", "at_least_once"] = Field(
        "at_least_once",
        description="faust guarantee for the heartbeat and job-record tables (both keep the "
        "latest value per key, so a replay changes nothing)",
    )
    progress_checkpoint_s: float = Field(
        1.0, gt=0, description="how often counted job progress is saved to its compacted topic"
    )


class SchedulerSettings(CommonSettings):
    """Everything the scheduler reads from its environment."""

    scheduler: SchedulerOptions = Field(default_factory=SchedulerOptions)
