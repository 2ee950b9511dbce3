"""A rolling restart of a real 3-node cluster, then a lost quorum, during a job.

Every broker is restarted in turn (SIGTERM, kill -9, SIGTERM), then two of the three
are killed for 75 s: no controller quorum and under min ISR 2, so every produce,
transaction and init_transactions fails or times out past the workers' 30 s
timeouts. The job stalls, then resumes by itself: every request ends exactly once
(read_committed), the scheduler's count agrees, and no service process exits.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.harness.cluster import running_cluster
from tests.chaos.rig import ROOT, ChaosRig

ENGINE = {"SIMULATED__STEP_S": "0.02", "SIMULATED__MAX_NUM_SEQS": "8"}  # ~70 requests/s
OUTAGE_S = 75


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[ChaosRig]:
    with running_cluster(tmp_path / "cluster", ROOT / ".kbatch" / "jars") as cluster:
        built = ChaosRig(None, tmp_path, ENGINE, cluster=cluster)
        try:
            yield built
        finally:
            built.close()


@pytest.mark.timeout(900)
def test_a_rolling_restart_and_a_lost_quorum_lose_nothing_and_kill_no_service(
    rig: ChaosRig,
) -> None:
    cluster = rig.cluster
    assert cluster is not None
    rig.start(requests=6000)
    rig.wait_progress(300, "first results")
    timings: dict[str, float] = {}
    for index, sig in enumerate((signal.SIGTERM, signal.SIGKILL, signal.SIGTERM)):
        started = time.monotonic()
        cluster.stop(index, sig)
        cluster.start(index)
        rig.wait_progress(200, f"progress after restarting node {index + 1}", timeout_s=240)
        timings[f"node {index + 1} ({sig.name})"] = time.monotonic() - started
    started = time.monotonic()
    cluster.stop(0, signal.SIGKILL)
    cluster.stop(1, signal.SIGKILL)
    time.sleep(OUTAGE_S)  # time is the fault: an outage longer than every client timeout
    cluster.start(0, 1)
    rig.wait_progress(200, "progress after the quorum came back", timeout_s=300)
    timings["quorum lost for 75 s"] = time.monotonic() - started
    verdict = rig.verdict(timeout_s=400)
    print(f"seconds from fault to progress: {timings}; {verdict}")
    assert verdict.lost == 0, f"{verdict.lost} requests lost"
    assert verdict.duplicated == 0, f"{verdict.duplicated} results published twice"
    assert verdict.counted == verdict.requests, verdict
    # Nothing exited, so nothing was restarted by the rig's supervisor.
    assert rig.exits == {}, rig.exits
    assert rig.scheduler.process.poll() is None
    assert all(p.process.poll() is None for p in rig.workers.values())
