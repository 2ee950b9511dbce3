"""A consumer in another language reads the Avro results topic: Java, with Avro's own
single-object decoder (BinaryMessageDecoder) and only the schemas in schemas/."""

from __future__ import annotations

import json
import shutil
import struct
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Message

from services.codec import MARKER, RESULT, Codec, SchemaCatalog, codec
from services.harness.kafka import produce_values, read_topic, unique_topics
from services.harness.pipeline import outcomes, publish, request_record, start_worker
from services.resources import data_dir
from services.settings import TopicSettings
from tests.conftest import REPO_ROOT
from tests.interop.java_reader import JavaBuildError, ResultsReader, build_reader

pytestmark = pytest.mark.integration

SMALL = {"high_partitions": 1, "normal_partitions": 2, "low_partitions": 1}
CHATS, EMBEDDINGS = 6, 4
CURRENT = 2  # the version workers write
# A later version that adds a field with a default: current records resolve to it.
REGION = {"name": "region", "type": "string", "default": "unknown"}


@dataclass(frozen=True)
class ResultsTopic:
    """A results topic a real worker wrote in Avro, and what it was asked."""

    topics: TopicSettings
    requests: list[dict[str, Any]]
    messages: list[Message]


@pytest.fixture(scope="module")
def java_reader() -> ResultsReader:
    try:
        return build_reader(REPO_ROOT / ".kbatch" / "java-reader")
    except JavaBuildError as exc:
        pytest.fail(str(exc), pytrace=False)


def embedding_record(job: str, index: int) -> dict[str, Any]:
    record = request_record(job, index)
    return {**record, "endpoint": "/v1/embeddings", "body": {"input": [f"passage {index}"]}}


@pytest.fixture(scope="module")
def results(bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> ResultsTopic:
    """Chat and embedding results, through one simulated-engine worker, in Avro."""
    topics = unique_topics(bootstrap, **SMALL)
    assert topics.results_format == "avro"
    chats = [request_record("chat", i, max_tokens=4) for i in range(CHATS)]
    embeddings = [embedding_record("embed", i) for i in range(EMBEDDINGS)]
    requests = [*chats, *embeddings]
    publish(bootstrap, topics, requests)
    logs = tmp_path_factory.mktemp("java-interop")
    worker, _ = start_worker(
        bootstrap, topics, logs, "java-worker", "0-3", SIMULATED__STEP_S="0.001"
    )
    try:
        found = outcomes(bootstrap, topics, expect=len(requests))
    finally:
        assert worker.terminate() == 0, worker.log()
    assert found.total == len(found.results) == len(requests), found.dead
    messages = read_topic(bootstrap, topics.results, expect=len(requests))
    assert all((m.value() or b"").startswith(MARKER) for m in messages)
    return ResultsTopic(topics, requests, messages)


def by_offset(messages: list[Message], reader: Codec) -> dict[tuple[int, int], dict[str, Any]]:
    """What kbatch's own codec decodes, by (partition, offset)."""
    return {(m.partition() or 0, m.offset() or 0): reader.decode(m.value()) for m in messages}


def as_float32(record: dict[str, Any]) -> dict[str, Any]:
    """The record with its embedding narrowed to 32-bit floats: Java prints an Avro float
    as the shortest decimal naming it, Python's codec gives its exact value."""
    output = record["output"]
    if output is None or output["embedding"] is None:
        return record
    embedding = [struct.unpack("<f", struct.pack("<f", v))[0] for v in output["embedding"]]
    return {**record, "output": {**output, "embedding": embedding}}


def schema_dir(directory: Path, *versions: int) -> Path:
    """`directory` holding the given InferenceResult versions: the current one from
    schemas/, the next as the current plus REGION."""
    directory.mkdir()
    current = json.loads((data_dir("schemas") / f"{RESULT}.v{CURRENT}.avsc").read_text())
    written = {CURRENT: current, CURRENT + 1: {**current, "fields": [*current["fields"], REGION]}}
    for version in versions:
        path = directory / f"{RESULT}.v{version}.avsc"
        path.write_text(json.dumps(written[version]))
    return directory


def test_java_decodes_every_result_as_kbatch_does(
    bootstrap: str, results: ResultsTopic, java_reader: ResultsReader
) -> None:
    schemas = data_dir("schemas")
    run = java_reader.read(bootstrap, results.topics.results, schemas, count=len(results.messages))
    assert run.returncode == 0, run.stderr

    kbatch = by_offset(results.messages, codec(RESULT))
    java = run.decoded(codec(RESULT).reader.parsed)
    assert java.keys() == kbatch.keys()
    for key, record in java.items():
        assert as_float32(record) == as_float32(kbatch[key]), key
    # Every request answered once, by the simulated engine; both output shapes seen.
    ids = Counter(r["request_id"] for r in java.values())
    assert ids == Counter(r["request_id"] for r in results.requests)
    assert {(r["engine"], r["model"]) for r in java.values()} == {("simulated", "kbatch-sim")}
    outputs = [r["output"] for r in java.values()]
    assert sum(o["text"] is not None for o in outputs) == CHATS
    assert sum(o["embedding"] is not None for o in outputs) == EMBEDDINGS
    assert all(r["usage"]["total_tokens"] > 0 for r in java.values())


def test_older_versions_decode_once_registered(
    bootstrap: str, results: ResultsTopic, java_reader: ResultsReader, tmp_path: Path
) -> None:
    """Current records read with the next version as reader schema: the current one is
    registered, so they resolve."""
    schemas = schema_dir(tmp_path / "schemas", CURRENT, CURRENT + 1)
    run = java_reader.read(bootstrap, results.topics.results, schemas, count=len(results.messages))
    assert run.returncode == 0, run.stderr

    later = Codec(RESULT, SchemaCatalog(schemas))
    assert later.reader.version == CURRENT + 1
    kbatch = by_offset(results.messages, later)
    java = run.decoded(later.reader.parsed)
    assert java.keys() == kbatch.keys()
    for key, record in java.items():
        assert record["region"] == "unknown"
        assert as_float32(record) == as_float32(kbatch[key]), key


def test_an_unknown_fingerprint_fails_the_reader(
    bootstrap: str, results: ResultsTopic, java_reader: ResultsReader, tmp_path: Path
) -> None:
    """Only the next version registered: the current fingerprint on every record is
    unknown to the decoder."""
    schemas = schema_dir(tmp_path / "schemas", CURRENT + 1)
    run = java_reader.read(bootstrap, results.topics.results, schemas, count=1)
    assert run.returncode == 3, run.stderr
    assert run.records == {}
    assert "does not decode" in run.stderr and "MissingSchemaException" in run.stderr


def test_a_corrupt_value_fails_the_reader(
    bootstrap: str, results: ResultsTopic, java_reader: ResultsReader
) -> None:
    """A good result, then the same result cut short: the reader prints one, then fails."""
    topic = unique_topics(bootstrap, **SMALL).results
    good = results.messages[0].value() or b""
    produce_values(bootstrap, topic, [good, good[:-3]])
    run = java_reader.read(bootstrap, topic, data_dir("schemas"), count=2)
    assert run.returncode == 3, run.stderr
    assert list(run.records) == [(0, 0)]
    assert "offset 1 does not decode" in run.stderr


def test_the_reader_gives_up_at_its_deadline(
    bootstrap: str, results: ResultsTopic, java_reader: ResultsReader
) -> None:
    """One record more than the topic holds: all are printed, then a timeout exits 1."""
    count = len(results.messages) + 1
    run = java_reader.read(
        bootstrap, results.topics.results, data_dir("schemas"), count=count, timeout_s=3
    )
    assert run.returncode == 1, run.stderr
    assert len(run.records) == len(results.messages)
    assert f"with {count - 1} of {count} records" in run.stderr


def test_a_missing_jdk_fails_with_a_clear_message(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    real_which = shutil.which
    monkeypatch.setattr(shutil, "which", lambda name: None if name == "javac" else real_which(name))
    with pytest.raises(JavaBuildError, match="javac not found"):
        build_reader(tmp_path)
