"""`kbatch bench chaos`: each fault alone, many times, each on a fresh job; JSON tallies.

One broker of the bench's own (it gets restarted). Per run: fresh topics, a
scheduler and two simulated workers, a job published whole, the fault injected
once the first results are in, then every outcome read back read_committed.
Recovery is defined per fault in services/harness/chaos_scenarios.py. Exits 1 when
a request was lost or duplicated, a count was wrong, or a scenario's check failed.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import typer

from services.bench.measure import OutOption, emit, run_facts
from services.harness.chaos_rig import HEARTBEAT_TIMEOUT_S, ChaosRig, own_broker
from services.harness.chaos_scenarios import SCENARIOS
from services.kafka import local_broker

ENGINE = {"SIMULATED__STEP_S": "0.01", "SIMULATED__MAX_NUM_SEQS": "8", "COMMIT_STALL_S": "45"}
REQUESTS = 3000
ScenariosArgument = typer.Argument(
    None, help=f"faults to inject, by name (default all): {', '.join(SCENARIOS)}"
)


@dataclass
class Tally:
    runs: int = 0
    requests: int = 0
    lost: int = 0
    duplicated: int = 0
    miscounted: int = 0
    failed_checks: list[str] = field(default_factory=list)
    recovery_s: list[float] = field(default_factory=list)

    @property
    def bad(self) -> bool:
        return bool(self.lost or self.duplicated or self.miscounted or self.failed_checks)

    def summary(self) -> dict[str, Any]:
        found = asdict(self)
        found["recovery_s"] = [round(s, 1) for s in self.recovery_s]
        if self.recovery_s:
            found["recovery_median_s"] = round(statistics.median(self.recovery_s), 1)
            found["recovery_max_s"] = round(max(self.recovery_s), 1)
        return found


def one_run(
    broker: local_broker.BrokerLayout, out: Path, name: str, run: int, tally: Tally
) -> None:
    log_dir = out / "chaos" / f"{name.split()[0]}-{name.split()[1]}-{run}"
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


def measure(out: Path, runs: int, chosen: list[str]) -> dict[str, Tally]:
    tallies = {name: Tally() for name in chosen}
    broker = own_broker(out / "chaos-kafka")
    try:
        for run in range(runs):
            for name in chosen:
                one_run(broker, out, name, run, tallies[name])
                typer.echo(f"run {run + 1}/{runs} {name}: {tallies[name]}", err=True)
    finally:
        local_broker.down(broker)
    return tallies


def main(
    runs: int = typer.Argument(3, help="runs per fault"),
    scenarios: list[str] | None = ScenariosArgument,
    out: Path = OutOption,
) -> None:
    """Each fault alone on fresh jobs: losses, duplicates, recovery s; JSON, exit 1 on a loss."""
    chosen = scenarios or list(SCENARIOS)
    unknown = [name for name in chosen if name not in SCENARIOS]
    if unknown:
        raise typer.BadParameter(f"unknown {unknown}; known: {list(SCENARIOS)}")
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    tallies = measure(out, runs, chosen)
    emit(
        {
            **run_facts(),
            "wall_s": round(time.monotonic() - started),
            "requests_per_run": REQUESTS,
            "workers": 2,
            "heartbeat_timeout_s": HEARTBEAT_TIMEOUT_S,
            "scenarios": {name: tally.summary() for name, tally in tallies.items()},
        },
        out / "chaos.json",
    )
    if any(tally.bad for tally in tallies.values()):
        raise typer.Exit(1)


if __name__ == "__main__":
    typer.run(main)
