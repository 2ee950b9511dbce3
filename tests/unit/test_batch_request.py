"""Batch/Files request parameters against OpenAI's limits (pure), and expiring files."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from services.collector.files import FileStore
from services.ingest.api.batch_request import (
    MAX_EXPIRY_S,
    MAX_METADATA_KEY,
    MAX_METADATA_PAIRS,
    MAX_METADATA_VALUE,
    MIN_EXPIRY_S,
    BatchRequest,
    Invalid,
    batch_metadata,
    batch_request,
    expires_after,
    form_expires_after,
)
from services.ingest.batches import batch_state
from services.ingest.tenancy.owned_files import OwnedFiles
from services.lanes import Lane

BODY: dict[str, Any] = {
    "input_file_id": "file-1",
    "endpoint": "/v1/chat/completions",
    "completion_window": "24h",
}

within = st.dictionaries(
    st.text(max_size=MAX_METADATA_KEY),
    st.text(max_size=MAX_METADATA_VALUE),
    max_size=MAX_METADATA_PAIRS,
)


@given(within)
def test_metadata_within_openais_limits_is_kept_whole(metadata: dict[str, str]) -> None:
    asked = batch_request({**BODY, "metadata": metadata})
    assert isinstance(asked, BatchRequest) and asked.metadata == metadata


@given(
    st.one_of(
        st.dictionaries(st.text(max_size=4), st.text(max_size=4), min_size=17, max_size=20),
        st.dictionaries(
            st.text(min_size=MAX_METADATA_KEY + 1, max_size=80), st.text(), min_size=1, max_size=3
        ),
        st.dictionaries(
            st.text(max_size=8),
            st.text(min_size=MAX_METADATA_VALUE + 1, max_size=600),
            min_size=1,
            max_size=3,
        ),
        st.dictionaries(st.text(max_size=8), st.integers() | st.none(), min_size=1, max_size=3),
        st.lists(st.text()) | st.integers() | st.text(),
    )
)
def test_metadata_past_them_is_refused_naming_metadata(metadata: object) -> None:
    refused = batch_metadata(metadata)
    assert isinstance(refused, Invalid) and refused.param == "metadata"
    assert batch_request({**BODY, "metadata": metadata}) == refused


def test_a_batch_request_names_the_parameter_at_fault() -> None:
    asked = batch_request(BODY)
    assert asked == BatchRequest("file-1", "/v1/chat/completions", "24h", None, Lane.NORMAL, None)
    for change, param in (
        ({"input_file_id": None}, "input_file_id"),
        ({"endpoint": "/v1/moderations"}, "endpoint"),
        ({"completion_window": "0h"}, "completion_window"),
        ({"completion_window": 24}, "completion_window"),
        ({"priority": "urgent"}, "priority"),
        ({"output_expires_after": {"anchor": "created_at"}}, "output_expires_after.seconds"),
    ):
        refused = batch_request({**BODY, **change})
        assert isinstance(refused, Invalid) and refused.param == param, (change, refused)
    assert batch_request([BODY]) == Invalid("body must be a JSON object", "body")
    high = batch_request({**BODY, "priority": "high"})
    assert isinstance(high, BatchRequest) and high.priority is Lane.HIGH


@given(st.integers(min_value=MIN_EXPIRY_S - 10, max_value=MAX_EXPIRY_S + 10))
def test_expiry_is_from_one_hour_to_thirty_days(seconds: int) -> None:
    policy = {"anchor": "created_at", "seconds": seconds}
    got = expires_after(policy, "output_expires_after")
    if MIN_EXPIRY_S <= seconds <= MAX_EXPIRY_S:
        assert got == seconds
    else:
        assert got == Invalid(
            "output_expires_after.seconds must be from 3600 (1 hour) to 2592000 (30 days)",
            "output_expires_after.seconds",
        )
    form = {"expires_after[anchor]": "created_at", "expires_after[seconds]": str(seconds)}
    assert isinstance(form_expires_after(form), Invalid) == isinstance(got, Invalid)


def test_expiry_policies_refused() -> None:
    assert form_expires_after({}) is None
    assert expires_after(None, "x") is None
    for policy, param in (
        ({"anchor": "created_at", "seconds": True}, "x.seconds"),
        ({"anchor": "created_at", "seconds": 3600.0}, "x.seconds"),
        ({"anchor": "last_active_at", "seconds": 3600}, "x.anchor"),
        ("3600", "x"),
    ):
        refused = expires_after(policy, "x")
        assert isinstance(refused, Invalid) and refused.param == param, policy
    for form, param in (
        ({"expires_after[seconds]": "3600"}, "expires_after.anchor"),
        ({"expires_after[anchor]": "created_at", "expires_after[seconds]": "1h"}, "seconds"),
    ):
        refused = form_expires_after(form)
        assert isinstance(refused, Invalid) and refused.param.endswith(param), form


def test_the_expiry_policy_stays_off_the_public_batch() -> None:
    batch = batch_state.new_batch(
        "batch_x", "file-1", "/v1/chat/completions", "24h", None, "low", 1,
        output_expires_after_s=3600,
    )  # fmt: skip
    assert batch["output_expires_after_s"] == 3600
    assert "output_expires_after_s" not in batch_state.public(batch)


def test_expired_files_are_hidden_at_once_and_deleted_by_the_sweep(tmp_path: Path) -> None:
    files = OwnedFiles(FileStore(tmp_path), "dflt")
    expiring = files.save_upload(io.BytesIO(b"{}\n"), "a.jsonl", "batch", "acme", 3600)
    kept = files.save_upload(io.BytesIO(b"{}\n"), "b.jsonl", "batch", "acme")
    assert expiring.expires_at == expiring.created_at + 3600 and kept.expires_at is None
    assert expiring.to_json()["expires_at"] == expiring.expires_at
    due = expiring.created_at + 3600
    assert files.get(expiring.id, now_s=due - 1) is not None
    assert files.get(expiring.id, now_s=due) is None
    assert files.delete_expired(due - 1) == []
    assert files.delete_expired(due) == [expiring.id]
    assert files.store.get(expiring.id) is None
    assert not files.content_path(expiring).exists()
    assert [f.file.id for f in files.all()] == [kept.id]
