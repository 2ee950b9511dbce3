"""Every Batch/Files route's raw JSON against the official `openai` package's models.

Plain httpx, not the openai client (which parses leniently and keeps unknown keys):
each body is validated strictly, and must carry no key OpenAI's model does not know,
at any depth, but the one `kbatch` extension object of batches. Errors must have
OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Literal, TypeVar

import httpx
import pytest
from openai.types import Batch, FileDeleted, FileObject
from pydantic import BaseModel, ConfigDict

from services.harness.kafka import wait_for
from tests.hostile.test_tenants import ACME, TOKENS, tenant_ingest_with_worker
from tests.integration.test_ingest import Ingest, chat_line

pytestmark = pytest.mark.integration

M = TypeVar("M", bound=BaseModel)
# kbatch's own fields, all under one key: OpenAI's clients keep it as an extra.
EXTENSIONS: dict[type[BaseModel], frozenset[str]] = {Batch: frozenset({"kbatch"})}


class Page(BaseModel):
    """OpenAI's list envelope (ListBatchesResponse, ListFilesResponse); `data` is
    validated item by item against the item's own model."""

    model_config = ConfigDict(extra="forbid", strict=True)
    object: Literal["list"]
    data: list[dict[str, Any]]
    first_id: str | None  # null on an empty page, as OpenAI answers
    last_id: str | None
    has_more: bool


class ErrorDetail(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    error: ErrorDetail


def no_unknown_keys(model: BaseModel, allowed: frozenset[str] = frozenset()) -> None:
    """OpenAI's models allow extra keys; here none may hide, at any depth."""
    extra = set(model.model_extra or {}) - allowed
    assert not extra, f"{type(model).__name__} has keys OpenAI's model does not: {extra}"
    for name in type(model).model_fields:
        value = getattr(model, name)
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, BaseModel):
                no_unknown_keys(item)


def exact(model: type[M], body: dict[str, Any]) -> M:
    """`body` as `model`, validated strictly. Strict holds for every model here, their
    Literal enums too: JSON strings match string literals exactly, and no field needs a
    coercion (an int is an int, a timestamp is no float)."""
    required = {name for name, field in model.model_fields.items() if field.is_required()}
    assert required <= set(body), f"{model.__name__} misses {required - set(body)}"
    parsed = model.model_validate(body, strict=True)
    no_unknown_keys(parsed, EXTENSIONS.get(model, frozenset()))
    return parsed


def answer(reply: httpx.Response, model: type[M], status: int = 200) -> M:
    assert reply.status_code == status, (reply.request.url, reply.status_code, reply.text)
    assert reply.headers["content-type"].startswith("application/json")
    body = reply.json()
    assert isinstance(body, dict)
    return exact(model, body)


def page(reply: httpx.Response, item: type[M]) -> tuple[Page, list[M]]:
    listed = answer(reply, Page)
    items = [exact(item, entry) for entry in listed.data]
    ids = [entry["id"] for entry in listed.data]
    assert (listed.first_id, listed.last_id) == ((ids[0], ids[-1]) if ids else (None, None))
    return listed, items


def refused(reply: httpx.Response, status: int, param: str | None = None) -> ErrorDetail:
    detail = answer(reply, ErrorBody, status).error
    assert detail.message and detail.type == "invalid_request_error"
    assert detail.param == param, detail
    return detail


@pytest.fixture(scope="module")
def ingest(bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ingest]:
    tmp_path = tmp_path_factory.mktemp("parity")
    with tenant_ingest_with_worker(bootstrap, tmp_path, "w-parity") as service:
        yield service


@pytest.fixture
def api(ingest: Ingest) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=ingest.url, headers=ACME, timeout=30) as client:
        yield client


def upload(api: httpx.Client, lines: int = 2, form: dict[str, str] | None = None) -> httpx.Response:
    content = b"\n".join(chat_line(f"p{i}", max_tokens=3) for i in range(lines)) + b"\n"
    return api.post(
        "/v1/files",
        data={"purpose": "batch", **(form or {})},
        files={"file": ("in.jsonl", content, "application/jsonl")},
    )


def wait_batch(api: httpx.Client, batch_id: str, wanted: set[str]) -> Batch:
    def reached() -> Batch | None:
        batch = answer(api.get(f"/v1/batches/{batch_id}"), Batch)
        return batch if batch.status in wanted else None

    found: Batch = wait_for(reached, 60, f"{batch_id} reaching {wanted}", interval_s=0.3)
    return found


def test_file_routes(api: httpx.Client) -> None:
    policy = {"expires_after[anchor]": "created_at", "expires_after[seconds]": "7200"}
    expiring = upload(api, form=policy)
    made = answer(expiring, FileObject)
    assert (made.purpose, made.status, made.filename) == ("batch", "processed", "in.jsonl")
    assert made.expires_at == made.created_at + 7200
    kept = answer(upload(api, lines=3), FileObject)
    assert kept.expires_at is None and kept.bytes > made.bytes

    assert answer(api.get(f"/v1/files/{made.id}"), FileObject) == made
    content = api.get(f"/v1/files/{made.id}/content")
    assert content.status_code == 200 and content.content.count(b"\n") == 2
    listed, files = page(api.get("/v1/files", params={"limit": 1}), FileObject)
    assert listed.has_more is True and len(files) == 1
    listed, files = page(api.get("/v1/files", params={"order": "asc"}), FileObject)
    # Oldest first by created_at, in seconds: files made in the same second may come in
    # either order.
    assert [f.created_at for f in files] == sorted(f.created_at for f in files)
    assert {made.id, kept.id} <= {f.id for f in files} and listed.has_more is False
    empty, _ = page(api.get("/v1/files", params={"purpose": "fine-tune"}), FileObject)
    assert empty.data == []

    deleted = answer(api.delete(f"/v1/files/{made.id}"), FileDeleted)
    assert (deleted.id, deleted.deleted, deleted.object) == (made.id, True, "file")
    refused(api.get(f"/v1/files/{made.id}"), 404, "file_id")
    refused(api.get(f"/v1/files/{made.id}/content"), 404, "file_id")
    refused(api.delete(f"/v1/files/{made.id}"), 404, "file_id")


def test_batch_routes_and_metadata(api: httpx.Client) -> None:
    file_id = answer(upload(api, lines=3), FileObject).id
    metadata = {"project": "parity", "k" * 64: "v" * 512, **{f"m{i}": str(i) for i in range(14)}}
    created = api.post(
        "/v1/batches",
        json={
            "input_file_id": file_id,
            "endpoint": "/v1/chat/completions",
            "completion_window": "24h",
            "metadata": metadata,
            "output_expires_after": {"anchor": "created_at", "seconds": 3600},
        },
    )
    batch = answer(created, Batch)
    assert (batch.status, batch.input_file_id, batch.metadata) == ("validating", file_id, metadata)
    assert answer(api.get(f"/v1/batches/{batch.id}"), Batch).metadata == metadata

    done = wait_batch(api, batch.id, {"completed", "failed"})
    assert done.status == "completed" and done.metadata == metadata, done
    assert done.request_counts is not None and done.request_counts.completed == 3
    assert done.output_file_id is not None and done.completed_at is not None
    output = answer(api.get(f"/v1/files/{done.output_file_id}"), FileObject)
    assert output.purpose == "batch_output" and output.expires_at == output.created_at + 3600

    listed, batches = page(api.get("/v1/batches", params={"limit": 100}), Batch)
    assert batch.id in [b.id for b in batches] and listed.has_more is False
    first, _ = page(api.get("/v1/batches", params={"limit": 1}), Batch)
    assert len(first.data) == 1
    refused(api.post(f"/v1/batches/{batch.id}/cancel"), 409, "batch_id")


def test_cancel(api: httpx.Client) -> None:
    # Long requests (1,500 tokens a 10 ms step), so the batch is running when cancelled.
    lines = b"\n".join(chat_line(f"long{i}", max_tokens=1500) for i in range(20)) + b"\n"
    uploaded = api.post(
        "/v1/files", data={"purpose": "batch"}, files={"file": ("long.jsonl", lines)}
    )
    body = {
        "input_file_id": answer(uploaded, FileObject).id,
        "endpoint": "/v1/chat/completions",
        "completion_window": "24h",
    }
    batch = answer(api.post("/v1/batches", json=body), Batch)
    assert batch.metadata is None
    cancelling = answer(api.post(f"/v1/batches/{batch.id}/cancel"), Batch)
    assert cancelling.status == "cancelling" and cancelling.cancelling_at is not None
    ended = wait_batch(api, batch.id, {"cancelled"})
    assert ended.cancelled_at is not None and ended.error_file_id is not None


BAD_METADATA: list[tuple[object, str]] = [
    ({f"k{i}": "v" for i in range(17)}, "17 pairs; at most 16"),
    ({"k" * 65: "v"}, "65 characters; at most 64"),
    ({"k": "v" * 513}, "513 characters; at most 512"),
    ({"k": 1}, "must be a string"),
    (["k", "v"], "must be an object"),
]
BAD_EXPIRY: list[tuple[object, str]] = [
    ({"anchor": "last_active_at", "seconds": 3600}, "output_expires_after.anchor"),
    ({"anchor": "created_at", "seconds": 3599}, "output_expires_after.seconds"),
    ({"anchor": "created_at", "seconds": 2_592_001}, "output_expires_after.seconds"),
    ({"anchor": "created_at", "seconds": "3600"}, "output_expires_after.seconds"),
    ("3600", "output_expires_after"),
]


def test_refusals_have_openais_error_shape(api: httpx.Client, ingest: Ingest) -> None:
    file_id = answer(upload(api), FileObject).id
    batch = {
        "input_file_id": file_id,
        "endpoint": "/v1/chat/completions",
        "completion_window": "24h",
    }
    for value, reason in BAD_METADATA:
        detail = refused(
            api.post("/v1/batches", json={**batch, "metadata": value}), 400, "metadata"
        )
        assert reason in detail.message, detail
    for value, param in BAD_EXPIRY:
        refused(api.post("/v1/batches", json={**batch, "output_expires_after": value}), 400, param)
    for name, value in (
        ("endpoint", "/v1/moderations"),
        ("completion_window", "soon"),
        ("priority", "urgent"),
        ("input_file_id", 7),
    ):
        refused(api.post("/v1/batches", json={**batch, name: value}), 400, name)
    refused(
        api.post("/v1/batches", json={**batch, "input_file_id": "file-x"}), 400, "input_file_id"
    )
    refused(api.post("/v1/batches", content=b"{"), 400)
    refused(api.post("/v1/batches", json=[batch]), 400, "body")
    for form, param in (
        ({"purpose": "fine-tune"}, "purpose"),
        ({"expires_after[anchor]": "created_at"}, "expires_after.seconds"),
        ({"expires_after[seconds]": "3600"}, "expires_after.anchor"),
        (
            {"expires_after[anchor]": "created_at", "expires_after[seconds]": "60"},
            "expires_after.seconds",
        ),
    ):
        refused(upload(api, form=form), 400, param)
    for params in ({"limit": "0"}, {"limit": "101"}, {"limit": "many"}):
        refused(api.get("/v1/batches", params=params), 400, "limit")
    refused(api.get("/v1/files", params={"order": "sideways"}), 400, "order")
    refused(api.get("/v1/batches/batch_nosuch"), 404, "batch_id")
    refused(api.post("/v1/batches/batch_nosuch/cancel"), 404, "batch_id")
    refused(api.get("/v1/files/file-nosuch"), 404, "file_id")
    refused(api.get("/v1/nosuch"), 404)
    refused(api.put("/v1/batches"), 405)
    unauthorized = httpx.get(f"{ingest.url}/v1/batches", timeout=10)
    assert refused(unauthorized, 401).code == "invalid_api_key"
    assert TOKENS["acme"] not in unauthorized.text
