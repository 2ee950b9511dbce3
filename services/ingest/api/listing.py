"""OpenAI's cursor pages (pure): what `GET /v1/files` and `GET /v1/batches` answer."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def cursor_page(
    ordered: Sequence[Mapping[str, Any]], after: str | None, limit: int
) -> dict[str, Any]:
    """The page of `ordered` objects that follows the one with id `after` (from the first
    without it; an id not in `ordered`, such as one the caller may not see, gives an
    empty page), at most `limit` long."""
    start = 0
    if after:
        ids = [item["id"] for item in ordered]
        start = ids.index(after) + 1 if after in ids else len(ordered)
    page = list(ordered[start : start + limit])
    return {
        "object": "list",
        "data": page,
        "first_id": page[0]["id"] if page else None,
        "last_id": page[-1]["id"] if page else None,
        "has_more": len(ordered) > start + limit,
    }
