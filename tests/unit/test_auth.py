"""Bearer token to tenant (pure)."""

from __future__ import annotations

from pydantic import SecretStr

from services.ingest.tenancy.auth import tenant_for

TOKENS = {"acme": SecretStr("tok-a"), "beta": SecretStr("tok-b")}


def test_the_token_names_the_tenant() -> None:
    assert tenant_for("Bearer tok-b", TOKENS) == "beta"
    assert tenant_for("Bearer tok-a ", TOKENS) == "acme"


def test_missing_malformed_or_unknown_tokens_name_nobody() -> None:
    for header in (None, "", "tok-a", "Basic tok-a", "Bearer tok-c", "Bearer tok-", "Bearer "):
        assert tenant_for(header, TOKENS) is None
