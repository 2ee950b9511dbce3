"""The authorization decision (pure) and where ownership is kept (files on disk)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import SecretStr, ValidationError

from services.collector.files import FileStore
from services.ingest.batches import batch_state
from services.ingest.settings import IngestOptions
from services.ingest.tenancy.access import (
    Action,
    Caller,
    Role,
    Verdict,
    caller_for,
    can_see,
    decide,
    owner_or_default,
)
from services.ingest.tenancy.auth import is_loopback
from services.ingest.tenancy.owned_files import OwnedFiles

tenants = st.sampled_from(["acme", "beta", "ops", "default", ""]) | st.text(max_size=8)
callers = st.builds(Caller, tenants, st.sampled_from(Role))
owners = st.none() | tenants
actions = st.sampled_from(Action)


@given(callers, owners, actions)
def test_the_owner_may_do_anything_and_a_missing_object_is_hidden_from_all(
    caller: Caller, owner: str | None, action: Action
) -> None:
    verdict = decide(caller, owner, action)
    if owner is None:
        assert verdict is Verdict.HIDE
    elif owner == caller.tenant:
        assert verdict is Verdict.ALLOW


@given(tenants, tenants, actions)
def test_another_tenants_object_is_exactly_a_missing_one(
    caller: str, owner: str, action: Action
) -> None:
    if caller != owner:
        assert decide(Caller(caller), owner, action) is decide(Caller(caller), None, action)
        assert not can_see(Caller(caller), owner)


@given(tenants, tenants)
def test_an_admin_reads_and_cancels_everything_and_changes_only_its_own(
    admin: str, owner: str
) -> None:
    caller = Caller(admin, Role.ADMIN)
    assert decide(caller, owner, Action.READ) is Verdict.ALLOW
    assert decide(caller, owner, Action.CANCEL) is Verdict.ALLOW
    assert can_see(caller, owner)
    expected = Verdict.ALLOW if admin == owner else Verdict.FORBID
    assert decide(caller, owner, Action.CHANGE) is expected


@given(tenants, tenants, actions)
def test_without_tokens_nothing_existing_is_refused(
    caller: str, owner: str, action: Action
) -> None:
    assert decide(Caller(caller, Role.OPEN), owner, action) is Verdict.ALLOW


@given(callers, owners, actions)
def test_a_refusal_never_tells_a_non_admin_that_the_object_exists(
    caller: Caller, owner: str | None, action: Action
) -> None:
    if caller.role is not Role.ADMIN:
        assert decide(caller, owner, action) is not Verdict.FORBID


ADMINS = frozenset({"ops"})


def test_with_tokens_only_the_token_names_the_tenant() -> None:
    def token_caller(token_tenant: str | None, claimed: str | None) -> Caller:
        return caller_for(
            token_tenant, claimed, tokens_on=True, admins=ADMINS, default_tenant="default"
        )

    assert token_caller("acme", "beta") == Caller("acme", Role.TENANT)
    assert token_caller("ops", None) == Caller("ops", Role.ADMIN)
    # An admin's name in the header makes nobody an admin.
    assert token_caller("beta", "ops") == Caller("beta", Role.TENANT)
    with pytest.raises(ValueError):
        token_caller(None, "acme")


def test_without_tokens_the_header_or_the_default_names_the_tenant() -> None:
    def open_caller(claimed: str | None) -> Caller:
        return caller_for(None, claimed, tokens_on=False, admins=ADMINS, default_tenant="dflt")

    assert open_caller("acme") == Caller("acme", Role.OPEN)
    assert open_caller(None) == Caller("dflt", Role.OPEN)
    assert open_caller("") == Caller("dflt", Role.OPEN)


def test_objects_from_before_owners_belong_to_the_default_tenant() -> None:
    assert owner_or_default(None, "dflt") == "dflt"
    assert owner_or_default("", "dflt") == "dflt"
    assert owner_or_default("acme", "dflt") == "acme"
    legacy = batch_state.new_batch("b", "f", "/v1/embeddings", "24h", None, "low", 5)
    del legacy["tenant"]
    assert batch_state.owner(legacy, "dflt") == "dflt"
    owned = batch_state.new_batch("b", "f", "/v1/embeddings", "24h", None, "low", 5, tenant="t")
    assert batch_state.owner(owned, "dflt") == "t"
    assert batch_state.public(owned)["kbatch"]["tenant"] == "t"
    assert "tenant" not in batch_state.public(owned)


def test_loopback_addresses() -> None:
    for host in ("127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost"):
        assert is_loopback(host), host
    for host in ("0.0.0.0", "::", "10.0.0.5", "example.com", ""):
        assert not is_loopback(host), host


def test_tokens_must_be_distinct_and_admins_must_have_one() -> None:
    def options(tokens: dict[str, str], admins: list[str]) -> IngestOptions:
        return IngestOptions.model_validate(
            {"tenant_tokens": {t: SecretStr(v) for t, v in tokens.items()}, "admin_tenants": admins}
        )

    assert options({"a": "x", "ops": "y"}, ["ops"]).admin_tenants == ("ops",)
    for tokens, admins in (({"a": "x", "b": "x"}, []), ({"a": " "}, []), ({"a": "x"}, ["ops"])):
        with pytest.raises(ValidationError) as refused:
            options(tokens, admins)
        assert "'x'" not in str(refused.value)  # the refusal never echoes a token


def test_a_files_owner_is_kept_on_disk_and_survives_a_new_store(tmp_path: Path) -> None:
    files = OwnedFiles(FileStore(tmp_path), "dflt")
    saved = files.save_upload(io.BytesIO(b"{}\n"), "in.jsonl", "batch", "acme")
    found = files.get(saved.id)
    assert found is not None and (found.owner, found.file) == ("acme", saved)
    assert files.content_path(saved).read_bytes() == b"{}\n"

    again = OwnedFiles(FileStore(tmp_path), "other-default")
    reread = again.get(saved.id)
    assert reread is not None and reread.owner == "acme"

    (tmp_path / "jobs").mkdir()
    (tmp_path / "jobs" / "out.jsonl").write_bytes(b"1\n")
    output = again.register_output("file-b-output", "jobs/out.jsonl", "o", "batch_output", "beta")
    assert (again.get(output.id) or pytest.fail()).owner == "beta"

    assert again.delete(saved.id)
    assert again.get(saved.id) is None
    assert sorted(p.name for p in (tmp_path / "files").iterdir()) == [
        "file-b-output.json",
        "file-b-output.owner",
    ]


def test_a_file_stored_before_owners_belongs_to_the_default_tenant(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    legacy = store.save_upload(io.BytesIO(b"{}\n"), "old.jsonl", "batch")
    assert not list((tmp_path / "files").glob("*.owner"))
    found = OwnedFiles(store, "dflt").get(legacy.id)
    assert found is not None and found.owner == "dflt"
    assert json.loads((tmp_path / "files" / f"{legacy.id}.json").read_text())["id"] == legacy.id
