"""`kbatch bench failover`: from a worker's death to its partitions being owned again.

A scheduler (default heartbeat timeout) and three simulated workers consume a
standing backlog. Each round stops one worker — kill -9 or SIGTERM — and polls
the scheduler's /workers view every 50 ms until another live worker reports
owning every partition the stopped one held. The worker is then restarted.
Prints JSON.
"""

from __future__ import annotations

import statistics
import time
from functools import cache
from pathlib import Path
from typing import Any

import typer

from services.bench.measure import OutOption, bench_broker, emit, run_facts
from services.harness.kafka import unique_topics, wait_for
from services.harness.pipeline import (
    owned_partitions,
    publish,
    request_record,
    start_follower,
    start_scheduler,
)
from services.harness.processes import ServiceProcess
from services.routing import ModelPartition
from services.scheduler.settings import SchedulerOptions
from services.settings import CommonSettings

SLOW = {"SIMULATED__STEP_S": "0.05", "SIMULATED__MAX_NUM_SEQS": "8"}
POOLS = {"fo-a": "dedicated", "fo-b": "dedicated", "fo-c": "spot"}


@cache
def ops_headers() -> dict[str, str]:
    """The ops token of this environment, which the scheduler started here inherits."""
    return CommonSettings().ops_headers()


def owned(url: str) -> dict[str, set[ModelPartition]]:
    return owned_partitions(url, ops_headers())


def one_round(url: str, victim: ServiceProcess, name: str, how: str) -> float:
    held = owned(url)[name]
    if how == "kill -9":
        victim.kill()
    else:
        victim.terminate()
    stopped = time.monotonic()
    while True:
        others = owned(url)
        others.pop(name, None)
        if held <= set().union(*others.values()):
            return time.monotonic() - stopped
        time.sleep(0.05)


def _all_owned(url: str, every: set[ModelPartition]) -> dict[str, set[ModelPartition]] | None:
    now = owned(url)
    return now if set().union(*now.values()) == every else None


def measure(out: Path, rounds: int) -> dict[str, Any]:
    timeout_s = SchedulerOptions().heartbeat_timeout_s
    times: dict[str, list[float]] = {"kill -9": [], "SIGTERM": []}
    with bench_broker() as bootstrap:
        topics = unique_topics(bootstrap, high_partitions=2, normal_partitions=4, low_partitions=2)
        publish(bootstrap, topics, [request_record("fo", i, max_tokens=64) for i in range(20000)])
        scheduler, url = start_scheduler(
            bootstrap, topics, out, "failover-scheduler", HEARTBEAT_TIMEOUT_S=str(timeout_s)
        )
        every = set(topics.request_layout().partitions("kbatch-sim"))
        workers = {
            name: start_follower(bootstrap, topics, out, name, pool, 8, **SLOW)[0]
            for name, pool in POOLS.items()
        }
        try:
            for _ in range(rounds):
                for how in times:
                    # Partitions stay put unless forced, so stop whoever holds the most.
                    holding = wait_for(lambda: _all_owned(url, every), 60, "every partition owned")
                    name = max(holding, key=lambda w: len(holding[w]))
                    times[how].append(one_round(url, workers[name], name, how))
                    workers[name] = start_follower(
                        bootstrap, topics, out, name, POOLS[name], 8, **SLOW
                    )[0]
        finally:
            for process in workers.values():
                process.terminate()
            scheduler.terminate()
    return {
        **run_facts(),
        "heartbeat_interval_s": 1.0,
        "heartbeat_timeout_s": timeout_s,
        "stopped_by": {
            how: {
                "seconds": [round(s, 2) for s in seconds],
                "min_s": round(min(seconds), 2),
                "median_s": round(statistics.median(seconds), 2),
                "max_s": round(max(seconds), 2),
            }
            for how, seconds in times.items()
            if seconds
        },
    }


def main(
    rounds: int = typer.Argument(3, help="rounds, each stopping one worker each way"),
    out: Path = OutOption,
) -> None:
    """Seconds from a worker stopped (kill -9, SIGTERM) to its partitions owned again; JSON."""
    out.mkdir(parents=True, exist_ok=True)
    emit(measure(out, rounds), out / "failover.json")


if __name__ == "__main__":
    typer.run(main)
