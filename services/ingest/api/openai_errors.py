"""OpenAI's error shape, and the refusals every API route gives in it."""

from __future__ import annotations

from collections.abc import Mapping

from starlette.responses import JSONResponse, Response

from services.ingest.tenancy.access import Action, Caller, Verdict, decide
from services.ingest.tenancy.tenant_limits import Refusal


def openai_error(
    status: int,
    message: str,
    param: str | None = None,
    code: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    """OpenAI's error body: `{"error": {"message", "type", "param", "code"}}`."""
    body = {
        "error": {"message": message, "type": "invalid_request_error", "param": param, "code": code}
    }
    return JSONResponse(body, status_code=status, headers=headers)


def guard(caller: Caller, owner: str | None, action: Action, missing: Response) -> Response | None:
    """The answer refusing `action`, or None when the caller may do it. A hidden object
    gets `missing`, the very answer a missing one gets."""
    verdict = decide(caller, owner, action)
    if verdict is Verdict.HIDE:
        return missing
    if verdict is Verdict.FORBID:
        return openai_error(
            403, f"an admin may read and cancel another tenant's objects, not {action.value} them"
        )
    return None


def refused(refusal: Refusal) -> Response:
    """A per-tenant limit's 429, in OpenAI's error shape."""
    headers = None if refusal.retry_after_s is None else {"Retry-After": str(refusal.retry_after_s)}
    return openai_error(429, refusal.message, code=refusal.code, headers=headers)
