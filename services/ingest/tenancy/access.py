"""Who may do what to an object (pure): the one authorization decision every route uses.

Every file, batch and streaming job has an owner, the tenant that created it. A
tenant sees and changes only its own; another tenant's object is hidden exactly as a
missing one is (the same 404), so ids reveal nothing. An admin (an operator's token)
reads, lists and cancels everything, but changes (uploads into, seals, deletes,
builds batches from) only its own: for an object it can see, that is a 403. Without
tokens ingest is one trust domain, as it was before tenants were enforced: the
X-Kbatch-Tenant header names the owner of what is created, and nothing is refused.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Role(enum.Enum):
    TENANT = "tenant"
    ADMIN = "admin"
    OPEN = "open"  # no tokens configured: every caller may do everything


class Action(enum.Enum):
    READ = "read"  # retrieve, download, list
    CANCEL = "cancel"
    CHANGE = "change"  # upload into, seal, delete, create a batch from


class Verdict(enum.Enum):
    ALLOW = "allow"
    HIDE = "hide"  # answer exactly as if the object did not exist
    FORBID = "forbid"  # the caller may see the object, not do this to it (403)


@dataclass(frozen=True)
class Caller:
    tenant: str
    role: Role = Role.TENANT


def decide(caller: Caller, owner: str | None, action: Action) -> Verdict:
    """May `caller` do `action` to an object owned by `owner` (None: no such object)?"""
    if owner is None:
        return Verdict.HIDE
    if caller.role is Role.OPEN or caller.tenant == owner:
        return Verdict.ALLOW
    if caller.role is Role.ADMIN:
        return Verdict.ALLOW if action in (Action.READ, Action.CANCEL) else Verdict.FORBID
    return Verdict.HIDE


def can_see(caller: Caller, owner: str | None) -> bool:
    """Whether the object exists for this caller at all: lists show exactly these."""
    return decide(caller, owner, Action.READ) is Verdict.ALLOW


def caller_for(
    token_tenant: str | None,
    claimed_tenant: str | None,
    *,
    tokens_on: bool,
    admins: frozenset[str],
    default_tenant: str,
) -> Caller:
    """The caller of one request. With tokens on, only the token names the tenant (a
    claimed X-Kbatch-Tenant header is ignored; the middleware refused requests without
    a valid token); without tokens, the header or the default names it."""
    if tokens_on:
        if token_tenant is None:
            raise ValueError("tokens are on but the request carries no tenant")
        role = Role.ADMIN if token_tenant in admins else Role.TENANT
        return Caller(token_tenant, role)
    return Caller(claimed_tenant or default_tenant, Role.OPEN)


def owner_or_default(recorded: object, default_tenant: str) -> str:
    """An object's owner: the tenant recorded with it, or the default tenant for objects
    created before owners were recorded."""
    return recorded if isinstance(recorded, str) and recorded else default_tenant
