"""The OpenAI-compatible Files API on the ingest service: batch input files uploaded by
tenants, and the batch output and error files the collector writes, each its owner's."""

from __future__ import annotations

import asyncio
import os
from typing import BinaryIO

from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route

from services.ingest.api.batch_request import Invalid, form_expires_after
from services.ingest.api.listing import cursor_page
from services.ingest.api.openai_errors import guard, openai_error, refused
from services.ingest.tenancy.access import Action, can_see
from services.ingest.tenancy.auth import Callers
from services.ingest.tenancy.owned_files import OwnedFile, OwnedFiles
from services.ingest.tenancy.tenant_usage import TenantUsage

MAX_FILES_LISTED = 10_000  # OpenAI's files.list limit: its maximum and its default


class FileApi:
    """Every route authorizes: another tenant's file answers exactly as a missing one."""

    def __init__(self, files: OwnedFiles, callers: Callers, usage: TenantUsage) -> None:
        self.files = files
        self.callers = callers
        self.usage = usage

    def routes(self) -> list[Route]:
        return [
            Route("/v1/files", self.create_file, methods=["POST"]),
            Route("/v1/files", self.list_files, methods=["GET"]),
            Route("/v1/files/{file_id}", self.get_file, methods=["GET"]),
            Route("/v1/files/{file_id}", self.delete_file, methods=["DELETE"]),
            Route("/v1/files/{file_id}/content", self.file_content, methods=["GET"]),
        ]

    async def create_file(self, request: Request) -> Response:
        async with request.form(max_part_size=512 * 1024 * 1024) as form:
            upload, purpose = form.get("file"), form.get("purpose")
            if purpose != "batch":
                return openai_error(400, "purpose must be 'batch'", "purpose")
            if upload is None or isinstance(upload, str):
                return openai_error(400, "a file part is required", "file")
            expiry = form_expires_after(form)
            if isinstance(expiry, Invalid):
                return openai_error(400, expiry.message, expiry.param)
            tenant = self.callers.of(request).tenant
            # The form has the whole part by now: its size is known before a byte is stored.
            size = await asyncio.to_thread(_size_of, upload.file)
            refusal = await self.usage.reserve_file(tenant, size)
            if refusal is not None:
                return refused(refusal)
            try:
                saved = await asyncio.to_thread(
                    self.files.save_upload,
                    upload.file,
                    upload.filename or "upload.jsonl",
                    purpose,
                    tenant,
                    expiry,
                )
            finally:
                await self.usage.release_file(tenant, size)
        return JSONResponse(saved.to_json())

    async def list_files(self, request: Request) -> Response:
        """OpenAI's files.list: the caller's files (an admin's: everyone's), by
        `created_at` (`order`, newest first by default), after the file `after`."""
        params = request.query_params
        try:
            limit = int(params.get("limit", str(MAX_FILES_LISTED)))
        except ValueError:
            return openai_error(400, "limit must be an integer", "limit")
        if not 1 <= limit <= MAX_FILES_LISTED:
            return openai_error(400, f"limit must be from 1 to {MAX_FILES_LISTED}", "limit")
        order = params.get("order", "desc")
        if order not in ("asc", "desc"):
            return openai_error(400, "order must be 'asc' or 'desc'", "order")
        purpose = params.get("purpose")
        caller = self.callers.of(request)
        visible = [
            owned.file
            for owned in await asyncio.to_thread(self.files.all)
            if can_see(caller, owned.owner) and purpose in (None, owned.file.purpose)
        ]
        visible.sort(key=lambda f: (f.created_at, f.id), reverse=order == "desc")
        ordered = [file.to_json() for file in visible]
        return JSONResponse(cursor_page(ordered, params.get("after"), limit))

    def file_for(self, request: Request, action: Action) -> OwnedFile | Response:
        """The path's file, if the caller may do `action` to it; else the refusal."""
        found = self.files.get(request.path_params["file_id"])
        missing = openai_error(404, "no such file", "file_id")
        refusal = guard(self.callers.of(request), found.owner if found else None, action, missing)
        return found if refusal is None and found is not None else refusal or missing

    async def get_file(self, request: Request) -> Response:
        found = self.file_for(request, Action.READ)
        return found if isinstance(found, Response) else JSONResponse(found.file.to_json())

    async def file_content(self, request: Request) -> Response:
        found = self.file_for(request, Action.READ)
        if isinstance(found, Response):
            return found
        return FileResponse(self.files.content_path(found.file), media_type="application/jsonl")

    async def delete_file(self, request: Request) -> Response:
        found = self.file_for(request, Action.CHANGE)
        if isinstance(found, Response):
            return found
        if not self.files.delete(found.file.id):
            return openai_error(404, "no such file", "file_id")  # deleted meanwhile
        return JSONResponse({"id": found.file.id, "object": "file", "deleted": True})


def _size_of(source: BinaryIO) -> int:
    """The bytes of a seekable upload, left at its start."""
    size = source.seek(0, os.SEEK_END)
    source.seek(0)
    return size
