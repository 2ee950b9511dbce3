"""`kbatch up` / `ps` / `down` as a user runs them: a batch through the official client,
a worker killed -9 and restarted by the supervisor, and after `down` and `up` again the
batch and its output file still there."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import uuid
from pathlib import Path
from typing import Any

import httpx
import openai

from services.harness.kafka import wait_for
from services.harness.pipeline import batch_line, shared_env
from services.harness.ports import free_port
from services.harness.processes import KBATCH, ServiceProcess
from services.settings import TopicSettings
from tests.integration.test_batch_api import create_batch, jsonl, wait_status

SERVICES = {"scheduler", "ingest", "worker-1", "worker-2"}


def two_free_ports() -> int:
    """A port p with p + 1 also free: worker i of `kbatch up` listens on base + i."""
    while True:
        port = free_port()
        try:
            with socket.socket() as probe:
                probe.bind(("127.0.0.1", port + 1))
        except OSError:
            continue
        return port


def stack_env(bootstrap: str) -> dict[str, str]:
    """The session broker under a topic prefix of its own; every port free."""
    topics = TopicSettings(
        prefix=f"t{uuid.uuid4().hex[:10]}",
        high_partitions=1,
        normal_partitions=2,
        low_partitions=1,
        results_partitions=2,
        dlq_partitions=1,
    )
    return {
        **shared_env(bootstrap, topics),
        "KBATCH_STACK__HTTP_PORT": str(free_port()),
        "KBATCH_INGEST__HTTP_PORT": str(free_port()),
        "KBATCH_SCHEDULER__HTTP_PORT": str(free_port()),
        "KBATCH_INFERENCE__HTTP_PORT": str(two_free_ports()),
        "KBATCH_SCHEDULER__HEARTBEAT_TIMEOUT_S": "4",
        "KBATCH_INFERENCE__COMMIT_INTERVAL_S": "0.2",
        "KBATCH_INFERENCE__SIMULATED__STEP_S": "0.02",
        "KBATCH_STACK__RESTART_INITIAL_S": "0.5",
    }


def kbatch(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [KBATCH, *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=150,
        check=False,
    )


def ps(env: dict[str, str], data_dir: Path) -> dict[str, Any]:
    listed = kbatch(env, "ps", "--json", "--data-dir", str(data_dir))
    assert listed.returncode == 0, listed.stdout + listed.stderr
    state: dict[str, Any] = json.loads(listed.stdout)
    return state


def rows(state: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {row["name"]: row for row in state["services"]}


def start_up(env: dict[str, str], data_dir: Path, log: Path) -> ServiceProcess:
    args = ["up", "--engine", "simulated", "--workers", "2", "--data-dir", str(data_dir)]
    return ServiceProcess(args, env, log)


def wait_all_running(env: dict[str, str], data_dir: Path, up: ServiceProcess) -> dict[str, Any]:
    def listed() -> dict[str, Any] | None:
        if up.process.poll() is not None:
            raise AssertionError(f"kbatch up exited with {up.process.returncode}:\n{up.log()}")
        if not (data_dir / "stack.json").exists():
            return None
        state = ps(env, data_dir)
        running = {n for n, row in rows(state).items() if row["state"] == "running"}
        return state if state["running"] and running == SERVICES else None

    state: dict[str, Any] = wait_for(listed, 90, "kbatch ps: every service running", 0.5)
    return state


def down(env: dict[str, str], data_dir: Path, up: ServiceProcess) -> None:
    stopped = kbatch(env, "down", "--data-dir", str(data_dir))
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert up.process.poll() is not None, "kbatch down returned before kbatch up ended"
    assert up.terminate() == 0, up.log()


def test_up_restarts_a_killed_worker_and_keeps_batches_across_down_and_up(
    bootstrap: str, tmp_path: Path
) -> None:
    env, data_dir = stack_env(bootstrap), tmp_path / "stack"
    first = start_up(env, data_dir, tmp_path / "up-1.log")
    try:
        state = wait_all_running(env, data_dir, first)
        assert "kafka" not in rows(state), "a named broker is used, not started"
        client = openai.OpenAI(base_url=state["openai_base_url"], api_key="unused", max_retries=0)
        lines = [batch_line(f"c{i}", max_tokens=16) for i in range(200)]
        batch = create_batch(client, tmp_path, lines)
        victim = rows(state)["worker-1"]["pid"]
        os.kill(victim, signal.SIGKILL)

        def restarted() -> dict[str, Any] | None:
            row = rows(ps(env, data_dir))["worker-1"]
            return row if row["restarts"] == 1 and row["state"] == "running" else None

        row = wait_for(restarted, 60, "worker-1 restarted", 0.5)
        assert row["pid"] != victim
        done = wait_status(client, batch.id, {"completed", "failed"})
        assert done.status == "completed", done
        assert (done.request_counts.completed, done.request_counts.failed) == (200, 0)
        output = jsonl(client, done.output_file_id)
        assert sorted(o["custom_id"] for o in output) == sorted(f"c{i}" for i in range(200))
        after = rows(ps(env, data_dir))
        assert {name: after[name]["restarts"] for name in SERVICES} == {
            "scheduler": 0,
            "ingest": 0,
            "worker-1": 1,
            "worker-2": 0,
        }
        metrics = httpx.get(f"{state['supervisor_url']}/metrics", timeout=5).text
        assert 'kbatch_stack_restarts_total{service="worker-1"} 1.0' in metrics
        assert 'kbatch_stack_restarts_total{service="worker-2"} 0.0' in metrics
        down(env, data_dir, first)
    finally:
        first.terminate()
    stopped = ps(env, data_dir)
    assert stopped["running"] is False
    assert {row["state"] for row in stopped["services"]} == {"stopped"}

    second = start_up(env, data_dir, tmp_path / "up-2.log")
    try:
        state = wait_all_running(env, data_dir, second)
        client = openai.OpenAI(base_url=state["openai_base_url"], api_key="unused", max_retries=0)
        kept = client.batches.retrieve(batch.id)
        assert kept.status == "completed" and kept.output_file_id == done.output_file_id
        assert kept.output_file_id is not None
        assert jsonl(client, kept.output_file_id) == output
        down(env, data_dir, second)
    finally:
        second.terminate()
