"""Bearer tokens per tenant: when tokens are configured, the token names the tenant."""

from __future__ import annotations

import hmac
from collections.abc import Mapping

from pydantic import SecretStr
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp

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
                    "code": "invalid_api_key",
                }
            }
            return JSONResponse(body, status_code=401, headers={"WWW-Authenticate": "Bearer"})
        request.state.tenant = tenant
        return await call_next(request)


def request_tenant(request: Request, default: str) -> str:
    """The token's tenant when tokens are on; else the X-Kbatch-Tenant header or `default`."""
    tenant = getattr(request.state, "tenant", None)
    if isinstance(tenant, str):
        return tenant
    return request.headers.get("x-kbatch-tenant", default)
