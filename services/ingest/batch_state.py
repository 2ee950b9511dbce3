"""Batch objects and their states (pure): OpenAI's fields, kbatch's progress.

States: validating -> failed | in_progress -> finalizing -> completed; a cancel moves
in_progress to cancelling -> cancelled, and a batch past its completion window goes
the same way to expired. A batch leaves in_progress/cancelling only when the
collector has written a line for every accepted request.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from services.ingest.access import owner_or_default

TERMINAL = frozenset({"failed", "completed", "expired", "cancelled"})
_WINDOW = re.compile(r"^(\d+)([hd])$")


def window_seconds(completion_window: str) -> int:
    """'24h' -> 86400; OpenAI accepts only 24h, kbatch any hours or days."""
    match = _WINDOW.match(completion_window)
    if not match or int(match.group(1)) == 0:
        raise ValueError(
            f"completion_window must look like '24h' or '7d', not {completion_window!r}"
        )
    return int(match.group(1)) * (3600 if match.group(2) == "h" else 86400)


@dataclass(frozen=True)
class Progress:
    total: int  # accepted requests
    completed: int  # live counts (the scheduler's job progress, else the collector's)
    failed: int
    collected: int  # lines the collector has written, output and errors together


def new_batch(
    batch_id: str,
    input_file_id: str,
    endpoint: str,
    completion_window: str,
    metadata: dict[str, str] | None,
    priority: str,
    now_s: int,
    *,
    tenant: str | None = None,  # None: the default tenant's (as batches from before owners)
) -> dict[str, Any]:
    return {
        "id": batch_id,
        "object": "batch",
        "endpoint": endpoint,
        "errors": None,
        "input_file_id": input_file_id,
        "completion_window": completion_window,
        "status": "validating",
        "output_file_id": None,
        "error_file_id": None,
        "created_at": now_s,
        "in_progress_at": None,
        "expires_at": now_s + window_seconds(completion_window),
        "finalizing_at": None,
        "completed_at": None,
        "failed_at": None,
        "expired_at": None,
        "cancelling_at": None,
        "cancelled_at": None,
        "request_counts": {"total": 0, "completed": 0, "failed": 0},
        "metadata": metadata,
        "priority": priority,
        "tenant": tenant,
    }


def owner(batch: dict[str, Any], default_tenant: str) -> str:
    """The tenant that created the batch; the default tenant for batches stored before
    owners were recorded."""
    return owner_or_default(batch.get("tenant"), default_tenant)


def validated(
    batch: dict[str, Any], accepted: int, errors: list[dict[str, Any]], now_s: int
) -> dict[str, Any]:
    """After the input file went through ingest: failed when nothing was accepted."""
    error_list = {"object": "list", "data": errors} if errors else None
    counts = {"total": accepted, "completed": 0, "failed": 0}
    if accepted == 0:
        return {
            **batch,
            "status": "failed",
            "failed_at": now_s,
            "errors": error_list,
            "request_counts": counts,
        }
    return {
        **batch,
        "status": "in_progress",
        "in_progress_at": now_s,
        "errors": error_list,
        "request_counts": counts,
    }


def cancel_requested(batch: dict[str, Any], now_s: int) -> dict[str, Any]:
    if batch["status"] in TERMINAL or batch["status"] == "cancelling":
        return batch
    return {**batch, "status": "cancelling", "cancelling_at": now_s}


def expired_now(batch: dict[str, Any], now_s: int) -> bool:
    """Past its window and still running: it must stop like a cancelled one."""
    return batch["status"] in ("in_progress", "finalizing") and now_s >= batch["expires_at"]


def advance(batch: dict[str, Any], progress: Progress, now_s: int) -> dict[str, Any]:
    """The batch with live counts and whatever state they lead to."""
    status = batch["status"]
    if status in TERMINAL or status == "validating":
        return batch
    counts = {"total": progress.total, "completed": progress.completed, "failed": progress.failed}
    updated = {**batch, "request_counts": counts}
    collected_all = progress.collected >= progress.total
    if status == "cancelling":
        if not collected_all:
            return updated
        final = "expired" if batch.get("expired_by_window") else "cancelled"
        return {**updated, "status": final, f"{final}_at": now_s}
    if collected_all:
        finalizing_at = batch["finalizing_at"] or now_s
        return {
            **updated,
            "status": "completed",
            "finalizing_at": finalizing_at,
            "completed_at": now_s,
        }
    if progress.completed + progress.failed >= progress.total:
        return {**updated, "status": "finalizing", "finalizing_at": batch["finalizing_at"] or now_s}
    return updated


def public(batch: dict[str, Any]) -> dict[str, Any]:
    """The object as OpenAI clients expect it (kbatch's own fields kept, clearly named)."""
    body = {k: v for k, v in batch.items() if k not in ("priority", "expired_by_window", "tenant")}
    body["kbatch"] = {"priority": batch["priority"], "tenant": batch.get("tenant")}
    return body
