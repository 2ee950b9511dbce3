"""`kbatch submit | jobs | results` as a tenant: the real commands against an ingest with
tenant tokens and a worker. The key goes as a bearer token, is never printed, and a
missing or foreign key ends the command with ingest's reason and a non-zero status."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from services.harness.ports import free_port
from services.harness.processes import KBATCH
from tests.hostile.test_tenants import TOKENS, tenant_ingest_with_worker
from tests.integration.test_ingest import Ingest, chat_line

pytestmark = pytest.mark.integration


@dataclass(frozen=True)
class Run:
    code: int
    out: str
    err: str

    @property
    def both(self) -> str:
        return self.out + self.err


def kbatch(url: str, key: str | None, *args: str) -> Run:
    """`kbatch <args> --api <url>` with KBATCH_API_KEY set to `key` (None: unset)."""
    env = {k: v for k, v in os.environ.items() if k != "KBATCH_API_KEY"}
    if key is not None:
        env["KBATCH_API_KEY"] = key
    done = subprocess.run(
        [KBATCH, *args, "--api", url],
        env={**env, "COLUMNS": "200"},  # rich tables: ids unwrapped
        capture_output=True,
        text=True,
        timeout=150,
        check=False,
    )
    return Run(done.returncode, done.stdout, done.stderr)


@pytest.fixture(scope="module")
def ingest(bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ingest]:
    tmp_path = tmp_path_factory.mktemp("client-cli")
    with tenant_ingest_with_worker(bootstrap, tmp_path, "w-cli") as service:
        yield service


@pytest.fixture
def batch_file(tmp_path: Path) -> Path:
    path = tmp_path / "in.jsonl"
    path.write_bytes(b"\n".join(chat_line(f"cli{i}") for i in range(3)) + b"\n")
    return path


def test_submit_jobs_and_results_with_the_tenants_key(
    ingest: Ingest, batch_file: Path, tmp_path: Path
) -> None:
    acme, beta = TOKENS["acme"], TOKENS["beta"]
    output = tmp_path / "out.jsonl"
    submitted = kbatch(ingest.url, acme, "submit", str(batch_file), "--wait", "-o", str(output))
    assert submitted.code == 0, submitted.both
    assert "completed: 3 completed, 0 failed" in submitted.out
    batch_id = submitted.out.split("batch ", 1)[1].split()[0]
    assert batch_id.startswith("batch_")
    lines = output.read_text().splitlines()
    assert sorted(json.loads(line)["custom_id"] for line in lines) == ["cli0", "cli1", "cli2"]

    listed = kbatch(ingest.url, acme, "jobs")
    assert listed.code == 0 and batch_id in listed.out, listed.both
    foreign = kbatch(ingest.url, beta, "jobs")
    assert foreign.code == 0 and batch_id not in foreign.out, foreign.both

    # --api-key works as the environment variable does.
    got = kbatch(ingest.url, None, "results", batch_id, "--api-key", acme)
    assert got.code == 0, got.both
    assert sorted(got.out.splitlines()) == sorted(lines)
    theirs = kbatch(ingest.url, beta, "results", batch_id)
    assert theirs.code == 1 and "404" in theirs.err and not theirs.out, theirs.both

    for run in (submitted, listed, foreign, got, theirs):
        assert acme not in run.both and beta not in run.both


@pytest.mark.parametrize("key", [None, "tok-acme-7f3f"], ids=["no key", "wrong key"])
def test_without_a_valid_key_every_command_fails_naming_the_401(
    ingest: Ingest, batch_file: Path, key: str | None
) -> None:
    commands = [["submit", str(batch_file)], ["jobs"]]
    if key is not None:  # without a key, results reads the topic, not ingest
        commands.append(["results", "batch_x"])
    for args in commands:
        run = kbatch(ingest.url, key, *args)
        assert run.code == 1, (args, run.both)
        assert "401 Unauthorized" in run.err and "--api-key" in run.err, run.err
        assert "Traceback" not in run.both
        assert key is None or key not in run.both


def test_help_never_shows_the_key(ingest: Ingest) -> None:
    for command in ("submit", "jobs", "results"):
        run = kbatch(ingest.url, TOKENS["acme"], command, "--help")
        assert run.code == 0 and "KBATCH_API_KEY" in run.out, run.both
        assert TOKENS["acme"] not in run.both


def test_an_ingest_that_does_not_answer_is_one_line_not_a_traceback() -> None:
    nowhere = f"http://127.0.0.1:{free_port()}"
    run = kbatch(nowhere, TOKENS["acme"], "jobs")
    assert run.code == 1 and f"ingest at {nowhere} did not answer" in run.err, run.both
    assert "Traceback" not in run.both and TOKENS["acme"] not in run.both
