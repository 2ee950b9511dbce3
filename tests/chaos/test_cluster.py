"""A rolling restart of a real 3-node cluster, then a lost quorum, during a job.

Every broker is restarted in turn (SIGTERM, kill -9, SIGTERM), then two of the three
are killed for 45 s: no controller quorum and under min ISR 2, so every produce,
transaction and init_transactions fails or times out past the workers' 30 s
timeouts. The job, kept fed with requests until then so that every fault lands
mid-job, stalls, then resumes by itself: every request ends exactly once
(read_committed), the scheduler's count agrees, and no service process exits. A
worker started during the outage takes its partitions by retrying.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from services.harness.chaos_rig import JAR_CACHE, ChaosRig
from services.harness.cluster import running_cluster
from services.harness.kafka import unique_topics
from services.harness.pipeline import outcomes, publish, request_record, start_worker

ENGINE = {
    "SIMULATED__STEP_S": "0.01",
    "SIMULATED__MAX_NUM_SEQS": "8",
    # The outage leaves transactions open: their coordinator aborts them this long after
    # they began (production: 60 s; librdkafka bounds produce and socket waits by it too),
    # and until then they hold every later result back from read_committed readers.
    "TRANSACTION_TIMEOUT_MS": "10000",
}  # ~65 requests/s for two workers on 2 cores
BACKLOG = 400  # requests of the job kept outstanding through the faults
OUTAGE_S = 45  # past every client timeout (30 s)
SIDE_LANES = {"high_partitions": 1, "normal_partitions": 1, "low_partitions": 1}


def retries(worker_url: str, operation: str) -> float:
    """The worker's kbatch_kafka_retries_total for one operation."""
    for line in httpx.get(f"{worker_url}/metrics", timeout=5).text.splitlines():
        if line.startswith("kbatch_kafka_retries_total{") and f'operation="{operation}"' in line:
            return float(line.split()[-1])
    return 0.0


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[ChaosRig]:
    with running_cluster(tmp_path / "cluster", JAR_CACHE.resolve()) as cluster:
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
    rig.start(requests=BACKLOG)
    timings: dict[str, float] = {}
    outstanding: dict[str, int] = {}  # requests of the job to do as each fault began
    with rig.fed(BACKLOG):
        rig.wait_progress(300, "first results")
        for index, sig in enumerate((signal.SIGTERM, signal.SIGKILL, signal.SIGTERM)):
            outstanding[f"node {index + 1}"] = rig.top_up()  # to do when the fault lands
            started = time.monotonic()
            cluster.stop(index, sig)
            cluster.start(index)
            rig.wait_progress(200, f"progress after restarting node {index + 1}", timeout_s=240)
            timings[f"node {index + 1} ({sig.name})"] = time.monotonic() - started
        # A worker that starts during the outage must take its partitions
        # (init_transactions with no transaction coordinator) by retrying, not die.
        side = unique_topics(rig.bootstrap, replication_factor=3, **SIDE_LANES)
        side_records = [request_record("side", i, max_tokens=4) for i in range(200)]
        publish(rig.bootstrap, side, side_records)
        outstanding["quorum"] = rig.top_up()
        started = time.monotonic()
        cluster.stop(0, signal.SIGKILL)
        cluster.stop(1, signal.SIGKILL)
        late, late_url = start_worker(rig.bootstrap, side, rig.log_dir, "late", "0-2", **ENGINE)
        time.sleep(OUTAGE_S)  # time is the fault: an outage longer than every client timeout
        cluster.start(0, 1)
        rig.wait_progress(200, "progress after the quorum came back", timeout_s=300)
        timings[f"quorum lost for {OUTAGE_S} s"] = time.monotonic() - started
    try:
        found = outcomes(rig.bootstrap, side, expect=len(side_records), timeout_s=300)
        # It registers its model, then takes its partitions: either waits out the outage.
        take_retries = retries(late_url, "take_partition") + retries(late_url, "register_models")
    finally:
        assert late.terminate() == 0, late.log()
    assert found.result_ids() == {r["request_id"]: 1 for r in side_records}
    assert take_retries > 0, "the late worker never had to retry registering or a take"
    verdict = rig.verdict(timeout_s=400)
    print(f"seconds from fault to progress: {timings}; outstanding: {outstanding}; {verdict}")
    assert verdict.lost == 0, f"{verdict.lost} requests lost"
    assert verdict.duplicated == 0, f"{verdict.duplicated} results published twice"
    assert verdict.counted == verdict.requests, verdict
    # Nothing exited, so nothing was restarted by the rig's supervisor.
    assert rig.exits == {}, rig.exits
    assert rig.scheduler.process.poll() is None
    assert all(p.process.poll() is None for p in rig.workers.values())
