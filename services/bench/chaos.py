"""Chaos, long form: each fault alone, many times, each on a fresh job; a report table.

Run: make bench-chaos   (or .venv/bin/python -m bench.chaos [runs per fault])
One broker of the bench's own (it gets restarted). Per run: fresh topics, a
scheduler and two simulated workers, a job published whole, the fault injected
once the first results are in, then every outcome read back read_committed.
Recovery is defined per fault in tests/chaos/scenarios.py.
"""

from __future__ import annotations

import statistics
import sys
import time
from dataclasses import dataclass, field

from bench.common import OUT, machine
from services.kafka import local_broker
from tests.chaos.rig import ChaosRig, own_broker
from tests.chaos.scenarios import SCENARIOS

ENGINE = {"SIMULATED__STEP_S": "0.01", "SIMULATED__MAX_NUM_SEQS": "8", "COMMIT_STALL_S": "45"}
REQUESTS = 3000


@dataclass
class Tally:
    runs: int = 0
    requests: int = 0
    lost: int = 0
    duplicated: int = 0
    miscounted: int = 0
    failed_checks: list[str] = field(default_factory=list)
    recovery_s: list[float] = field(default_factory=list)


def one_run(broker: local_broker.BrokerLayout, name: str, run: int, tally: Tally) -> None:
    log_dir = OUT / "chaos" / f"{name.split()[0]}-{name.split()[1]}-{run}"
    log_dir.mkdir(parents=True, exist_ok=True)
    rig = ChaosRig(broker, log_dir, ENGINE)
    try:
        rig.start(requests=REQUESTS)
        rig.wait_progress(300, "first results")
        try:
            tally.recovery_s.append(SCENARIOS[name](rig))
        except AssertionError as exc:  # a scenario's own check failed: reported, run goes on
            tally.failed_checks.append(str(exc).splitlines()[0])
        verdict = rig.verdict()
    finally:
        rig.close()
    tally.runs += 1
    tally.requests += verdict.requests
    tally.lost += verdict.lost
    tally.duplicated += verdict.duplicated
    tally.miscounted += int(verdict.counted != verdict.requests)


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    chosen = sys.argv[2:] or list(SCENARIOS)
    OUT.mkdir(parents=True, exist_ok=True)
    tallies = {name: Tally() for name in chosen}
    started = time.monotonic()
    broker = own_broker(OUT / "chaos-kafka")
    try:
        for run in range(runs):
            for name in chosen:
                one_run(broker, name, run, tallies[name])
                print(f"run {run + 1}/{runs} {name}: {tallies[name]}", flush=True)
    finally:
        local_broker.down(broker)
    print(f"\nmachine: {machine()}; {time.monotonic() - started:.0f} s in all")
    print(f"{REQUESTS} requests per run, two simulated workers, heartbeat timeout 4 s\n")
    print(
        "| scenario | runs | requests | lost | duplicated | count wrong | recovery s (med / max) |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, t in tallies.items():
        recovery = (
            f"{statistics.median(t.recovery_s):.1f} / {max(t.recovery_s):.1f}"
            if t.recovery_s
            else "-"
        )
        print(
            f"| {name} | {t.runs} | {t.requests} | {t.lost} | {t.duplicated} | "
            f"{t.miscounted} | {recovery} |"
        )
    failures = [f"{n}: {c}" for n, t in tallies.items() for c in t.failed_checks]
    for failure in failures:
        print(f"check failed: {failure}")
    bad = any(t.lost or t.duplicated or t.miscounted for t in tallies.values()) or failures
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
