"""Avro single-object encoding: every record names the schema that wrote it.

Wire format (Avro spec, "single object encoding"): 0xC3 0x01, the writer
schema's 8-byte little-endian CRC-64-AVRO fingerprint, then the Avro binary
body. Readers look the writer up by fingerprint and resolve it against their
own (latest) version, so older records still decode after a field is added.

Bodies are encoded and decoded with cavro (Cython): on the request record, encoding
takes about a third of fastavro's time and decoding about half, and these two calls
were the largest share of ingest's and the worker's per-record time (py-spy, README's
benchmarks). fastavro stays for what is not per record: schema parsing, fingerprints
and the validation of JSON results.

Results may instead be written as plain JSON (`KBATCH_TOPICS__RESULTS_FORMAT=json`), for
consumers with no Avro decoder; `results_codec` reads either, telling them apart by their
first byte, so the format of a live results topic can be switched.
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
from typing import Any, Literal

import cavro
from fastavro import parse_schema
from fastavro.schema import fingerprint, to_parsing_canonical_form
from fastavro.validation import ValidationError, validate

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
    cavro.CavroException,
)
# Records decode to plain dicts, like every reader of these topics expects.
_CAVRO_OPTIONS = cavro.DEFAULT_OPTIONS.replace(record_decodes_to_dict=True)

REQUEST = "kbatch.InferenceRequest"
RESULT = "kbatch.InferenceResult"
DEAD_LETTER = "kbatch.DeadLetter"
HEARTBEAT = "kbatch.WorkerHeartbeat"
ASSIGNMENT = "kbatch.WorkerAssignment"
JOB = "kbatch.JobRecord"

# How workers write results; readers accept both.
ResultsFormat = Literal["avro", "json"]


@dataclass(frozen=True)
class SchemaVersion:
    """One version of a named schema, parsed, with its fingerprint."""

    name: str
    version: int
    parsed: Any  # fastavro's form: validation of JSON records, fingerprints
    fingerprint: bytes
    compiled: cavro.Schema  # cavro's: encoding and decoding, several times fastavro's speed


def _load_version(path: Path, name: str, version: int) -> SchemaVersion:
    raw = json.loads(path.read_text(encoding="utf-8"))
    parsed = parse_schema(raw)
    fp = bytes.fromhex(fingerprint(to_parsing_canonical_form(parsed), "CRC-64-AVRO"))
    compiled = cavro.Schema(raw, options=_CAVRO_OPTIONS)
    return SchemaVersion(name, version, parsed, fp, compiled)


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
        self._resolvers: dict[int, Any] = {}

    def encode(self, record: Mapping[str, Any]) -> bytes:
        body: bytes = self.writer.compiled.binary_encode(record)
        return self._header + body

    def decode(self, data: bytes | None) -> dict[str, Any]:
        """Decode a record; any failure is a DecodeError whose message says why."""
        writer = self._writer_of(data)
        assert data is not None  # _writer_of rejects None
        buffer = io.BytesIO(data)
        buffer.seek(HEADER_LENGTH)
        # A file reader takes only the record's bytes, so what follows it can be seen.
        try:
            record = self._resolver(writer).binary_read(cavro.FileReader(buffer))
        except _BODY_ERRORS as exc:
            raise DecodeError(f"corrupt {writer.name} v{writer.version} body: {exc!r}") from exc
        if not isinstance(record, dict):
            raise DecodeError(f"{writer.name} did not decode to a record")
        if buffer.tell() != len(data):
            raise DecodeError(f"{len(data) - buffer.tell()} trailing bytes after the record")
        return record

    def _resolver(self, writer: SchemaVersion) -> Any:
        """What reads `writer`'s bytes into the reader's shape (cached per version)."""
        if writer is self.reader:
            return self.reader.compiled
        resolver = self._resolvers.get(writer.version)
        if resolver is None:
            resolver = self.reader.compiled.reader_for_writer(writer.compiled)
            self._resolvers[writer.version] = resolver
        return resolver

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


class JsonRecordCodec:
    """One record type as a plain JSON object: the Avro record's field names and values,
    with no schema envelope (what Kafka Connect's JsonConverter with schemas.enable=false,
    Flink's json format, kcat and jq read). Both ways go through the Avro schema, so a
    JSON record carries exactly the values its Avro twin would (defaults filled, floats
    narrowed to 32 bits) and decodes to an equal record."""

    def __init__(self, avro: Codec) -> None:
        self._avro = avro

    def encode(self, record: Mapping[str, Any]) -> bytes:
        canonical = self._avro.decode(self._avro.encode(record))
        # A non-finite float (a broken embedding) is written as NaN/Infinity, as Python's
        # json does, rather than failing the result: strict JSON parsers refuse that record.
        text = json.dumps(canonical, separators=(",", ":"), ensure_ascii=False)
        return text.encode("utf-8")

    def decode(self, data: bytes | None) -> dict[str, Any]:
        """Decode a JSON record, checked against the reader schema; failures are DecodeErrors."""
        if data is None:
            raise DecodeError("record has no value (tombstone)")
        name = self._avro.reader.name
        try:
            record = json.loads(data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise DecodeError(f"corrupt {name} JSON: {exc}") from exc
        if not isinstance(record, dict):
            raise DecodeError(f"{name} JSON is a {type(record).__name__}, not an object")
        try:
            validate(record, self._avro.reader.parsed, raise_errors=True)
        except ValidationError as exc:
            raise DecodeError(f"{name} JSON does not match its schema: {exc}") from exc
        # Through Avro once more: defaults filled and unknown fields dropped, as a reader's
        # schema resolution does for an Avro record.
        return self._avro.decode(self._avro.encode(record))


class ResultsCodec:
    """Writes results in one format; reads Avro single-object and JSON results alike."""

    def __init__(self, results_format: ResultsFormat, catalog: SchemaCatalog | None = None) -> None:
        self.format = results_format
        self._avro = Codec(RESULT, catalog)
        self._json = JsonRecordCodec(self._avro)
        self._writer: Codec | JsonRecordCodec = (
            self._json if results_format == "json" else self._avro
        )

    def encode(self, record: Mapping[str, Any]) -> bytes:
        return self._writer.encode(record)

    def decode(self, data: bytes | None) -> dict[str, Any]:
        """Decode a result in either format, told apart by the first byte (C3 or `{`)."""
        if data is None:
            raise DecodeError("record has no value (tombstone)")
        if data.startswith(MARKER):
            return self._avro.decode(data)
        if data.lstrip()[:1] == b"{":
            return self._json.decode(data)
        raise DecodeError("neither Avro single-object encoded (C3 01) nor a JSON object")


@cache
def results_codec(results_format: ResultsFormat = "avro") -> ResultsCodec:
    """The results codec for `KBATCH_TOPICS__RESULTS_FORMAT`; any one decodes both formats."""
    return ResultsCodec(results_format)
