"""One line's way in, the same for an HTTP upload and a Kafka-native submission.

The steps, in order: the line's size, the job's line count, parsing and validation,
the duplicate ledger (the custom_id is claimed), the placement (which topic and
partition the request waits in) and the record to publish there. The first refusal
ends a line's way. What surrounds the steps differs by transport and stays with it:
an upload refuses whole chunks (backpressure, the tenant's room) and publishes through
the async producer; the submissions consumer pauses, rejects per line and publishes in
its transaction.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, NamedTuple

from services.codec import REQUEST, codec
from services.ingest.admission.ledger import JobLedger
from services.ingest.admission.lines import RawLine
from services.ingest.admission.prefix_placement import PrefixAffinity
from services.ingest.admission.validation import Limits, Rejection, RequestContext, parse_line
from services.kafka.transactions import OutRecord
from services.lanes import Lane
from services.prefix import PREFIX_HEADER, prefix_key
from services.routing import Cell, RequestLayout


@dataclass(frozen=True)
class Admitted:
    """A line that passed every check: its request record, its custom_id claimed."""

    line: int
    custom_id: str
    lane: Lane
    key: bytes  # the request id: where the request waits follows from it
    request: dict[str, Any]  # the InferenceRequest record

    @property
    def cell(self) -> Cell:
        """The model's lane the request waits in."""
        return Cell(self.request["model"], self.lane)


class Placement(NamedTuple):
    """Where an admitted request waits, and the prefix key that placed it (if any)."""

    topic: str
    partition: int
    prefix_key: str | None = None


class AdmissionPipeline:
    """The steps every line takes before its request is published; one for ingest,
    shared by uploads and submissions (the ledger is theirs together)."""

    def __init__(
        self,
        ledger: JobLedger,
        layout: RequestLayout,
        limits: Limits,
        max_line_bytes: int,
        max_lines_per_job: int,
        prefix_affinity: PrefixAffinity | None = None,
    ) -> None:
        self._ledger = ledger
        self._layout = layout
        self._prefix_affinity = prefix_affinity
        self.limits = limits  # replaced whole when the model registry changes
        self._max_line_bytes = max_line_bytes
        self._max_lines_per_job = max_lines_per_job
        self._codec = codec(REQUEST)

    def admit(self, line: RawLine, context: RequestContext) -> Admitted | Rejection:
        """The line admitted (its custom_id claimed in the ledger), or its first refusal."""
        data = self.sized(line)
        if isinstance(data, Rejection):
            return data
        over = self.counted(line.number, context.job_id)
        if over is not None:
            return over
        request = self.parsed(line.number, data, context)
        if isinstance(request, Rejection):
            return request
        return self.claimed(line.number, context.priority, request)

    def sized(self, line: RawLine) -> bytes | Rejection:
        """Step 1: the line's bytes, unless it is over the size limit (the splitter
        drops an upload's over-long line, keeping only its size)."""
        if line.data is None or line.size > self._max_line_bytes:
            reason = f"line is {line.size} bytes, the limit is {self._max_line_bytes}"
            return Rejection(line.number, "line_too_long", reason)
        return line.data

    def counted(self, number: int, job_id: str) -> Rejection | None:
        """Step 2: a job holds at most `max_lines_per_job` lines."""
        if self._ledger.count(job_id) >= self._max_lines_per_job:
            reason = f"the job already has {self._max_lines_per_job} lines, the limit"
            return Rejection(number, "too_many_lines", reason)
        return None

    def parsed(
        self, number: int, data: bytes, context: RequestContext
    ) -> dict[str, Any] | Rejection:
        """Step 3: the request record of a valid line (`validation.parse_line`)."""
        return parse_line(number, data, context, self.limits)

    def claimed(self, number: int, lane: Lane, request: dict[str, Any]) -> Admitted | Rejection:
        """Step 4: a custom_id is used once per job; claiming it admits the line."""
        job_id, custom_id = request["job_id"], request["custom_id"]
        if not self._ledger.claim(job_id, custom_id):
            reason = f"custom_id {custom_id!r} already used in job {job_id}"
            return Rejection(number, "duplicate_custom_id", reason, custom_id)
        return Admitted(number, custom_id, lane, request["request_id"].encode(), request)

    def placement(self, admitted: Admitted) -> Placement:
        """Step 5: its model's requests topic, and the partition of its lane: by its
        prompt prefix when it has one (and affinity is on), else by its id."""
        model = admitted.request["model"]
        topic = self._layout.topic(model)
        affinity = self._prefix_affinity
        if affinity is not None:
            key = prefix_key(model, admitted.request["body"], affinity.completion_chars)
            if key is not None:
                where = affinity.placement.place(model, admitted.lane, key)
                return Placement(topic, where.partition, key)
        return Placement(topic, self._layout.place(model, admitted.lane, admitted.key).partition)

    def record(self, admitted: Admitted) -> OutRecord:
        """Step 6: what to publish: the encoded request, keyed by its id, at its placement,
        with its prefix key in a header for the worker's engine queue."""
        topic, partition, key = self.placement(admitted)
        headers: list[tuple[str, str | bytes | None]] = []
        if key is not None:
            headers.append((PREFIX_HEADER, key.encode()))
        value = self._codec.encode(admitted.request)
        return OutRecord(topic, admitted.key, value, headers, partition)

    def release(self, job_id: str, custom_ids: Iterable[str]) -> None:
        """Forget claims whose requests were not published (refused, failed, rolled back)."""
        self._ledger.release(job_id, custom_ids)
