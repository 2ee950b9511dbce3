"""Tenants cannot see each other: a real ingest with two tenants and an admin.

The matrix: every operation of ingest's OpenAPI document (read from the running
service) called as the object's owner, another tenant, no token, a wrong token and
the admin, each with the status it must get. A test checks the table names every
documented operation, so a route added later without a row fails here. Then the
hostile cases: another tenant's ids answering byte for byte as missing ones, guessed
ids, ids of other shapes, an X-Kbatch-Tenant header claiming another tenant, lists,
output files, ownership across a restart, and an ingest without tokens.
"""

from __future__ import annotations

import io
import json
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from confluent_kafka import Producer
from starlette.routing import Route

from services.collector.files import FileStore
from services.harness.kafka import wait_for
from services.harness.pipeline import start_worker
from services.ingest.app import create_app
from services.ingest.batches import batch_state
from services.ingest.settings import IngestSettings
from services.settings import TopicSettings
from tests.integration.test_ingest import Ingest, chat_line, start_ingest

pytestmark = pytest.mark.integration

TOKENS = {"acme": "tok-acme-7f3e", "beta": "tok-beta-91c2", "ops": "tok-ops-5d20"}
CALLERS = ("owner", "other", "none", "wrong", "admin")
HEADERS: dict[str, dict[str, str]] = {
    "owner": {"Authorization": f"Bearer {TOKENS['acme']}"},
    "other": {"Authorization": f"Bearer {TOKENS['beta']}"},
    "none": {},
    "wrong": {"Authorization": "Bearer tok-acme-7f3f"},
    "admin": {"Authorization": f"Bearer {TOKENS['ops']}"},
}
ACME, BETA, OPS = HEADERS["owner"], HEADERS["other"], HEADERS["admin"]


def start_tenant_ingest(
    bootstrap: str, tmp_path: Path, topics: TopicSettings | None = None, **options: str
) -> Ingest:
    """Ingest with acme's and beta's tokens and the admin ops's."""
    return start_ingest(
        bootstrap,
        tmp_path,
        topics,
        tenant_tokens=json.dumps(TOKENS),
        admin_tenants='["ops"]',
        **options,
    )


@contextmanager
def tenant_ingest_with_worker(bootstrap: str, tmp_path: Path, worker_name: str) -> Iterator[Ingest]:
    """A tenant ingest and one simulated worker on all its partitions; both must exit
    cleanly, and no token may appear in ingest's log."""
    service = start_tenant_ingest(bootstrap, tmp_path, file_dir=str(tmp_path / "files"))
    total = service.topics.lane_layout().total
    worker, _ = start_worker(bootstrap, service.topics, tmp_path, worker_name, f"0-{total - 1}")
    yield service
    assert worker.terminate() == 0, worker.log()
    assert service.process.terminate() == 0, service.process.log()
    for secret in TOKENS.values():
        assert secret not in service.process.log()


class Api:
    """Calls on one running ingest; objects are made as acme unless told otherwise."""

    def __init__(self, url: str) -> None:
        self.client = httpx.Client(base_url=url, timeout=30)

    def call(
        self, method: str, path: str, headers: dict[str, str], **kwargs: Any
    ) -> httpx.Response:
        reply = self.client.request(method, path, headers=headers, **kwargs)
        assert reply.status_code < 500, (method, path, reply.status_code, reply.text)
        return reply

    def upload_file(self, headers: dict[str, str] = ACME, lines: int = 1) -> httpx.Response:
        content = b"\n".join(chat_line(f"c{i}") for i in range(lines)) + b"\n"
        return self.call(
            "POST",
            "/v1/files",
            headers,
            data={"purpose": "batch"},
            files={"file": ("in.jsonl", content, "application/jsonl")},
        )

    def file(self, headers: dict[str, str] = ACME, lines: int = 1) -> str:
        reply = self.upload_file(headers, lines)
        assert reply.status_code == 200, reply.text
        return str(reply.json()["id"])

    def create_batch(self, file_id: str, headers: dict[str, str]) -> httpx.Response:
        body = {
            "input_file_id": file_id,
            "endpoint": "/v1/chat/completions",
            "completion_window": "24h",
        }
        return self.call("POST", "/v1/batches", headers, json=body)

    def batch(self, headers: dict[str, str] = ACME, lines: int = 1) -> str:
        reply = self.create_batch(self.file(headers, lines), headers)
        assert reply.status_code == 200, reply.text
        return str(reply.json()["id"])

    def upload_lines(self, job_id: str, headers: dict[str, str]) -> httpx.Response:
        line = chat_line(f"l-{uuid.uuid4().hex[:8]}")
        return self.call("POST", f"/v1/jobs/{job_id}/requests", headers, content=line)

    def job(self, headers: dict[str, str] = ACME) -> str:
        job_id = f"job-{uuid.uuid4().hex[:12]}"
        reply = self.upload_lines(job_id, headers)
        assert reply.status_code == 200, reply.text
        return job_id

    def file_ids(self, headers: dict[str, str], **params: str) -> list[str]:
        reply = self.call("GET", "/v1/files", headers, params=params)
        assert reply.status_code == 200, reply.text
        return [f["id"] for f in reply.json()["data"]]

    def batch_ids(self, headers: dict[str, str], **params: str) -> list[str]:
        reply = self.call("GET", "/v1/batches", headers, params={"limit": "100", **params})
        assert reply.status_code == 200, reply.text
        return [b["id"] for b in reply.json()["data"]]


Call = Callable[[Api, dict[str, str]], httpx.Response]


@dataclass(frozen=True)
class Row:
    """One operation: `call` makes a fresh object of acme's (where the operation takes
    one) and calls the operation on it with the caller's headers."""

    call: Call
    expected: tuple[int, int, int, int, int]  # owner, other, none, wrong, admin


TABLE: dict[tuple[str, str], Row] = {
    ("POST", "/v1/jobs/{job_id}/requests"): Row(
        lambda api, h: api.upload_lines(api.job(), h), (200, 404, 401, 401, 403)
    ),
    ("POST", "/v1/jobs/{job_id}/seal"): Row(
        lambda api, h: api.call("POST", f"/v1/jobs/{api.job()}/seal", h),
        (200, 404, 401, 401, 403),
    ),
    ("GET", "/v1/models"): Row(
        lambda api, h: api.call("GET", "/v1/models", h), (200, 200, 401, 401, 200)
    ),
    ("POST", "/v1/files"): Row(lambda api, h: api.upload_file(h), (200, 200, 401, 401, 200)),
    ("GET", "/v1/files"): Row(
        lambda api, h: api.call("GET", "/v1/files", h), (200, 200, 401, 401, 200)
    ),
    ("GET", "/v1/files/{file_id}"): Row(
        lambda api, h: api.call("GET", f"/v1/files/{api.file()}", h), (200, 404, 401, 401, 200)
    ),
    ("DELETE", "/v1/files/{file_id}"): Row(
        lambda api, h: api.call("DELETE", f"/v1/files/{api.file()}", h),
        (200, 404, 401, 401, 403),
    ),
    ("GET", "/v1/files/{file_id}/content"): Row(
        lambda api, h: api.call("GET", f"/v1/files/{api.file()}/content", h),
        (200, 404, 401, 401, 200),
    ),
    # Another tenant's input file is no file: 400, as for a missing one.
    ("POST", "/v1/batches"): Row(
        lambda api, h: api.create_batch(api.file(), h), (200, 400, 401, 401, 403)
    ),
    ("GET", "/v1/batches"): Row(
        lambda api, h: api.call("GET", "/v1/batches", h), (200, 200, 401, 401, 200)
    ),
    ("GET", "/v1/batches/{batch_id}"): Row(
        lambda api, h: api.call("GET", f"/v1/batches/{api.batch()}", h),
        (200, 404, 401, 401, 200),
    ),
    ("GET", "/v1/batches/{batch_id}/results"): Row(
        lambda api, h: api.call("GET", f"/v1/batches/{api.batch()}/results", h),
        (200, 404, 401, 401, 200),
    ),
    ("POST", "/v1/batches/{batch_id}/cancel"): Row(
        lambda api, h: api.call("POST", f"/v1/batches/{api.batch()}/cancel", h),
        (200, 404, 401, 401, 200),
    ),
    ("GET", "/healthz"): Row(
        lambda api, h: api.call("GET", "/healthz", h), (200, 200, 200, 200, 200)
    ),
    ("GET", "/metrics"): Row(
        lambda api, h: api.call("GET", "/metrics", h), (200, 200, 200, 200, 200)
    ),
}


@pytest.fixture(scope="module")
def ingest(bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ingest]:
    tmp_path = tmp_path_factory.mktemp("tenants")
    service = start_tenant_ingest(bootstrap, tmp_path, file_dir=str(tmp_path / "files"))
    yield service
    assert service.process.terminate() == 0, service.process.log()
    for secret in TOKENS.values():
        assert secret not in service.process.log()


@pytest.fixture(scope="module")
def api(ingest: Ingest) -> Iterator[Api]:
    calls = Api(ingest.url)
    yield calls
    calls.client.close()


@pytest.fixture(scope="module")
def document(ingest: Ingest) -> dict[str, Any]:
    reply = httpx.get(f"{ingest.url}/openapi.json", timeout=10)  # open: no token
    assert reply.status_code == 200
    body: dict[str, Any] = reply.json()
    return body


def operations(document: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {
        (method.upper(), path): operation
        for path, methods in document["paths"].items()
        for method, operation in methods.items()
    }


def test_the_table_has_a_row_for_every_documented_and_served_operation(
    document: dict[str, Any],
) -> None:
    documented = operations(document)
    assert set(TABLE) == set(documented)
    served = {
        (method, route.path)
        for route in create_app(IngestSettings()).routes
        if isinstance(route, Route) and route.path != "/openapi.json"
        for method in (route.methods or {"GET"}) - {"HEAD"}
    }
    assert set(TABLE) == served
    for key, row in TABLE.items():  # and the document promises every status expected
        assert {str(s) for s in row.expected} <= set(documented[key]["responses"]), key


@pytest.mark.parametrize("operation", sorted(TABLE), ids=lambda op: f"{op[0]} {op[1]}")
def test_every_operation_as_every_caller(api: Api, operation: tuple[str, str]) -> None:
    row = TABLE[operation]
    got = tuple(row.call(api, HEADERS[caller]).status_code for caller in CALLERS)
    assert dict(zip(CALLERS, got, strict=True)) == dict(zip(CALLERS, row.expected, strict=True))


def _answer(reply: httpx.Response, hide: str = "") -> tuple[int, Any]:
    body = reply.json()
    return reply.status_code, json.loads(json.dumps(body).replace(hide, "ID")) if hide else body


def test_another_tenants_ids_answer_exactly_as_missing_ones(api: Api) -> None:
    file_id, batch_id, job_id = api.file(), api.batch(), api.job()
    no_file, no_batch, no_job = f"file-{uuid.uuid4().hex}", f"batch_{uuid.uuid4().hex}", "job-x"
    for method, path in (
        ("GET", "/v1/files/{}"),
        ("GET", "/v1/files/{}/content"),
        ("DELETE", "/v1/files/{}"),
    ):
        theirs = api.call(method, path.format(file_id), BETA)
        assert _answer(theirs) == _answer(api.call(method, path.format(no_file), BETA))
        assert theirs.status_code == 404
    for method, path in (
        ("GET", "/v1/batches/{}"),
        ("GET", "/v1/batches/{}/results"),
        ("POST", "/v1/batches/{}/cancel"),
    ):
        theirs = api.call(method, path.format(batch_id), BETA)
        assert _answer(theirs) == _answer(api.call(method, path.format(no_batch), BETA))
        assert theirs.status_code == 404
    theirs = api.create_batch(file_id, BETA)
    assert _answer(theirs) == _answer(api.create_batch(no_file, BETA))
    seal = "/v1/jobs/{}/seal"
    theirs = api.call("POST", seal.format(job_id), BETA)
    missing = api.call("POST", seal.format(no_job), BETA)
    assert _answer(theirs, job_id) == _answer(missing, no_job) and theirs.status_code == 404
    # And acme's objects are untouched by all of it.
    assert api.call("GET", f"/v1/files/{file_id}", ACME).status_code == 200
    assert api.call("GET", f"/v1/batches/{batch_id}", ACME).json()["status"] != "cancelling"
    assert api.upload_lines(job_id, ACME).json()["job"]["sealed"] is False


def test_guessed_and_oddly_shaped_ids_find_nothing(api: Api) -> None:
    file_id, batch_id = api.file(), api.batch()
    hex_part = file_id.removeprefix("file-")
    guesses = [
        file_id.upper(),
        f"file-{hex_part[:-1]}{'0' if hex_part[-1] != '0' else '1'}",
        f"{file_id}.json",
        f"{file_id}.owner",
        f"{file_id}.data",
        f"file-{batch_id}-output",
        f"file-{batch_id}-errors",
        *(f"file-{uuid.uuid4().hex}" for _ in range(5)),
    ]
    shapes = ["..", "%2e%2e", "..%2f..%2fetc%2fpasswd", "a%2Fb", "%00", "fil%C3%A9", "x" * 3000]
    for guess in guesses + shapes:
        for headers in (BETA, ACME):
            assert api.call("GET", f"/v1/files/{guess}", headers).status_code == 404, guess
            assert api.call("GET", f"/v1/files/{guess}/content", headers).status_code == 404
            assert api.call("DELETE", f"/v1/files/{guess}", headers).status_code == 404
    for guess in [batch_id.upper(), f"{batch_id}x", batch_id[:-1], *shapes]:
        for headers in (BETA, ACME):
            assert api.call("GET", f"/v1/batches/{guess}", headers).status_code == 404, guess
            assert api.call("POST", f"/v1/batches/{guess}/cancel", headers).status_code == 404
    for bad_job in ("%00", "x" * 200, "j%20k", "%C3%A9"):
        assert (
            api.call("POST", f"/v1/jobs/{bad_job}/requests", BETA, content=b"{}").status_code == 400
        )
    assert api.call("GET", f"/v1/batches/{batch_id}", ACME).status_code == 200
    assert api.call("GET", f"/v1/files/{file_id}", ACME).status_code == 200


def test_a_tenant_header_claiming_another_tenant_is_ignored(api: Api) -> None:
    file_id, batch_id, job_id = api.file(), api.batch(), api.job()
    for claim in ("acme", "ops"):
        posing = {**BETA, "X-Kbatch-Tenant": claim}
        assert api.call("GET", f"/v1/files/{file_id}", posing).status_code == 404
        assert api.call("GET", f"/v1/files/{file_id}/content", posing).status_code == 404
        assert api.call("GET", f"/v1/batches/{batch_id}", posing).status_code == 404
        assert api.call("POST", f"/v1/batches/{batch_id}/cancel", posing).status_code == 404
        assert api.upload_lines(job_id, posing).status_code == 404
        assert batch_id not in api.batch_ids(posing)
    # What beta makes while claiming to be acme is beta's.
    posing = {**BETA, "X-Kbatch-Tenant": "acme"}
    made = api.file(posing)
    assert api.call("GET", f"/v1/files/{made}", ACME).status_code == 404
    assert api.call("GET", f"/v1/files/{made}", BETA).status_code == 200
    posed_batch = api.batch(posing)
    assert api.call("GET", f"/v1/batches/{posed_batch}", ACME).status_code == 404
    got = api.call("GET", f"/v1/batches/{posed_batch}", BETA).json()
    assert got["kbatch"]["tenant"] == "beta"


def test_lists_show_only_the_callers_batches_and_the_admin_all(api: Api) -> None:
    acme_batches = {api.batch(ACME), api.batch(ACME)}
    beta_batch = api.batch(BETA)
    acme_sees, beta_sees, ops_sees = (api.batch_ids(h) for h in (ACME, BETA, OPS))
    assert acme_batches <= set(acme_sees) and beta_batch not in acme_sees
    assert beta_batch in beta_sees and not acme_batches & set(beta_sees)
    assert acme_batches | {beta_batch} <= set(ops_sees)
    for batch_id in acme_sees:
        assert api.call("GET", f"/v1/batches/{batch_id}", ACME).json()["kbatch"]["tenant"] == "acme"
    # Paging after another tenant's batch is paging after an unknown id.
    assert api.batch_ids(BETA, after=next(iter(acme_batches))) == []
    assert api.batch_ids(BETA, after=f"batch_{uuid.uuid4().hex}") == []
    assert api.batch_ids(BETA, after=beta_batch) == beta_sees[beta_sees.index(beta_batch) + 1 :]


def test_file_lists_show_only_the_callers_files_and_the_admin_all(api: Api) -> None:
    acme_files = {api.file(ACME), api.file(ACME)}
    beta_file = api.file(BETA)
    acme_sees, beta_sees, ops_sees = (api.file_ids(h) for h in (ACME, BETA, OPS))
    assert acme_files <= set(acme_sees) and beta_file not in acme_sees
    assert beta_file in beta_sees and not acme_files & set(beta_sees)
    assert acme_files | {beta_file} <= set(ops_sees)
    for file_id in acme_sees:
        assert api.call("GET", f"/v1/files/{file_id}", ACME).status_code == 200
    # A header claiming another tenant changes nothing.
    assert api.file_ids({**BETA, "X-Kbatch-Tenant": "acme"}) == beta_sees
    assert api.file_ids({**BETA, "X-Kbatch-Tenant": "ops"}) == beta_sees
    # Paging after another tenant's file is paging after an unknown id.
    for order in ("asc", "desc"):
        assert api.file_ids(BETA, after=next(iter(acme_files)), order=order) == []
        assert api.file_ids(BETA, after=f"file-{uuid.uuid4().hex}", order=order) == []
    assert api.file_ids(BETA, after=beta_file) == beta_sees[beta_sees.index(beta_file) + 1 :]


def test_output_files_are_the_batch_owners(
    bootstrap: str, api: Api, ingest: Ingest, tmp_path: Path
) -> None:
    total = ingest.topics.lane_layout().total
    worker, _ = start_worker(bootstrap, ingest.topics, tmp_path, "w-tenants", f"0-{total - 1}")
    try:
        batch_id = api.batch(ACME, lines=3)
        done = wait_for(
            lambda: (
                (b := api.call("GET", f"/v1/batches/{batch_id}", ACME).json())["status"]
                == "completed"
                and b
            ),
            120,
            f"batch {batch_id} completing",
            interval_s=0.5,
        )
    finally:
        assert worker.terminate() == 0, worker.log()
    output = done["output_file_id"]
    assert output == f"file-{batch_id}-output"
    content = api.call("GET", f"/v1/files/{output}/content", ACME).text
    assert content.count("\n") == 3
    # The ended batch's results stream is its output file, to its owner and the admin only.
    assert api.call("GET", f"/v1/batches/{batch_id}/results", ACME).text == content
    assert api.call("GET", f"/v1/batches/{batch_id}/results", OPS).text == content
    assert api.call("GET", f"/v1/batches/{batch_id}/results", BETA).status_code == 404
    assert api.call("GET", f"/v1/files/{output}/content", OPS).status_code == 200
    for method, path in (
        ("GET", f"/v1/files/{output}"),
        ("GET", f"/v1/files/{output}/content"),
        ("DELETE", f"/v1/files/{output}"),
    ):
        assert api.call(method, path, BETA).status_code == 404, path
    assert api.call("DELETE", f"/v1/files/{output}", OPS).status_code == 403
    assert api.create_batch(output, BETA).status_code == 400
    assert output in api.file_ids(ACME, purpose="batch_output")
    assert output in api.file_ids(OPS, purpose="batch_output")
    assert output not in api.file_ids(BETA)
    assert api.call("DELETE", f"/v1/files/{output}", ACME).status_code == 200
    # Its lines went with it: the results stream no longer serves them.
    gone = api.call("GET", f"/v1/batches/{batch_id}/results", ACME)
    assert gone.status_code == 404 and "deleted" in gone.json()["error"]["message"]


def test_ownership_survives_a_restart_and_old_objects_are_the_default_tenants(
    bootstrap: str, tmp_path: Path
) -> None:
    files = tmp_path / "files"
    # Bound beyond loopback, but with tokens: no warning.
    first = start_tenant_ingest(bootstrap, tmp_path, file_dir=str(files), http_host="0.0.0.0")
    try:
        before = Api(first.url)
        acme_file, acme_batch, beta_file = before.file(ACME), before.batch(ACME), before.file(BETA)
        before.client.close()
    finally:
        assert first.process.terminate() == 0, first.process.log()
    assert "without tenant tokens" not in first.process.log()
    # Objects stored before owners were recorded: a file and a batch with no owner.
    legacy_file = FileStore(files).save_upload(io.BytesIO(chat_line("x")), "old.jsonl", "batch")
    legacy_batch = batch_state.new_batch(
        f"batch_{uuid.uuid4().hex}", legacy_file.id, "/v1/chat/completions", "24h", None, "low", 1
    )
    del legacy_batch["tenant"]
    producer = Producer({"bootstrap.servers": bootstrap})
    value = json.dumps({**legacy_batch, "status": "failed", "failed_at": 1}).encode()
    producer.produce(first.topics.batches, value, key=legacy_batch["id"].encode())
    assert producer.flush(30) == 0

    again = start_tenant_ingest(
        bootstrap, tmp_path, first.topics, file_dir=str(files), default_tenant="acme"
    )
    try:
        after = Api(again.url)
        for path, owner in (
            (f"/v1/files/{acme_file}", ACME),
            (f"/v1/batches/{acme_batch}", ACME),
            (f"/v1/files/{beta_file}", BETA),
            (f"/v1/files/{legacy_file.id}", ACME),
            (f"/v1/batches/{legacy_batch['id']}", ACME),
        ):
            intruder = BETA if owner is ACME else ACME
            assert after.call("GET", path, owner).status_code == 200, path
            assert after.call("GET", path, OPS).status_code == 200, path
            assert after.call("GET", path, intruder).status_code == 404, path
        assert legacy_batch["id"] not in after.batch_ids(BETA)
        assert {acme_batch, legacy_batch["id"]} <= set(after.batch_ids(ACME))
        after.client.close()
    finally:
        assert again.process.terminate() == 0, again.process.log()


def test_without_tokens_one_tenant_as_before_and_a_warning_when_exposed(
    bootstrap: str, tmp_path: Path
) -> None:
    service = start_ingest(bootstrap, tmp_path, file_dir=str(tmp_path / "f"), http_host="0.0.0.0")
    try:
        api = Api(service.url)
        as_acme, as_beta = {"X-Kbatch-Tenant": "acme"}, {"X-Kbatch-Tenant": "beta"}
        file_id = api.file(as_acme)
        batch_id = api.batch(as_acme)
        assert api.call("GET", f"/v1/files/{file_id}", as_beta).status_code == 200
        assert api.call("GET", f"/v1/batches/{batch_id}", {}).json()["kbatch"]["tenant"] == "acme"
        assert batch_id in api.batch_ids(as_beta)
        job_id = api.job(as_acme)
        assert api.upload_lines(job_id, as_beta).status_code == 200
        assert api.call("POST", f"/v1/jobs/{job_id}/seal", {}).status_code == 200
        api.client.close()
    finally:
        assert service.process.terminate() == 0, service.process.log()
    warnings = [
        json.loads(line)
        for line in service.process.log().splitlines()
        if "without tenant tokens" in line
    ]
    assert [(w["level"], w["http_host"]) for w in warnings] == [("warning", "0.0.0.0")]
