"""Per-tenant limits (pure): may this tenant queue more requests or store another file?

A shared ingest must not let one tenant take every queued slot or the whole disk.
Queued requests are a tenant's accepted lines not yet completed, failed or
cancelled; a refusal there is worth retrying (Retry-After) unless the request alone
is larger than the limit. Stored files are the tenant's unexpired input files; they
go only when the tenant deletes them or they expire, so a refusal there carries no
Retry-After. A limit of 0 is no limit. Every refusal names the limit and the usage.
"""

from __future__ import annotations

import enum
from collections.abc import Collection
from dataclasses import dataclass

from services.ingest.settings import IngestOptions

# The metrics label of every tenant that is not named in the token settings: such names
# are the caller's choice (X-Kbatch-Tenant without tokens), so they never become labels.
OTHER_TENANTS = "(other)"


class Limit(enum.Enum):
    """Which limit refused: also the `limit` label of the refusal metric."""

    QUEUED_REQUESTS = "queued_requests"
    FILES = "files"
    FILE_BYTES = "file_bytes"


@dataclass(frozen=True)
class TenantLimits:
    """The limits every tenant has (0: none)."""

    queued_requests: int = 0
    files: int = 0
    file_bytes: int = 0

    @classmethod
    def from_options(cls, options: IngestOptions) -> TenantLimits:
        return cls(
            options.max_queued_requests_per_tenant,
            options.max_files_per_tenant,
            options.max_file_bytes_per_tenant,
        )


@dataclass(frozen=True)
class Refusal:
    """Why a tenant's request is refused (HTTP 429)."""

    limit: Limit
    code: str  # the OpenAI error's `code`
    message: str
    retry_after_s: int | None  # None: waiting alone does not make room


def admit_requests(
    tenant: str, queued: int, adding: int, limit: int, retry_after_s: int
) -> Refusal | None:
    """May `tenant`, with `queued` requests unfinished, queue `adding` more? None: yes."""
    if limit == 0 or queued + adding <= limit:
        return None
    if adding > limit:
        message = (
            f"{adding} requests are more than tenant {tenant!r} may ever have queued "
            f"(its limit is {limit}; it has {queued} queued now): split them"
        )
        return Refusal(Limit.QUEUED_REQUESTS, "tenant_queue_limit_exceeded", message, None)
    message = (
        f"tenant {tenant!r} has {queued} requests queued; {adding} more would pass its "
        f"limit of {limit}: retry when some have finished"
    )
    return Refusal(Limit.QUEUED_REQUESTS, "tenant_queue_limit_exceeded", message, retry_after_s)


def requests_that_fit(queued: int, adding: int, limit: int) -> int:
    """How many of `adding` requests (in order) fit under the limit: a streamed upload
    publishes that many and is refused from the next line on."""
    if limit == 0:
        return adding
    return max(0, min(adding, limit - queued))


def admit_file(
    tenant: str, files: int, file_bytes: int, size: int, limits: TenantLimits
) -> Refusal | None:
    """May `tenant`, storing `files` input files of `file_bytes` bytes, store one more
    of `size` bytes? None: yes."""
    code = "tenant_file_quota_exceeded"
    if limits.files and files + 1 > limits.files:
        message = (
            f"tenant {tenant!r} stores {files} files, its limit of {limits.files}: "
            "delete some to upload more"
        )
        return Refusal(Limit.FILES, code, message, None)
    if limits.file_bytes and file_bytes + size > limits.file_bytes:
        message = (
            f"tenant {tenant!r} stores {file_bytes} bytes of files; {size} more would pass "
            f"its limit of {limits.file_bytes} bytes: delete some to upload more"
        )
        return Refusal(Limit.FILE_BYTES, code, message, None)
    return None


def job_queued(accepted: int, done: int, *, ended: bool) -> int:
    """A job's unfinished requests: its accepted ones without an outcome, none once it
    has ended (completed, failed, cancelled or expired)."""
    return 0 if ended else max(0, accepted - done)


def tenant_label(tenant: str, named: Collection[str]) -> str:
    """The metrics label of a tenant: its own name only if the token settings name it."""
    return tenant if tenant in named else OTHER_TENANTS
