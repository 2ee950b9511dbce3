"""Faults during a running job, short form: every fault in turn on one job.

`kbatch bench chaos` runs the long form (each fault alone, many times, a report table).
The job is kept fed while the faults run, so each lands with work outstanding.
Afterwards every request is in the results (read_committed) exactly once or in
the DLQ with a reason, and the scheduler's job count agrees.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.harness.chaos_rig import ChaosRig, own_broker
from services.harness.chaos_scenarios import SCENARIOS
from services.kafka import local_broker

ENGINE = {
    "SIMULATED__STEP_S": "0.01",
    "SIMULATED__MAX_NUM_SEQS": "8",
    "COMMIT_STALL_S": "45",  # a hung transaction call is abandoned sooner than in production
}  # ~65 requests/s for two workers on 2 cores
# A killed scheduler's successor joins its consumer group once the dead member's session
# has expired: the least the broker allows, group.min.session.timeout.ms (production: 10 s).
SCHEDULER = {"SESSION_TIMEOUT_S": "6"}
# Requests of the job kept outstanding while the faults run (seconds of work), so that
# each fault lands mid-job whatever it takes, not by luck of a job's size.
BACKLOG = 400


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[ChaosRig]:
    broker = own_broker(tmp_path / "kafka")
    built = ChaosRig(broker, tmp_path, ENGINE, scheduler_options=SCHEDULER)
    try:
        yield built
    finally:
        built.close()
        local_broker.down(broker)


@pytest.mark.timeout(900)
def test_every_request_once_through_every_fault_in_turn(rig: ChaosRig) -> None:
    rig.start(requests=BACKLOG)
    recovered: dict[str, float] = {}
    with rig.fed(BACKLOG):
        rig.wait_progress(300, "first results")
        for name, fault in SCENARIOS.items():
            if name == "broker restart":
                continue  # test_cluster.py restarts every broker of a 3-node cluster instead
            outstanding = rig.top_up()  # the fault lands with this much of the job to do
            started = time.monotonic()
            recovered[name] = fault(rig)
            rig.wait_progress(200, f"progress after {name}")
            print(
                f"{name}: recovered in {recovered[name]:.1f} s, "
                f"{time.monotonic() - started:.0f} s with the progress after it, "
                f"{outstanding} requests outstanding when it began"
            )
    verdict = rig.verdict()
    print(f"recovery seconds: {recovered}; {verdict}")
    assert verdict.lost == 0, f"{verdict.lost} requests lost"
    assert verdict.duplicated == 0, f"{verdict.duplicated} results published twice"
    assert verdict.counted == verdict.requests, verdict
    # A kill -9'd worker exits -9; 0 on SIGTERM; 3 or 4 when it asked for a restart.
    assert 1 not in rig.exits.values(), rig.exits
