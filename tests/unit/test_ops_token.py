"""The ops token (KBATCH_OPS_TOKEN) in front of /metrics and the scheduler's views (pure)."""

from __future__ import annotations

import stat
from pathlib import Path

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import SecretStr, ValidationError
from starlette.applications import Starlette

from services.ingest.settings import IngestSettings
from services.ops_http import ops_authorized, ops_routes, prometheus_authorization
from services.settings import CommonSettings

TOKEN = SecretStr("ops-s3cret")


def test_without_a_token_everything_is_open() -> None:
    for header in (None, "", "Bearer anything", "Basic x"):
        assert ops_authorized(header, None)


def test_only_the_bearer_token_opens() -> None:
    assert ops_authorized("Bearer ops-s3cret", TOKEN)
    assert ops_authorized("bearer ops-s3cret ", TOKEN)  # the scheme is case-insensitive
    for header in (
        None,
        "",
        "ops-s3cret",
        "Basic ops-s3cret",
        "Bearer",
        "Bearer ",
        "Bearer ops-s3cre",
        "Bearer ops-s3cretX",
        "Bearer OPS-S3CRET",
    ):
        assert not ops_authorized(header, TOKEN), header


@given(st.text(max_size=40))
def test_no_other_credential_opens(offered: str) -> None:
    if offered.strip() != TOKEN.get_secret_value():
        assert not ops_authorized(f"Bearer {offered}", TOKEN)


def test_the_setting_reads_kbatch_ops_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KBATCH_OPS_TOKEN", raising=False)
    assert CommonSettings().ops_token is None
    assert CommonSettings().ops_headers() == {}
    monkeypatch.setenv("KBATCH_OPS_TOKEN", "")  # compose's ${KBATCH_OPS_TOKEN:-}: no token
    assert CommonSettings().ops_token is None
    monkeypatch.setenv("KBATCH_OPS_TOKEN", "ops-s3cret")
    settings = CommonSettings()
    assert settings.ops_headers() == {"Authorization": "Bearer ops-s3cret"}
    assert "ops-s3cret" not in repr(settings) and "ops-s3cret" not in str(settings)


def _client(ops_token: SecretStr | None) -> httpx.AsyncClient:
    app = Starlette(routes=ops_routes(lambda: (True, {}), ops_token=ops_token))
    return httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://ops")


async def test_metrics_answers_401_without_the_token_and_healthz_stays_open() -> None:
    async with _client(TOKEN) as client:
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            refused = await client.get("/metrics", headers=headers)
            assert refused.status_code == 401
            assert refused.headers["WWW-Authenticate"] == "Bearer"
            assert "KBATCH_OPS_TOKEN" in refused.json()["error"]["message"]
            assert "ops-s3cret" not in refused.text
        answered = await client.get("/metrics", headers={"Authorization": "Bearer ops-s3cret"})
        assert answered.status_code == 200 and "python_info" in answered.text
        assert (await client.get("/healthz")).status_code == 200
    async with _client(None) as client:
        assert (await client.get("/metrics")).status_code == 200


def test_prometheus_reads_the_token_from_a_private_file(tmp_path: Path) -> None:
    assert prometheus_authorization(None, tmp_path) == {}
    keys = prometheus_authorization(TOKEN, tmp_path)
    path = Path(keys["authorization"]["credentials_file"])
    assert path.read_text() == "ops-s3cret" and "ops-s3cret" not in str(keys)
    assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0


def test_ingest_refuses_an_ops_token_that_is_also_a_tenants(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("KBATCH_INGEST__TENANT_TOKENS", '{"acme": "s3cret-acme"}')
    monkeypatch.setenv("KBATCH_OPS_TOKEN", "s3cret-acme")
    with pytest.raises(ValidationError, match="ops_token must not be one of") as refused:
        IngestSettings()
    assert "s3cret-acme" not in str(refused.value)
    monkeypatch.setenv("KBATCH_OPS_TOKEN", "s3cret-ops")
    assert IngestSettings().ops_token is not None
