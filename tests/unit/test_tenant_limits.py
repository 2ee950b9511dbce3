from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path
from typing import cast

from hypothesis import given
from hypothesis import strategies as st
from pydantic import SecretStr

from services.collector.collector import Collected
from services.collector.files import FileStore
from services.ingest.batches.batch_book import BatchBook
from services.ingest.batches.jobs import JobBook, JobTotals
from services.ingest.settings import IngestOptions
from services.ingest.tenancy.owned_files import OwnedFiles
from services.ingest.tenancy.tenant_limits import (
    OTHER_TENANTS,
    Limit,
    TenantLimits,
    admit_file,
    admit_requests,
    job_queued,
    requests_that_fit,
    tenant_label,
)
from services.ingest.tenancy.tenant_usage import TenantUsage
from services.kafka.producer import AsyncProducer

counts = st.integers(0, 10_000)
limits = st.integers(0, 10_000)  # 0: no limit
tenants = st.text(min_size=1, max_size=12)


@given(tenants, counts, counts, limits, st.integers(1, 60))
def test_requests_are_admitted_exactly_within_the_limit(
    tenant: str, queued: int, adding: int, limit: int, retry_after_s: int
) -> None:
    refusal = admit_requests(tenant, queued, adding, limit, retry_after_s)
    assert (refusal is None) == (limit == 0 or queued + adding <= limit)
    if refusal is not None:
        assert refusal.limit is Limit.QUEUED_REQUESTS
        assert refusal.code == "tenant_queue_limit_exceeded"
        assert f"limit is {limit}" in refusal.message or f"limit of {limit}" in refusal.message
        usage = (f"has {queued} requests queued", f"it has {queued} queued now")
        assert any(phrase in refusal.message for phrase in usage)
        assert repr(tenant) in refusal.message
        # Waiting helps exactly when the request could ever fit.
        assert (refusal.retry_after_s is not None) == (adding <= limit)
        assert refusal.retry_after_s in (None, retry_after_s)


@given(counts, counts, limits)
def test_the_requests_that_fit_are_the_most_the_limit_allows(
    queued: int, adding: int, limit: int
) -> None:
    fitting = requests_that_fit(queued, adding, limit)
    assert 0 <= fitting <= adding
    if fitting:
        assert admit_requests("t", queued, fitting, limit, 1) is None
    if fitting < adding:  # one more would pass the limit
        assert admit_requests("t", queued, fitting + 1, limit, 1) is not None


@given(
    tenants,
    counts,
    st.integers(0, 10**9),
    st.integers(0, 10**8),
    st.builds(TenantLimits, st.just(0), limits, st.integers(0, 10**9)),
)
def test_a_file_is_stored_only_within_both_limits_and_a_refusal_names_them(
    tenant: str, files: int, file_bytes: int, size: int, tenant_limits: TenantLimits
) -> None:
    refusal = admit_file(tenant, files, file_bytes, size, tenant_limits)
    files_fit = tenant_limits.files == 0 or files + 1 <= tenant_limits.files
    bytes_fit = tenant_limits.file_bytes == 0 or file_bytes + size <= tenant_limits.file_bytes
    assert (refusal is None) == (files_fit and bytes_fit)
    if refusal is not None:
        assert refusal.code == "tenant_file_quota_exceeded"
        assert refusal.retry_after_s is None  # only deleting files makes room
        assert repr(tenant) in refusal.message
        if refusal.limit is Limit.FILES:
            assert not files_fit
            assert f"stores {files} files" in refusal.message
            assert f"limit of {tenant_limits.files}" in refusal.message
        else:
            assert refusal.limit is Limit.FILE_BYTES and files_fit and not bytes_fit
            assert f"stores {file_bytes} bytes" in refusal.message
            assert f"limit of {tenant_limits.file_bytes} bytes" in refusal.message


@given(counts, counts, st.booleans())
def test_a_job_queues_its_requests_without_an_outcome_until_it_ends(
    accepted: int, done: int, ended: bool
) -> None:
    queued = job_queued(accepted, done, ended=ended)
    assert 0 <= queued <= accepted
    assert queued == (0 if ended else max(0, accepted - done))


@given(st.frozensets(tenants, max_size=5), st.lists(tenants, max_size=50))
def test_metric_labels_are_the_named_tenants_and_one_for_the_rest(
    named: frozenset[str], seen: list[str]
) -> None:
    labels = {tenant_label(tenant, named) for tenant in seen}
    assert labels <= named | {OTHER_TENANTS}
    for tenant in seen:
        assert (tenant_label(tenant, named) == tenant) == (tenant in named)


def _usage(tmp_path: Path, **options: object) -> tuple[TenantUsage, JobBook, dict[str, int]]:
    tokens = {"acme": SecretStr("a-token"), "beta": SecretStr("b-token")}
    settings = IngestOptions.model_validate({"tenant_tokens": tokens, **options})
    usage = TenantUsage(settings, OwnedFiles(FileStore(tmp_path), "default"))
    producer = cast(AsyncProducer, None)  # nothing here publishes
    jobs = JobBook(producer, "jobs")
    collected: dict[str, int] = {}
    usage.attach(jobs, BatchBook(producer, "batches"), lambda job: Collected(collected.get(job, 0)))
    return usage, jobs, collected


def test_queued_requests_count_the_books_and_the_reservations(tmp_path: Path) -> None:
    usage, jobs, collected = _usage(tmp_path, max_queued_requests_per_tenant=5, retry_after_s=7)
    jobs.remember(JobTotals("j1", "acme", accepted=4))
    collected["j1"] = 1
    assert usage.queued()["acme"] == 3
    fitting, refusal = usage.fit_requests("acme", 3)  # a streamed chunk: 2 fit
    assert fitting == 2 and refusal is not None and refusal.retry_after_s == 7
    assert "has 5 requests queued" in refusal.message and "limit of 5" in refusal.message
    refused = usage.reserve_requests("acme", 1)  # a batch: all or nothing
    assert refused is not None and refused.limit is Limit.QUEUED_REQUESTS
    assert usage.reserve_requests("beta", 5) is None  # another tenant's room is its own
    too_big = usage.reserve_requests("beta", 6)
    assert too_big is not None and too_big.retry_after_s is None  # never fits
    usage.release_requests("acme", 2)
    collected["j1"] = 4  # every request of j1 has its outcome
    assert usage.queued()["acme"] == 0
    assert usage.reserve_requests("acme", 5) is None
    jobs.remember(JobTotals("j2", "acme", accepted=9, cancel_reason="cancelled"))
    assert usage.queued()["acme"] == 5  # the cancelled job queues nothing


def test_files_are_refused_past_the_limits_admins_included(tmp_path: Path) -> None:
    usage, _, _ = _usage(tmp_path, max_files_per_tenant=2, max_file_bytes_per_tenant=100)

    async def scenario() -> None:
        files = usage.files
        files.save_upload(io.BytesIO(b"x" * 40), "a.jsonl", "batch", "acme")
        files.register_output("file-out", _output(tmp_path), "o.jsonl", "batch_output", "acme")
        assert await usage.reserve_file("acme", 40) is None  # outputs are not counted
        refused = await usage.reserve_file("acme", 1)  # the reservation counts as stored
        assert refused is not None and refused.limit is Limit.FILES
        await usage.release_file("acme", 40)
        files.save_upload(io.BytesIO(b"x" * 40), "b.jsonl", "batch", "acme")
        refused = await usage.reserve_file("acme", 1)
        assert refused is not None and "stores 2 files" in refused.message
        refused = await usage.reserve_file("beta", 101)
        assert refused is not None and refused.limit is Limit.FILE_BYTES
        assert await usage.reserve_file("beta", 100) is None
        assert usage.stored_files() == {"acme": (2, 80)}

    asyncio.run(scenario())


def _output(root: Path) -> str:
    (root / "jobs").mkdir()
    (root / "jobs" / "out.jsonl").write_text(json.dumps({"x": 1}) * 100)
    return "jobs/out.jsonl"
