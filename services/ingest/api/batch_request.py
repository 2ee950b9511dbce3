"""What a Batch/Files API request asks for (pure): OpenAI's parameters checked against
OpenAI's limits, each refusal naming the parameter it is about."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from services.ingest.admission.validation import ENDPOINTS
from services.ingest.batches.batch_state import window_seconds
from services.lanes import Lane

# OpenAI's metadata: at most 16 pairs of strings, keys up to 64 characters, values 512.
MAX_METADATA_PAIRS = 16
MAX_METADATA_KEY = 64
MAX_METADATA_VALUE = 512
# OpenAI's expiry policies: `created_at` plus 1 hour to 30 days.
MIN_EXPIRY_S = 3600
MAX_EXPIRY_S = 30 * 86400


@dataclass(frozen=True)
class Invalid:
    """Why a request is refused (a 400), and the parameter at fault."""

    message: str
    param: str


@dataclass(frozen=True)
class BatchRequest:
    input_file_id: str
    endpoint: str
    completion_window: str
    metadata: dict[str, str] | None
    priority: Lane
    output_expires_after_s: int | None  # output and error files expire this long after made


def batch_request(body: object) -> BatchRequest | Invalid:
    """The batch a `POST /v1/batches` body asks for, or why it is refused."""
    if not isinstance(body, dict):
        return Invalid("body must be a JSON object", "body")
    refusal = _required_strings(body)
    if refusal is not None:
        return refusal
    metadata = batch_metadata(body.get("metadata"))
    if isinstance(metadata, Invalid):
        return metadata
    expiry = expires_after(body.get("output_expires_after"), "output_expires_after")
    if isinstance(expiry, Invalid):
        return expiry
    return BatchRequest(
        body["input_file_id"],
        body["endpoint"],
        body["completion_window"],
        metadata,
        Lane(body.get("priority", Lane.NORMAL.value)),
        expiry,
    )


def _required_strings(body: dict[str, Any]) -> Invalid | None:
    """input_file_id, endpoint, completion_window and priority, checked."""
    for name in ("input_file_id", "endpoint", "completion_window"):
        if not isinstance(body.get(name), str):
            return Invalid(f"{name} is required and must be a string", name)
    if body["endpoint"] not in ENDPOINTS:
        return Invalid(f"endpoint must be one of {', '.join(ENDPOINTS)}", "endpoint")
    try:
        window_seconds(body["completion_window"])
    except ValueError as exc:
        return Invalid(str(exc), "completion_window")
    lanes = [lane.value for lane in Lane]
    if body.get("priority", Lane.NORMAL.value) not in lanes:
        return Invalid(f"priority must be one of {', '.join(lanes)}", "priority")
    return None


def batch_metadata(value: object) -> dict[str, str] | Invalid | None:
    """OpenAI's metadata: null, or up to 16 string pairs within the length limits."""
    if value is None:
        return None
    if not isinstance(value, dict):
        return Invalid("metadata must be an object of string keys and values", "metadata")
    if len(value) > MAX_METADATA_PAIRS:
        return Invalid(
            f"metadata has {len(value)} pairs; at most {MAX_METADATA_PAIRS} are allowed",
            "metadata",
        )
    for key, item in value.items():
        if not isinstance(item, str):
            return Invalid(f"metadata value of {key!r} must be a string", "metadata")
        if len(key) > MAX_METADATA_KEY:
            return Invalid(
                f"metadata key {key[:MAX_METADATA_KEY]!r}… is {len(key)} characters; "
                f"at most {MAX_METADATA_KEY} are allowed",
                "metadata",
            )
        if len(item) > MAX_METADATA_VALUE:
            return Invalid(
                f"metadata value of {key!r} is {len(item)} characters; "
                f"at most {MAX_METADATA_VALUE} are allowed",
                "metadata",
            )
    return dict(value)


def expires_after(value: object, param: str) -> int | Invalid | None:
    """Seconds from an expiry policy `{"anchor": "created_at", "seconds": N}` (None:
    none given), or why it is refused."""
    if value is None:
        return None
    if not isinstance(value, dict):
        return Invalid(f"{param} must be an object with anchor and seconds", param)
    if value.get("anchor") != "created_at":
        return Invalid(f"{param}.anchor must be 'created_at'", f"{param}.anchor")
    seconds = value.get("seconds")
    if isinstance(seconds, bool) or not isinstance(seconds, int):
        return Invalid(f"{param}.seconds must be an integer", f"{param}.seconds")
    if not MIN_EXPIRY_S <= seconds <= MAX_EXPIRY_S:
        return Invalid(
            f"{param}.seconds must be from {MIN_EXPIRY_S} (1 hour) to {MAX_EXPIRY_S} (30 days)",
            f"{param}.seconds",
        )
    return seconds


def form_expires_after(form: Mapping[str, Any]) -> int | Invalid | None:
    """`expires_after` of a multipart upload, sent as the fields `expires_after[anchor]`
    and `expires_after[seconds]` (as OpenAI's clients send nested parameters)."""
    anchor, seconds = form.get("expires_after[anchor]"), form.get("expires_after[seconds]")
    if anchor is None and seconds is None:
        return None
    policy: dict[str, object] = {"anchor": anchor, "seconds": seconds}
    if isinstance(seconds, str) and seconds.strip().lstrip("-").isdigit():
        policy["seconds"] = int(seconds)
    return expires_after(policy, "expires_after")
