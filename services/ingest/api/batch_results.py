"""A batch's results as they finish: `GET /v1/batches/{batch_id}/results`.

Streams the lines the collector has written for the batch so far (output lines, then
error lines), each file read only up to the size in the collector's last checkpoint:
every line whole and fsynced, none that a collector restart could take back. So a
client can start on results before the batch ends (as with Anthropic's Message
Batches results); once the batch has ended, the stream holds exactly its output and
error files' lines, and those files stay the final word.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from services.collector.collector import Collector
from services.ingest.api.openai_errors import openai_error
from services.ingest.tenancy.access import Action

CHUNK_BYTES = 1 << 20

FindBatch = Callable[[Request, Action], "dict[str, Any] | Response"]


class BatchResults:
    def __init__(self, collector: Collector, find_batch: FindBatch) -> None:
        self.collector = collector
        self.find_batch = find_batch  # the caller's batch, or the refusal (404 if not theirs)

    async def stream(self, request: Request) -> Response:
        found = self.find_batch(request, Action.READ)
        if isinstance(found, Response):
            return found
        parts = self.collector.settled_files(found["id"])
        if any(not path.exists() for path, _ in parts):
            message = "this batch's results were deleted with its output or error file"
            return openai_error(404, message, "batch_id")
        return StreamingResponse(
            _read_prefixes(parts),
            media_type="application/jsonl",
            headers={"X-Kbatch-Batch-Status": found["status"]},
        )


async def _read_prefixes(parts: list[tuple[Path, int]]) -> AsyncIterator[bytes]:
    """The first `size` bytes of each file, in chunks."""
    for path, size in parts:
        with path.open("rb") as source:
            left = size
            while left > 0:
                chunk = await asyncio.to_thread(source.read, min(left, CHUNK_BYTES))
                if not chunk:
                    # Smaller than its checkpoint: only a collector bug could do this.
                    raise RuntimeError(f"{path} ended {left} bytes before its checkpoint")
                left -= len(chunk)
                yield chunk
