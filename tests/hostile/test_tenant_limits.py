"""Per-tenant limits on a real ingest: one tenant at its limits gets 429 with the reason,
the others go on; nothing refused is stored or published; metrics carry a bounded
set of tenant labels.

The limits are small: 2 input files and 3,000 bytes of them per tenant, 5 queued
requests. Each test uses tenants of its own, so they share one ingest.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from services.codec import REQUEST, codec
from services.harness.kafka import read_topic, wait_for
from services.harness.pipeline import start_worker
from services.ingest.tenancy.tenant_limits import OTHER_TENANTS
from tests.integration.test_ingest import Ingest, chat_line, start_ingest

pytestmark = pytest.mark.integration

TENANTS = ("files-a", "files-b", "queue-a", "queue-b", "done-a", "ops")
TOKENS = {tenant: f"tok-{tenant}-{uuid.uuid4().hex[:8]}" for tenant in TENANTS}
TENANT_METRICS = (
    "kbatch_ingest_tenant_queued_requests",
    "kbatch_ingest_tenant_stored_files",
    "kbatch_ingest_tenant_stored_bytes",
    "kbatch_ingest_tenant_refusals_total",
)


def auth(tenant: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[tenant]}"}


@pytest.fixture(scope="module")
def file_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("tenant-limits")


@pytest.fixture(scope="module")
def ingest(bootstrap: str, file_dir: Path) -> Iterator[Ingest]:
    service = start_ingest(
        bootstrap,
        file_dir,
        file_dir=str(file_dir / "store"),
        tenant_tokens=json.dumps(TOKENS),
        admin_tenants='["ops"]',
        max_files_per_tenant="2",
        max_file_bytes_per_tenant="3000",
        max_queued_requests_per_tenant="5",
        retry_after_s="3",
    )
    yield service
    assert service.process.terminate() == 0, service.process.log()


@pytest.fixture
def client(ingest: Ingest) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=ingest.url, timeout=30) as calls:
        yield calls


def upload(client: httpx.Client, tenant: str, content: bytes) -> httpx.Response:
    files = {"file": ("in.jsonl", content, "application/jsonl")}
    return client.post("/v1/files", headers=auth(tenant), data={"purpose": "batch"}, files=files)


def lines(count: int) -> bytes:
    return b"".join(chat_line(f"c-{uuid.uuid4().hex[:8]}") + b"\n" for _ in range(count))


def stored_file(client: httpx.Client, tenant: str, line_count: int) -> str:
    reply = upload(client, tenant, lines(line_count))
    assert reply.status_code == 200, reply.text
    return str(reply.json()["id"])


def create_batch(client: httpx.Client, tenant: str, file_id: str) -> httpx.Response:
    body = {
        "input_file_id": file_id,
        "endpoint": "/v1/chat/completions",
        "completion_window": "24h",
    }
    return client.post("/v1/batches", headers=auth(tenant), json=body)


def batch_status(client: httpx.Client, tenant: str, batch_id: str) -> str:
    return str(client.get(f"/v1/batches/{batch_id}", headers=auth(tenant)).json()["status"])


def limit_error(reply: httpx.Response, code: str) -> str:
    """The message of a per-tenant 429 in OpenAI's error shape."""
    assert reply.status_code == 429, reply.text
    error = reply.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == code
    return str(error["message"])


def samples(client: httpx.Client) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every tenant metric's samples: (name, labels) -> value."""
    text = client.get("/metrics").text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        if family.name.startswith("kbatch_ingest_tenant_")
        for sample in family.samples
    }


def metric(client: httpx.Client, name: str, **labels: str) -> float:
    return samples(client).get((name, tuple(sorted(labels.items()))), -1.0)


def test_a_tenant_at_its_file_limits_is_refused_and_no_file_is_left(
    client: httpx.Client, file_dir: Path
) -> None:
    store = file_dir / "store" / "files"
    kept = [stored_file(client, "files-a", 1), stored_file(client, "files-a", 1)]
    before = sorted(p.name for p in store.iterdir())
    message = limit_error(upload(client, "files-a", lines(1)), "tenant_file_quota_exceeded")
    assert "'files-a' stores 2 files" in message and "limit of 2" in message
    assert sorted(p.name for p in store.iterdir()) == before  # nothing of it stored
    listed = client.get("/v1/files", headers=auth("files-a")).json()["data"]
    assert sorted(f["id"] for f in listed) == sorted(kept)
    # Another tenant is not held back by it.
    stored_file(client, "files-b", 1)
    # Bytes: an admin is limited as everyone (the refusal has no Retry-After: only
    # deleting files makes room).
    refused = upload(client, "ops", b"x" * 3001)
    message = limit_error(refused, "tenant_file_quota_exceeded")
    assert "'ops' stores 0 bytes" in message and "limit of 3000 bytes" in message
    assert "retry-after" not in refused.headers
    # Deleting a file makes room again.
    assert client.delete(f"/v1/files/{kept[0]}", headers=auth("files-a")).status_code == 200
    stored_file(client, "files-a", 1)
    stored = "kbatch_ingest_tenant_stored_files"
    wait_for(lambda: metric(client, stored, tenant="files-a") == 2, 30, "files-a's gauge at 2")
    refusals = "kbatch_ingest_tenant_refusals_total"
    assert metric(client, refusals, tenant="files-a", limit="files") == 1
    assert metric(client, refusals, tenant="ops", limit="file_bytes") == 1
    assert metric(client, refusals, tenant="files-b", limit="files") == 0


def _published(bootstrap: str, ingest: Ingest, job_ids: set[str]) -> dict[str, int]:
    """Request records on the requests topic per job, for the jobs named."""
    decode = codec(REQUEST).decode
    counted: dict[str, int] = dict.fromkeys(job_ids, 0)
    for message in read_topic(bootstrap, ingest.topics.requests_of("kbatch-sim")):
        record: dict[str, Any] = decode(message.value())
        if record["job_id"] in job_ids:
            counted[record["job_id"]] += 1
    return counted


def test_queued_requests_past_the_limit_are_refused_until_a_batch_ends(
    bootstrap: str, ingest: Ingest, client: httpx.Client
) -> None:
    first, second = stored_file(client, "queue-a", 3), stored_file(client, "queue-a", 3)
    reply = create_batch(client, "queue-a", first)
    assert reply.status_code == 200, reply.text
    batch_id = reply.json()["id"]
    wait_for(lambda: batch_status(client, "queue-a", batch_id) == "in_progress", 30, "validated")
    # A whole batch counts when it is created: 3 queued + 3 > 5.
    refused = create_batch(client, "queue-a", second)
    message = limit_error(refused, "tenant_queue_limit_exceeded")
    assert "'queue-a' has 3 requests queued" in message and "limit of 5" in message
    assert refused.headers["retry-after"] == "3"
    # Another tenant's room is its own.
    other = create_batch(client, "queue-b", stored_file(client, "queue-b", 3))
    assert other.status_code == 200, other.text
    # A streamed append takes what fits (2 of 3 lines) and is refused from there on.
    job_id = f"job-{uuid.uuid4().hex[:10]}"
    appended = client.post(f"/v1/jobs/{job_id}/requests", headers=auth("queue-a"), content=lines(3))
    assert appended.status_code == 429, appended.text
    body = appended.json()
    assert (body["accepted"], body["resume_from_line"]) == (2, 3)
    assert body["refused"]["reason"] == "tenant_queued_requests"
    assert "limit of 5" in body["refused"]["detail"]
    assert appended.headers["retry-after"] == "3"
    # Nothing refused was published, nothing accepted was lost.
    assert _published(bootstrap, ingest, {batch_id, job_id}) == {batch_id: 3, job_id: 2}
    queued = "kbatch_ingest_tenant_queued_requests"
    wait_for(lambda: metric(client, queued, tenant="queue-a") == 5, 30, "queue-a's gauge at 5")
    # The batch ends (cancelled): its requests no longer queue, so the second fits.
    cancel = client.post(f"/v1/batches/{batch_id}/cancel", headers=auth("queue-a"))
    assert cancel.status_code == 200, cancel.text
    again = create_batch(client, "queue-a", second)
    assert again.status_code == 200, again.text
    refusals = "kbatch_ingest_tenant_refusals_total"
    assert metric(client, refusals, tenant="queue-a", limit="queued_requests") == 2
    assert metric(client, refusals, tenant="queue-b", limit="queued_requests") == 0


def test_a_finished_batch_frees_its_room(
    bootstrap: str, ingest: Ingest, client: httpx.Client, tmp_path: Path
) -> None:
    first, second = stored_file(client, "done-a", 4), stored_file(client, "done-a", 4)
    reply = create_batch(client, "done-a", first)
    assert reply.status_code == 200, reply.text
    batch_id = reply.json()["id"]
    limit_error(create_batch(client, "done-a", second), "tenant_queue_limit_exceeded")
    total = ingest.topics.lane_layout().total
    worker, _ = start_worker(bootstrap, ingest.topics, tmp_path, "w-limits", f"0-{total - 1}")
    try:
        wait_for(
            lambda: batch_status(client, "done-a", batch_id) == "completed",
            120,
            f"batch {batch_id} completing",
            interval_s=0.5,
        )
    finally:
        assert worker.terminate() == 0, worker.log()
    again = create_batch(client, "done-a", second)
    assert again.status_code == 200, again.text


def test_metric_labels_are_the_named_tenants_and_one_for_everyone_else(
    client: httpx.Client,
) -> None:
    found = samples(client)
    assert {dict(labels)["tenant"] for _, labels in found} == {*TENANTS, OTHER_TENANTS}
    assert {name for name, _ in found} >= set(TENANT_METRICS)


def test_without_tokens_caller_chosen_tenants_share_one_label(
    bootstrap: str, tmp_path: Path
) -> None:
    service = start_ingest(
        bootstrap, tmp_path, None, file_dir=str(tmp_path / "files"), max_files_per_tenant="5"
    )
    try:
        with httpx.Client(base_url=service.url, timeout=30) as calls:
            for _ in range(3):
                claimed = {"X-Kbatch-Tenant": f"t-{uuid.uuid4().hex[:8]}"}
                files = {"file": ("in.jsonl", lines(1), "application/jsonl")}
                reply = calls.post(
                    "/v1/files", headers=claimed, data={"purpose": "batch"}, files=files
                )
                assert reply.status_code == 200, reply.text
            found = samples(calls)
    finally:
        assert service.process.terminate() == 0, service.process.log()
    assert {dict(labels)["tenant"] for _, labels in found} == {OTHER_TENANTS}
    stored = found[("kbatch_ingest_tenant_stored_files", (("tenant", OTHER_TENANTS),))]
    assert stored == 3
