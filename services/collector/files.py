"""The file store: uploaded batch inputs and produced outputs, as OpenAI file objects.

A directory (a setting) shared by ingest and the collector: `files/<id>.json` holds
the file object, `files/<id>.data` (or a job's output path) its content.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import BinaryIO


@dataclass(frozen=True)
class FileObject:
    id: str
    bytes: int
    created_at: int
    filename: str
    purpose: str
    path: str  # where the content lives, relative to the store root
    expires_at: int | None = None  # None: kept until deleted

    def expired(self, now_s: int) -> bool:
        return self.expires_at is not None and now_s >= self.expires_at

    def to_json(self) -> dict[str, object]:
        body: dict[str, object] = {k: v for k, v in asdict(self).items() if k != "path"}
        return {**body, "object": "file", "status": "processed"}


class FileStore:
    """Files on disk; every write lands whole (temporary file, fsync, rename)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "files").mkdir(parents=True, exist_ok=True)
        # A write cut short by a crash left only its temporary file: never a file object.
        for stale in (root / "files").glob("*.tmp"):
            stale.unlink()

    def save_upload(self, source: BinaryIO, filename: str, purpose: str) -> FileObject:
        file_id = f"file-{uuid.uuid4().hex}"
        relative = f"files/{file_id}.data"
        size = _write_whole(self.root / relative, source)
        return self._register(
            FileObject(file_id, size, int(time.time()), filename, purpose, relative)
        )

    def register_existing(
        self,
        file_id: str,
        relative: str,
        filename: str,
        purpose: str,
        expires_after_s: int | None = None,
    ) -> FileObject:
        """Publish a file already written under the root (an upload, or a batch's output
        or error file the collector wrote), expiring `expires_after_s` after now."""
        size = (self.root / relative).stat().st_size
        now = int(time.time())
        expires_at = None if expires_after_s is None else now + expires_after_s
        return self._register(
            FileObject(file_id, size, now, filename, purpose, relative, expires_at)
        )

    def get(self, file_id: str) -> FileObject | None:
        if not valid_id(file_id):
            return None  # no file could have this id
        try:
            text = self._meta_path(file_id).read_text()
        except (FileNotFoundError, IsADirectoryError):
            return None  # never stored, or deleted
        return FileObject(**json.loads(text))

    def ids(self) -> list[str]:
        """The id of every file object, in no order."""
        return [meta.stem for meta in (self.root / "files").glob("*.json")]

    def content_path(self, file: FileObject) -> Path:
        return self.root / file.path

    def delete(self, file_id: str) -> bool:
        file = self.get(file_id)
        if file is None:
            return False
        self._meta_path(file_id).unlink()
        # A batch's output file is the collector's job file: its lines go with it (the
        # batch has ended, so every line of the job is in it already).
        (self.root / file.path).unlink(missing_ok=True)
        return True

    def _register(self, file: FileObject) -> FileObject:
        meta = json.dumps(asdict(file)).encode()
        _write_whole(self._meta_path(file.id), _Bytes(meta))
        return file

    def _meta_path(self, file_id: str) -> Path:
        if not valid_id(file_id):
            raise ValueError(f"bad file id {file_id!r}")
        return self.root / "files" / f"{file_id}.json"


def valid_id(file_id: str) -> bool:
    """Ids become file names: only ASCII letters, digits, '-' and '_'."""
    return file_id.isascii() and file_id.replace("-", "").replace("_", "").isalnum()


class _Bytes:
    def __init__(self, data: bytes) -> None:
        self._data = data

    def read(self, size: int = -1) -> bytes:
        data, self._data = (self._data, b"") if size < 0 else (self._data[:size], self._data[size:])
        return data


def _write_whole(path: Path, source: BinaryIO | _Bytes) -> int:
    """Copy `source` to `path` so a crash leaves either the old file or the whole new one."""
    temporary = path.with_suffix(path.suffix + ".tmp")
    size = 0
    with temporary.open("wb") as out:
        while chunk := source.read(1 << 20):
            out.write(chunk)
            size += len(chunk)
        out.flush()
        os.fsync(out.fileno())
    temporary.replace(path)
    return size
