"""Collect results and dead letters into per-job OpenAI batch files, exactly once.

Reads the results topic and the DLQ with read_committed and appends one line per
outcome to `jobs/<job>/output.jsonl` or `jobs/<job>/errors.jsonl`. After each batch
of appends it fsyncs the files and then writes a checkpoint (atomically): the
next offset of every partition, and each file's size and line count. A restarted
collector truncates every file back to its checkpointed size and resumes from the
checkpointed offsets, so no line is lost and none is written twice. Each job's token
usage and model are summed in the same checkpoint, so they always describe exactly
the lines in its files.
"""

from __future__ import annotations

import json
import os
import threading
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Message, TopicPartition

from services.codec import DEAD_LETTER, codec, results_codec
from services.collector.openai_format import dead_letter_line, result_line
from services.errors import DecodeError, KafkaUnavailableError
from services.kafka.consumers import ConsumerRole, make_consumer
from services.kafka.reader import TopicReader
from services.kafka.retries import KAFKA_RETRIES
from services.logs import get_logger

log = get_logger("collector")

OUTPUT, ERRORS = "output.jsonl", "errors.jsonl"


@dataclass
class Checkpoint:
    offsets: dict[str, int] = field(default_factory=dict)  # "topic:partition" -> next offset
    sizes: dict[str, int] = field(default_factory=dict)  # "jobs/<job>/<file>" -> bytes
    lines: dict[str, int] = field(default_factory=dict)  # same keys -> lines
    # job -> [input, output, cached input]; a checkpoint written before cached tokens
    # were counted holds two, read as no cached tokens so far.
    tokens: dict[str, list[int]] = field(default_factory=dict)
    models: dict[str, str] = field(default_factory=dict)  # job -> its first result's model

    @classmethod
    def load(cls, path: Path) -> Checkpoint:
        if not path.is_file():
            return cls()
        return cls(**json.loads(path.read_text()))

    def tokens_of(self, job_id: str) -> list[int]:
        """[input, output, cached input] tokens of a job's collected results."""
        summed = self.tokens.get(job_id, [])
        return [*summed, 0, 0, 0][:3]

    def save(self, path: Path) -> None:
        temporary = path.with_suffix(".tmp")
        with temporary.open("w") as out:
            json.dump(
                {
                    "offsets": self.offsets,
                    "sizes": self.sizes,
                    "lines": self.lines,
                    "tokens": self.tokens,
                    "models": self.models,
                },
                out,
            )
            out.flush()
            os.fsync(out.fileno())
        temporary.replace(path)


@dataclass(frozen=True)
class Collected:
    """What a job's files hold so far."""

    output_lines: int = 0
    error_lines: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    model: str | None = None
    cached_tokens: int = 0  # of input_tokens, served from an engine's prefix cache


@dataclass(frozen=True)
class _Line:
    """One outcome's line and what it adds to its job's usage."""

    file: str
    text: bytes
    job_id: str
    tokens: tuple[int, int, int] = (0, 0, 0)  # input, output, cached input
    model: str | None = None


def job_file(job_id: str, name: str) -> str:
    safe = job_id.replace("/", "_")
    return f"jobs/{safe}/{name}"


class Collector:
    """One collector per file store; reads on a thread from `start()` to `stop()`."""

    def __init__(
        self, kafka_config: dict[str, Any], results_topic: str, dlq_topic: str, root: Path
    ) -> None:
        self._kafka_config = kafka_config
        self._topics = (results_topic, dlq_topic)
        self.root = root
        self._checkpoint_path = root / "collector-checkpoint.json"
        self.checkpoint = Checkpoint.load(self._checkpoint_path)
        self._lock = threading.Lock()
        self._reader = TopicReader(
            "collector",
            self._open,
            self._start_positions,
            self._write,
            self._on_error,
            max_records=1000,
            timeout_s=0.5,
        )

    # -- what the Batch API reads ---------------------------------------------------
    def collected(self, job_id: str) -> Collected:
        """Lines written so far for a job, and the usage of the results behind them."""
        with self._lock:
            lines = self.checkpoint.lines
            input_tokens, output_tokens, cached_tokens = self.checkpoint.tokens_of(job_id)
            return Collected(
                lines.get(job_file(job_id, OUTPUT), 0),
                lines.get(job_file(job_id, ERRORS), 0),
                input_tokens,
                output_tokens,
                self.checkpoint.models.get(job_id),
                cached_tokens,
            )

    def settled_files(self, job_id: str) -> list[tuple[Path, int]]:
        """A job's output and error files, each with the bytes its checkpoint covers
        (whole, fsynced lines), for those that have any."""
        with self._lock:
            sizes = self.checkpoint.sizes
            keys = (job_file(job_id, OUTPUT), job_file(job_id, ERRORS))
            return [(self.root / key, sizes[key]) for key in keys if sizes.get(key)]

    # -- lifecycle ------------------------------------------------------------------
    def start(self) -> None:
        self._reader.start()

    def stop(self) -> None:
        self._reader.stop()

    # -- internals ------------------------------------------------------------------
    def _open(self) -> Consumer:
        """Cut the files back to the checkpoint, then open the consumer that resumes there."""
        self._restore_files()
        return make_consumer(
            self._kafka_config,
            ConsumerRole.COMMITTED_READER,
            "kbatch-collector",
            # librdkafka's default, as before the factory: a checkpointed offset that no
            # longer exists resumes at the partition's end.
            **{"auto.offset.reset": "latest"},
        )

    def _start_positions(self, consumer: Consumer) -> list[TopicPartition]:
        positions = []
        for topic in self._topics:
            metadata = consumer.list_topics(topic, timeout=30).topics[topic]
            for partition in metadata.partitions:
                offset = self.checkpoint.offsets.get(f"{topic}:{partition}", OFFSET_BEGINNING)
                positions.append(TopicPartition(topic, partition, offset))
        return positions

    def _on_error(self, error: KafkaError) -> None:
        if error.fatal():
            raise KafkaUnavailableError(f"collector read failed: {error}")
        # A broker down or restarting: librdkafka reconnects and fetches again.
        KAFKA_RETRIES.labels("collector", "consume").inc()
        log.warning("collector read interrupted; librdkafka retries", error=str(error))

    def _restore_files(self) -> None:
        """Cut every job file back to what the checkpoint covers."""
        jobs_dir = self.root / "jobs"
        if not jobs_dir.is_dir():
            return
        for path in jobs_dir.glob("*/*.jsonl"):
            key = str(path.relative_to(self.root))
            size = self.checkpoint.sizes.get(key, 0)
            if path.stat().st_size != size:
                log.info("truncating past the checkpoint", file=key, to_bytes=size)
                with path.open("r+b") as handle:
                    handle.truncate(size)

    def _write(self, messages: list[Message]) -> None:
        appends: dict[str, list[bytes]] = defaultdict(list)
        offsets: dict[str, int] = {}
        tokens: dict[str, list[int]] = {}
        models: dict[str, str] = {}
        for message in messages:
            line = self._line_for(message)
            appends[line.file].append(line.text)
            offsets[f"{message.topic()}:{message.partition()}"] = (message.offset() or 0) + 1
            summed = tokens.setdefault(line.job_id, self.checkpoint.tokens_of(line.job_id))
            for index, count in enumerate(line.tokens):
                summed[index] += count
            if line.model is not None and line.job_id not in self.checkpoint.models:
                models.setdefault(line.job_id, line.model)
        sizes, lines = {}, {}
        for key, new_lines in appends.items():
            path = self.root / key
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("ab") as out:
                out.write(b"".join(new_lines))
                out.flush()
                os.fsync(out.fileno())
                sizes[key] = out.tell()
            lines[key] = self.checkpoint.lines.get(key, 0) + len(new_lines)
        with self._lock:
            self.checkpoint.offsets.update(offsets)
            self.checkpoint.sizes.update(sizes)
            self.checkpoint.lines.update(lines)
            self.checkpoint.tokens.update(tokens)
            self.checkpoint.models.update(models)
            self.checkpoint.save(self._checkpoint_path)

    def _line_for(self, message: Message) -> _Line:
        value = message.value()
        if message.topic() == self._topics[0]:
            try:
                result = results_codec().decode(value)  # Avro or JSON
            except DecodeError as exc:
                # Only workers write here, through the same codec: this is a bug, not data.
                raise RuntimeError(f"undecodable result at {message.offset()}: {exc}") from exc
            is_error, line = result_line(result)
            job_id, usage = result["job_id"], result["usage"]
            return _Line(
                job_file(job_id, ERRORS if is_error else OUTPUT),
                _jsonl(line),
                job_id,
                (
                    usage["prompt_tokens"],
                    usage["completion_tokens"],
                    usage.get("cached_tokens") or 0,  # None: the engine did not say
                ),
                result["model"],
            )
        dead = codec(DEAD_LETTER).decode(value)
        job_id = dead["job_id"] or "(unknown)"
        return _Line(job_file(job_id, ERRORS), _jsonl(dead_letter_line(dead)), job_id)


def _jsonl(line: dict[str, Any]) -> bytes:
    return json.dumps(line, separators=(",", ":")).encode() + b"\n"
