"""Avro single-object encoding: every record names the schema that wrote it.

Wire format (Avro spec, "single object encoding"): 0xC3 0x01, the writer
schema's 8-byte little-endian CRC-64-AVRO fingerprint, then the Avro binary
body. Readers look the writer up by fingerprint and resolve it against their
own (latest) version, so older records still decode after a field is added.
"""

from __future__ import annotations

import io
import json
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from fastavro import parse_schema, schemaless_reader, schemaless_writer
from fastavro.schema import fingerprint, to_parsing_canonical_form

from services.errors import DecodeError
from services.resources import data_dir

MARKER = b"\xc3\x01"
HEADER_LENGTH = len(MARKER) + 8
_FILE_NAME = re.compile(r"^(?P<name>[\w.]+)\.v(?P<version>\d+)\.avsc$")
# What a corrupt body can make fastavro raise; each becomes a DecodeError.
_BODY_ERRORS = (
    EOFError,
    ValueError,
    TypeError,
    IndexError,
    KeyError,
    OverflowError,
    struct.error,
    UnicodeDecodeError,
)

REQUEST = "kbatch.InferenceRequest"
RESULT = "kbatch.InferenceResult"
DEAD_LETTER = "kbatch.DeadLetter"
HEARTBEAT = "kbatch.WorkerHeartbeat"
ASSIGNMENT = "kbatch.WorkerAssignment"
JOB = "kbatch.JobRecord"


@dataclass(frozen=True)
class SchemaVersion:
    """One version of a named schema, parsed, with its fingerprint."""

    name: str
    version: int
    parsed: Any
    fingerprint: bytes


def _load_version(path: Path, name: str, version: int) -> SchemaVersion:
    raw = json.loads(path.read_text(encoding="utf-8"))
    parsed = parse_schema(raw)
    fp = bytes.fromhex(fingerprint(to_parsing_canonical_form(parsed), "CRC-64-AVRO"))
    return SchemaVersion(name=name, version=version, parsed=parsed, fingerprint=fp)


class SchemaCatalog:
    """Every version of every schema in a directory of `<name>.v<N>.avsc` files."""

    def __init__(self, directory: Path) -> None:
        self._by_fingerprint: dict[bytes, SchemaVersion] = {}
        self._versions: dict[str, list[SchemaVersion]] = {}
        for path in sorted(directory.glob("*.avsc")):
            match = _FILE_NAME.match(path.name)
            if match is None:
                raise ValueError(f"schema file {path.name} is not named <name>.v<N>.avsc")
            schema = _load_version(path, match["name"], int(match["version"]))
            self._by_fingerprint[schema.fingerprint] = schema
            self._versions.setdefault(schema.name, []).append(schema)
        for versions in self._versions.values():
            versions.sort(key=lambda s: s.version)

    def names(self) -> list[str]:
        return sorted(self._versions)

    def version(self, name: str, version: int | None = None) -> SchemaVersion:
        """A given version of a schema, or its latest."""
        versions = self._versions[name]
        if version is None:
            return versions[-1]
        for schema in versions:
            if schema.version == version:
                return schema
        raise KeyError(f"{name} has no version {version}")

    def by_fingerprint(self, fp: bytes) -> SchemaVersion | None:
        return self._by_fingerprint.get(fp)


@cache
def default_catalog() -> SchemaCatalog:
    """The catalog of the schemas shipped with kbatch."""
    return SchemaCatalog(data_dir("schemas"))


class Codec:
    """Encodes one record type with a writer version, decodes any known version."""

    def __init__(
        self, name: str, catalog: SchemaCatalog | None = None, writer_version: int | None = None
    ) -> None:
        self._catalog = catalog or default_catalog()
        self.reader = self._catalog.version(name)
        self.writer = self._catalog.version(name, writer_version)
        self._header = MARKER + self.writer.fingerprint

    def encode(self, record: Mapping[str, Any]) -> bytes:
        buffer = io.BytesIO()
        buffer.write(self._header)
        schemaless_writer(buffer, self.writer.parsed, record)
        return buffer.getvalue()

    def decode(self, data: bytes | None) -> dict[str, Any]:
        """Decode a record; any failure is a DecodeError whose message says why."""
        writer = self._writer_of(data)
        assert data is not None  # _writer_of rejects None
        buffer = io.BytesIO(data)
        buffer.seek(HEADER_LENGTH)
        reader = None if writer is self.reader else self.reader.parsed
        try:
            record = schemaless_reader(buffer, writer.parsed, reader)
        except _BODY_ERRORS as exc:
            raise DecodeError(f"corrupt {writer.name} v{writer.version} body: {exc!r}") from exc
        if not isinstance(record, dict):
            raise DecodeError(f"{writer.name} did not decode to a record")
        if buffer.tell() != len(data):
            raise DecodeError(f"{len(data) - buffer.tell()} trailing bytes after the record")
        return record

    def _writer_of(self, data: bytes | None) -> SchemaVersion:
        if data is None:
            raise DecodeError("record has no value (tombstone)")
        if len(data) < HEADER_LENGTH or not data.startswith(MARKER):
            raise DecodeError("not Avro single-object encoded (missing C3 01 marker)")
        fp = data[len(MARKER) : HEADER_LENGTH]
        writer = self._catalog.by_fingerprint(fp)
        if writer is None:
            raise DecodeError(f"unknown schema fingerprint {fp.hex()}")
        if writer.name != self.reader.name:
            raise DecodeError(f"record is a {writer.name}, expected {self.reader.name}")
        return writer


@cache
def codec(name: str) -> Codec:
    """The shared codec for a record type, writing its latest version."""
    return Codec(name)
