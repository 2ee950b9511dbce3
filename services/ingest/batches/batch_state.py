"""Batch objects and their states (pure): OpenAI's fields, kbatch's progress.

States: validating -> failed | in_progress -> finalizing -> completed; a cancel moves
in_progress to cancelling -> cancelled, and a batch past its completion window goes
the same way to expired. A batch leaves in_progress/cancelling only when the
collector has written a line for every accepted request. `step` is the one transition
after validation: ingest's refresher applies it to every moving batch on an interval.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from services.ingest.tenancy.access import owner_or_default

TERMINAL = frozenset({"failed", "completed", "expired", "cancelled"})
_WINDOW = re.compile(r"^(\d+)([hd])$")
# Kept with the batch, not part of OpenAI's batch object.
_PRIVATE = ("priority", "expired_by_window", "tenant", "output_expires_after_s", "models")


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
    """What is known of a batch's job at one moment."""

    completed: int  # live counts (the scheduler's job progress, else the collector's)
    failed: int
    output_lines: int  # lines the collector has written to the job's output file
    error_lines: int  # ... and to its error file
    # Summed from the results behind those lines, so at the end they match the files.
    input_tokens: int = 0
    output_tokens: int = 0
    model: str | None = None  # the served model named by the job's first result
    cached_tokens: int = 0  # of input_tokens, served from engines' prefix caches

    @property
    def collected(self) -> int:
        return self.output_lines + self.error_lines


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
    output_expires_after_s: int | None = None,  # its output and error files' lifetime
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
        "model": None,
        "usage": usage(0, 0),
        "priority": priority,
        "tenant": tenant,
        "output_expires_after_s": output_expires_after_s,
    }


def usage(input_tokens: int, output_tokens: int, cached_tokens: int = 0) -> dict[str, Any]:
    """OpenAI's batch usage: cached tokens summed from the results (an engine that does
    not report them adds none); no engine reports reasoning tokens (0, as OpenAI's are
    for a model without them)."""
    return {
        "input_tokens": input_tokens,
        "input_tokens_details": {"cached_tokens": cached_tokens},
        "output_tokens": output_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": input_tokens + output_tokens,
    }


def owner(batch: dict[str, Any], default_tenant: str) -> str:
    """The tenant that created the batch; the default tenant for batches stored before
    owners were recorded."""
    return owner_or_default(batch.get("tenant"), default_tenant)


def validated(
    batch: dict[str, Any],
    accepted: int,
    errors: list[dict[str, Any]],
    now_s: int,
    models: Iterable[str] = (),
) -> dict[str, Any]:
    """After the input file went through ingest: failed when nothing was accepted, and
    still cancelling when a cancel came while it was validating. A file may mix models
    (each line goes to its own model's workers): `model` is the one model its lines
    name, or None when they name several; `kbatch.models` lists them."""
    error_list = {"object": "list", "data": errors} if errors else None
    counts = {"total": accepted, "completed": 0, "failed": 0}
    named = sorted(set(models))
    batch = {**batch, "models": named, "model": named[0] if len(named) == 1 else None}
    cancelling = batch["status"] == "cancelling"
    if accepted == 0:
        return {
            **batch,
            "status": "cancelling" if cancelling else "failed",
            "failed_at": now_s,
            "errors": error_list,
            "request_counts": counts,
        }
    return {
        **batch,
        "status": "cancelling" if cancelling else "in_progress",
        "in_progress_at": now_s,
        "errors": error_list,
        "request_counts": counts,
    }


def validating(batch: dict[str, Any]) -> bool:
    """Its input file is still going through ingest (perhaps cancelled meanwhile): its
    total is not known yet, so nothing may move it but the end of validation."""
    return (
        batch["status"] not in TERMINAL
        and batch["in_progress_at"] is None
        and batch["failed_at"] is None
    )


def moving(batch: dict[str, Any]) -> bool:
    """Validated and not ended: `step` may move it on."""
    return batch["status"] not in TERMINAL and not validating(batch)


def cancel_requested(batch: dict[str, Any], now_s: int) -> dict[str, Any]:
    if batch["status"] in TERMINAL or batch["status"] == "cancelling":
        return batch
    return {**batch, "status": "cancelling", "cancelling_at": now_s}


def expired_now(batch: dict[str, Any], now_s: int) -> bool:
    """Past its window and still running: it must stop like a cancelled one."""
    return batch["status"] in ("in_progress", "finalizing") and now_s >= batch["expires_at"]


def step(batch: dict[str, Any], progress: Progress, now_s: int) -> dict[str, Any] | None:
    """The batch moved on by what is known of its job at `now_s`, or None when that
    changes nothing (a validating or ended batch never changes here).

    Live counts are taken; a batch whose every line is collected ends (completed, or
    cancelled/expired when stopping), with the collector's line counts as its final
    counts and the files that hold lines as its output and error files; one past its
    window otherwise starts stopping as expired (the caller cancels its job); one whose
    every request has an outcome, but not every line yet, is finalizing. Usage and model
    follow the collected lines throughout."""
    if not moving(batch):
        return None
    total = batch["request_counts"]["total"]
    status = batch["status"]
    seen = {
        **batch,
        "usage": usage(progress.input_tokens, progress.output_tokens, progress.cached_tokens),
        # A batch whose lines named its models at validation keeps that answer.
        "model": batch.get("model")
        if batch.get("models")
        else progress.model or batch.get("model"),
    }
    if progress.collected >= total:
        if status == "cancelling":
            status = "expired" if batch.get("expired_by_window") else "cancelled"
        else:
            status = "completed"
        updated = _ended(seen, progress, status, now_s)
    else:
        counts = {"total": total, "completed": progress.completed, "failed": progress.failed}
        updated = {**seen, "request_counts": counts}
        if expired_now(batch, now_s):
            updated = {**cancel_requested(updated, now_s), "expired_by_window": True}
        elif status == "in_progress" and progress.completed + progress.failed >= total:
            updated = {**updated, "status": "finalizing", "finalizing_at": now_s}
    return None if updated == batch else updated


def _ended(batch: dict[str, Any], progress: Progress, status: str, now_s: int) -> dict[str, Any]:
    batch_id = batch["id"]
    ended = {
        **batch,
        "status": status,
        f"{status}_at": now_s,
        # Final counts are the files' own: every outcome has its line by now.
        "request_counts": {
            "total": batch["request_counts"]["total"],
            "completed": progress.output_lines,
            "failed": progress.error_lines,
        },
        "output_file_id": output_file_id(batch_id, "output") if progress.output_lines else None,
        "error_file_id": output_file_id(batch_id, "errors") if progress.error_lines else None,
    }
    if status == "completed":
        ended["finalizing_at"] = batch["finalizing_at"] or now_s
    return ended


def output_file_id(batch_id: str, kind: str) -> str:
    """The id of a batch's output ('output') or error ('errors') file."""
    return f"file-{batch_id}-{kind}"


def public(batch: dict[str, Any], unserved: frozenset[str] = frozenset()) -> dict[str, Any]:
    """The object as OpenAI clients expect it (kbatch's own fields kept, clearly named).
    `unserved`: registered models no live worker serves now; a running batch naming
    any of them says it waits for a worker serving them."""
    body = {k: v for k, v in batch.items() if k not in _PRIVATE}
    models = batch.get("models", [])
    running = batch["status"] in ("validating", "in_progress", "finalizing")
    body["kbatch"] = {
        "priority": batch["priority"],
        "tenant": batch.get("tenant"),
        "models": models,
        "waiting_for_worker": sorted(unserved.intersection(models)) if running else [],
    }
    return body
