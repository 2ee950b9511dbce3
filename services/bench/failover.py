"""Failover time: from a worker's death to its partitions being owned again.

Run: make bench-failover   (or .venv/bin/python -m bench.failover [rounds])
A scheduler (default heartbeat timeout) and three simulated workers consume a
standing backlog. Each round stops one worker — kill -9 or SIGTERM — and polls
the scheduler's /workers view every 50 ms until another live worker reports
owning every partition the stopped one held. The worker is then restarted.
"""

from __future__ import annotations

import statistics
import sys
import time

import httpx

from bench.common import OUT, broker, machine
from services.harness.kafka import unique_topics, wait_for
from services.harness.pipeline import publish, request_record, start_follower, start_scheduler
from services.harness.processes import ServiceProcess
from services.scheduler.settings import SchedulerOptions

SLOW = {"SIMULATED__STEP_S": "0.05", "SIMULATED__MAX_NUM_SEQS": "8"}


def owned(url: str) -> dict[str, set[int]]:
    workers = httpx.get(f"{url}/workers", timeout=5).json()["workers"]
    return {w["worker_id"]: set(w["owned"]) for w in workers if w["alive"]}


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


def _all_owned(url: str, every: set[int]) -> dict[str, set[int]] | None:
    now = owned(url)
    return now if set().union(*now.values()) == every else None


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    OUT.mkdir(parents=True, exist_ok=True)
    timeout_s = SchedulerOptions().heartbeat_timeout_s
    times: dict[str, list[float]] = {"kill -9": [], "SIGTERM": []}
    with broker() as bootstrap:
        topics = unique_topics(bootstrap, high_partitions=2, normal_partitions=4, low_partitions=2)
        publish(bootstrap, topics, [request_record("fo", i, max_tokens=64) for i in range(20000)])
        scheduler, url = start_scheduler(
            bootstrap, topics, OUT, "failover-scheduler", HEARTBEAT_TIMEOUT_S=str(timeout_s)
        )
        every = set(range(topics.lane_layout().total))
        workers = {
            name: start_follower(bootstrap, topics, OUT, name, pool, 8, **SLOW)[0]
            for name, pool in (("fo-a", "dedicated"), ("fo-b", "dedicated"), ("fo-c", "spot"))
        }
        try:
            for _ in range(rounds):
                for how in times:
                    # Partitions stay put unless forced, so stop whoever holds the most.
                    holding = wait_for(lambda: _all_owned(url, every), 60, "every partition owned")
                    name = max(holding, key=lambda w: len(holding[w]))
                    times[how].append(one_round(url, workers[name], name, how))
                    pool = "spot" if name == "fo-c" else "dedicated"
                    workers[name] = start_follower(bootstrap, topics, OUT, name, pool, 8, **SLOW)[0]
        finally:
            for process in workers.values():
                process.terminate()
            scheduler.terminate()
    print(f"machine: {machine()}; heartbeat interval 1 s, timeout {timeout_s:.0f} s")
    print("| worker stopped by | rounds | min s | median s | max s |")
    print("|---|---|---|---|---|")
    for how, seconds in times.items():
        print(
            f"| {how} | {len(seconds)} | {min(seconds):.2f} | "
            f"{statistics.median(seconds):.2f} | {max(seconds):.2f} |"
        )


if __name__ == "__main__":
    main()
