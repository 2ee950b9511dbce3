"""The faults, each injected into a running `ChaosRig`; each returns its recovery time.

Recovery, per fault:
- a worker killed -9, stopped by SIGTERM, or paused past the heartbeat timeout
  (a zombie, resumed afterwards): from the signal until live workers own every
  partition it held;
- the scheduler killed -9: from the kill until its successor counts at least what
  was committed at the kill;
- the broker restarted (away for BROKER_AWAY_S): from its stop until new results
  are committed;
- ingest killed -9 mid-upload: from the kill until its successor is healthy (the
  upload is then repeated and its batch checked whole).
Every scenario leaves the rig running at full strength (replacements started).
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable, Iterator

import httpx

from services.harness.chaos_rig import HEARTBEAT_TIMEOUT_S, ChaosRig
from services.harness.kafka import wait_for
from services.harness.pipeline import batch_line, ingest_env, start_ingest_process, submit_batch
from services.kafka import local_broker
from services.routing import ModelPartition

BROKER_AWAY_S = 2.0


def _holder(rig: ChaosRig) -> tuple[str, set[ModelPartition]]:
    """The rig's worker owning the most partitions (partitions stay put unless forced)."""
    owned = wait_for(
        lambda: {n: ps for n, ps in rig.owned().items() if n in rig.workers and ps} or None,
        60,
        "a worker owning partitions",
    )
    name = max(owned, key=lambda n: len(owned[n]))
    return name, owned[name]


def _moved_away(rig: ChaosRig, name: str, held: set[ModelPartition], since: float) -> float:
    def moved() -> bool:
        rig.supervise()
        others = rig.owned()
        others.pop(name, None)
        return held <= set().union(*others.values())

    wait_for(moved, 60, f"partitions {sorted(held)} of {name} owned by others", interval_s=0.05)
    return time.monotonic() - since


def kill_worker(rig: ChaosRig) -> float:
    name, held = _holder(rig)
    since = time.monotonic()
    rig.workers[name].kill()
    rig.stopped(name, -9)
    seconds = _moved_away(rig, name, held, since)
    rig.start_worker(rig.pools[name])
    return seconds


def sigterm_worker(rig: ChaosRig) -> float:
    name, held = _holder(rig)
    since = time.monotonic()
    process = rig.workers[name].process
    process.send_signal(signal.SIGTERM)
    seconds = _moved_away(rig, name, held, since)
    rig.stopped(name, rig.workers[name].terminate(timeout_s=60))
    rig.start_worker(rig.pools[name])
    return seconds


def zombie_worker(rig: ChaosRig) -> float:
    """SIGSTOP past the heartbeat timeout, then SIGCONT: it must be fenced, not double-publish."""
    name, held = _holder(rig)
    pid = rig.workers[name].process.pid
    since = time.monotonic()
    os.kill(pid, signal.SIGSTOP)
    try:
        seconds = _moved_away(rig, name, held, since)
        time.sleep(max(0.0, HEARTBEAT_TIMEOUT_S + 1 - (time.monotonic() - since)))
    finally:
        os.kill(pid, signal.SIGCONT)
    return seconds


def kill_scheduler(rig: ChaosRig) -> float:
    committed = rig.done()
    since = time.monotonic()
    rig.scheduler.kill()
    rig.start_scheduler()

    def caught_up() -> bool:
        rig.supervise()
        return rig.job_count() >= committed

    wait_for(caught_up, 180, "the new scheduler's job count", interval_s=0.2)
    return time.monotonic() - since


def restart_broker(rig: ChaosRig) -> float:
    committed = rig.done()
    since = time.monotonic()
    assert rig.broker is not None, "the single-broker restart needs the rig's own broker"
    local_broker.down(rig.broker)  # returns once the broker process has exited
    # Time is the fault: an outage (connections refused, requests and commits failing and
    # retried), not a restart too quick for any client to notice.
    time.sleep(BROKER_AWAY_S)
    local_broker.up(rig.broker)

    def flowing() -> bool:
        rig.supervise()
        return rig.done() > committed or committed == len(rig.records)

    wait_for(flowing, 300, "results after the broker restart", interval_s=0.5)
    return time.monotonic() - since


def kill_ingest_mid_upload(rig: ChaosRig, lines: int = 300) -> float:
    """No file object and nothing published from a cut upload; the repeat runs whole."""
    files = rig.log_dir / f"ingest-files-{time.monotonic_ns()}"
    env = ingest_env(rig.bootstrap, rig.topics, files, rig.url)
    log_name = f"ingest-{env['KBATCH_INGEST__HTTP_PORT']}"
    ingest, url = start_ingest_process(env, rig.log_dir / f"{log_name}.log")
    body = "".join(batch_line(f"up-{i}") + "\n" for i in range(lines)).encode()
    killed_at: list[float] = []

    def kill_halfway() -> None:
        ingest.kill()
        killed_at.append(time.monotonic())

    try:
        response = httpx.post(
            f"{url}/v1/files",
            content=_slow_multipart(body, kill_halfway),
            headers={"Content-Type": f"multipart/form-data; boundary={_BOUNDARY}"},
            timeout=30,
        )
    except httpx.HTTPError:
        assert killed_at  # the server died mid-request, as intended
    else:
        raise AssertionError(f"the cut upload got an answer: {response.status_code}")
    ingest, _ = start_ingest_process(env, rig.log_dir / f"{log_name}-2.log")
    seconds = time.monotonic() - killed_at[0]
    try:
        leftovers = sorted(p.name for p in (files / "files").iterdir())
        assert leftovers == [], f"a cut upload left files behind: {leftovers}"
        _run_batch_whole(url, body, lines)
    finally:
        assert ingest.terminate(timeout_s=60) == 0, ingest.log()
    return seconds


SCENARIOS: dict[str, Callable[[ChaosRig], float]] = {
    "worker kill -9": kill_worker,
    "worker SIGTERM": sigterm_worker,
    "worker SIGSTOP (zombie)": zombie_worker,
    "scheduler kill -9": kill_scheduler,
    "ingest kill -9 mid-upload": kill_ingest_mid_upload,
    "broker restart": restart_broker,
}

# -- ingest plumbing -------------------------------------------------------------
_BOUNDARY = "kbatch-chaos-boundary"


def _slow_multipart(content: bytes, halfway: Callable[[], None]) -> Iterator[bytes]:
    """A multipart file upload sent in slow pieces; `halfway` runs in the middle."""
    yield (
        f'--{_BOUNDARY}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n'
        f'--{_BOUNDARY}\r\nContent-Disposition: form-data; name="file"; '
        f'filename="cut.jsonl"\r\nContent-Type: application/jsonl\r\n\r\n'
    ).encode()
    pieces = [content[i : i + 4096] for i in range(0, len(content), 4096)]
    for i, piece in enumerate(pieces):
        if i == len(pieces) // 2:
            halfway()
        yield piece
        time.sleep(0.05)
    yield f"\r\n--{_BOUNDARY}--\r\n".encode()


def _run_batch_whole(url: str, body: bytes, lines: int) -> None:
    with httpx.Client(base_url=url, timeout=30) as client:
        # High: the rig keeps the high lane free of its own job.
        batch_id = submit_batch(client, body, "whole.jsonl", "high")
        batch = wait_for(
            lambda: (
                (b := client.get(f"/v1/batches/{batch_id}").json())["status"]
                in {"completed", "failed", "expired", "cancelled"}
                and b
            ),
            300,
            "the repeated upload's batch",
            interval_s=0.2,
        )
        assert batch["status"] == "completed", batch
        output = client.get(f"/v1/files/{batch['output_file_id']}/content").text.splitlines()
    custom_ids = [json.loads(line)["custom_id"] for line in output]
    assert len(custom_ids) == lines and len(set(custom_ids)) == lines, len(custom_ids)
