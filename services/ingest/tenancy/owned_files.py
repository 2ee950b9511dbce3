"""The file store with an owner per file: `files/<id>.owner` holds the owning tenant.

The owner is written (whole: temporary file, fsync, rename) before the file object
exists, so no file is ever visible without its owner; a crash in between leaves only
an owner record no file object names. A file with no owner record was stored before
owners were recorded and belongs to the default tenant.
"""

from __future__ import annotations

import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from services.collector.files import FileObject, FileStore, valid_id
from services.ingest.tenancy.access import owner_or_default

MAX_FILE_ID = 128  # ids made here are under 64 characters


@dataclass(frozen=True)
class OwnedFile:
    file: FileObject
    owner: str


class OwnedFiles:
    def __init__(self, store: FileStore, default_tenant: str) -> None:
        self.store = store
        self._default_tenant = default_tenant

    def save_upload(
        self,
        source: BinaryIO,
        filename: str,
        purpose: str,
        owner: str,
        expires_after_s: int | None = None,
    ) -> FileObject:
        file_id = f"file-{uuid.uuid4().hex}"
        self._write_owner(file_id, owner)
        relative = f"files/{file_id}.data"
        _write_whole(self.store.root / relative, source)
        return self.store.register_existing(file_id, relative, filename, purpose, expires_after_s)

    def register_output(
        self,
        file_id: str,
        relative: str,
        filename: str,
        purpose: str,
        owner: str,
        expires_after_s: int | None = None,
    ) -> FileObject:
        """Publish a batch's output or error file (the collector wrote it) as `owner`'s."""
        self._write_owner(file_id, owner)
        return self.store.register_existing(file_id, relative, filename, purpose, expires_after_s)

    def get(self, file_id: str, now_s: int | None = None) -> OwnedFile | None:
        """The file and its owner; None for a missing or an expired one (as OpenAI, which
        deletes files at their `expires_at`; `delete_expired` reclaims their space)."""
        if len(file_id) > MAX_FILE_ID or not valid_id(file_id):
            return None  # no file has such an id (and it must never name a path)
        # The owner first: a delete removes the file object before the owner record, so
        # a file deleted meanwhile is missing here, never shown as the default tenant's.
        owner = self._owner(file_id)
        file = self.store.get(file_id)
        if file is None or file.expired(int(time.time()) if now_s is None else now_s):
            return None
        return OwnedFile(file, owner)

    def all(self) -> list[OwnedFile]:
        """Every unexpired file with its owner, in no order."""
        found = (self.get(file_id) for file_id in self.store.ids())
        return [owned for owned in found if owned is not None]

    def delete_expired(self, now_s: int) -> list[str]:
        """Delete every file whose `expires_at` has come; their ids."""
        expired = [
            file.id
            for file in (self.store.get(file_id) for file_id in self.store.ids())
            if file is not None and file.expired(now_s)
        ]
        return [file_id for file_id in expired if self.delete(file_id)]

    def _owner(self, file_id: str) -> str:
        try:
            recorded = self._owner_path(file_id).read_text()
        except FileNotFoundError:
            recorded = None  # stored before owners were recorded
        return owner_or_default(recorded, self._default_tenant)

    def content_path(self, file: FileObject) -> Path:
        return self.store.content_path(file)

    def delete(self, file_id: str) -> bool:
        """The file object goes first: once it is gone, the owner record guards nothing."""
        if not self.store.delete(file_id):
            return False
        self._owner_path(file_id).unlink(missing_ok=True)
        return True

    def _write_owner(self, file_id: str, owner: str) -> None:
        path = self._owner_path(file_id)
        temporary = path.with_suffix(".owner.tmp")  # the store sweeps *.tmp at start
        with temporary.open("w") as out:
            out.write(owner)
            out.flush()
            os.fsync(out.fileno())
        temporary.replace(path)

    def _owner_path(self, file_id: str) -> Path:
        return self.store.root / "files" / f"{file_id}.owner"


def _write_whole(path: Path, source: BinaryIO) -> None:
    """Copy `source` to `path` so a crash leaves no partial file under that name."""
    temporary = path.with_suffix(path.suffix + ".tmp")
    with temporary.open("wb") as out:
        while chunk := source.read(1 << 20):
            out.write(chunk)
        out.flush()
        os.fsync(out.fileno())
    temporary.replace(path)
