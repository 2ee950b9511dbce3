"""Bearer tokens per tenant: when tokens are configured, the token names the tenant."""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass

from pydantic import SecretStr
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp

from services.ingest.settings import IngestOptions
from services.ingest.tenancy.access import Caller, caller_for

# Paths no tenant token is asked for. /metrics is not a tenant's to read: with an ops
# token (KBATCH_OPS_TOKEN) set, its route asks for that token alone, so a tenant token does
# not open it, and the ops token opens no Batch API route (it is no tenant's token).
OPEN_PATHS = frozenset({"/healthz", "/metrics", "/openapi.json"})


def tenant_for(authorization: str | None, tokens: Mapping[str, SecretStr]) -> str | None:
    """The tenant whose token the `Authorization: Bearer …` header carries, else None.

    Every token is compared in constant time, so timing tells nothing about which
    tenant's token came close."""
    if not authorization or not authorization.startswith("Bearer "):
        return None
    offered = authorization.removeprefix("Bearer ").strip().encode()
    found = None
    for tenant, token in tokens.items():
        if hmac.compare_digest(offered, token.get_secret_value().encode()):
            found = tenant
    return found


class TenantAuth(BaseHTTPMiddleware):
    """Sets `request.state.tenant` from the token; 401 without a valid one."""

    def __init__(self, app: ASGIApp, tokens: Mapping[str, SecretStr]) -> None:
        super().__init__(app)
        self._tokens = dict(tokens)

    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        if request.url.path in OPEN_PATHS:
            return await call_next(request)
        tenant = tenant_for(request.headers.get("authorization"), self._tokens)
        if tenant is None:
            body = {
                "error": {
                    "message": "a valid bearer token is required",
                    "type": "invalid_request_error",
                    "param": None,
                    "code": "invalid_api_key",
                }
            }
            return JSONResponse(body, status_code=401, headers={"WWW-Authenticate": "Bearer"})
        request.state.tenant = tenant
        return await call_next(request)


@dataclass(frozen=True)
class Callers:
    """Names the caller of each request: its tenant and role (see `access.caller_for`)."""

    tokens_on: bool
    admins: frozenset[str]
    default_tenant: str

    @classmethod
    def from_options(cls, options: IngestOptions) -> Callers:
        return cls(
            bool(options.tenant_tokens), frozenset(options.admin_tenants), options.default_tenant
        )

    def of(self, request: Request) -> Caller:
        token_tenant = getattr(request.state, "tenant", None)
        return caller_for(
            token_tenant if isinstance(token_tenant, str) else None,
            request.headers.get("x-kbatch-tenant"),
            tokens_on=self.tokens_on,
            admins=self.admins,
            default_tenant=self.default_tenant,
        )


def is_loopback(host: str) -> bool:
    """Whether a bind address is reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything
