"""Ingest's placement by prefix: the record every transport publishes (HTTP uploads and
Kafka-native submissions share the pipeline) carries its key and lands by it."""

from __future__ import annotations

import json
from collections import Counter

from services.ingest.admission.ledger import JobLedger
from services.ingest.admission.lines import RawLine
from services.ingest.admission.pipeline import AdmissionPipeline, Admitted
from services.ingest.admission.prefix_placement import PrefixAffinity, PrefixPlacement
from services.ingest.admission.validation import Limits, RequestContext
from services.lanes import Lane, LaneLayout
from services.prefix import PREFIX_HEADER, prefix_key
from services.routing import ModelPartition, RequestLayout

LAYOUT = RequestLayout("t", LaneLayout(high=1, normal=4, low=1))
NORMAL = list(LAYOUT.lanes.partitions(Lane.NORMAL))


def line(number: int, system: str | None, question: str) -> RawLine:
    messages = [{"role": "user", "content": question}]
    if system is not None:
        messages.insert(0, {"role": "system", "content": system})
    body = {"model": "m", "messages": messages, "max_tokens": 4}
    data = json.dumps(
        {"custom_id": f"c{number}", "method": "POST", "url": "/v1/chat/completions", "body": body}
    ).encode()
    return RawLine(number, data, len(data))


def pipeline(
    affinity: bool, measured: dict[ModelPartition, int] | None = None
) -> AdmissionPipeline:
    placement = PrefixPlacement(LAYOUT, lambda: measured, 0.25)
    return AdmissionPipeline(
        JobLedger(10),
        LAYOUT,
        Limits(frozenset({"m"}), 100),
        max_line_bytes=10_000,
        max_lines_per_job=1_000,
        prefix_affinity=PrefixAffinity(placement, 1000) if affinity else None,
    )


def published(admission: AdmissionPipeline, lines: list[RawLine]) -> list[tuple[int, str | None]]:
    context = RequestContext("job", "tenant", Lane.NORMAL, 0)
    records = []
    for raw in lines:
        admitted = admission.admit(raw, context)
        assert isinstance(admitted, Admitted)
        record = admission.record(admitted)
        headers = dict(record.headers)
        key = headers.get(PREFIX_HEADER)
        records.append((record.partition, key.decode() if isinstance(key, bytes) else None))
    return records


def system_key(system: str) -> str | None:
    return prefix_key("m", {"messages": [{"role": "system", "content": system}]})


def test_lines_sharing_a_system_prompt_carry_one_key_and_share_a_partition() -> None:
    """Over a lane that already holds a backlog, prompts whose ring positions differ each
    keep one partition (two on one position share it only up to the bound)."""
    homes: dict[int, str] = {}
    for candidate in (f"system {n}" for n in range(50)):
        key = system_key(candidate)
        assert key is not None
        homes.setdefault(int(key, 16) % len(NORMAL), candidate)
    systems = list(homes.values())[:3]
    measured = {ModelPartition("m", p): 30 for p in NORMAL}
    lines = [line(i, systems[i % 3], f"question {i}") for i in range(30)]
    records = published(pipeline(True, measured), lines)
    assert {key for _, key in records} == {system_key(s) for s in systems}
    by_key: dict[str | None, set[int]] = {}
    for partition, key in records:
        by_key.setdefault(key, set()).add(partition)
    assert all(p in NORMAL for p, _ in records)
    assert all(len(places) == 1 for places in by_key.values()), by_key


def test_two_prompts_over_an_empty_lane_still_use_all_of_it() -> None:
    """Two keys cannot keep four partitions within (1 + ε) x the mean from one each: the
    bound spreads them, each keeping most of its lines on its own partition."""
    lines = [line(i, f"system {i % 2}", f"question {i}") for i in range(40)]
    records = published(pipeline(True, {}), lines)
    counts = Counter(partition for partition, _ in records)
    assert set(counts) == set(NORMAL)
    assert max(counts.values()) <= 1.25 * len(lines) / len(NORMAL) + 1
    for system in ("system 0", "system 1"):
        mine = Counter(p for p, key in records if key == system_key(system))
        assert max(mine.values()) >= sum(mine.values()) / 2, mine


def test_a_busy_partition_sends_a_key_elsewhere_and_the_lane_stays_bounded() -> None:
    home = system_key("hot")
    assert home is not None
    measured = {ModelPartition("m", p): 0 for p in NORMAL}
    own = NORMAL[int(home, 16) % len(NORMAL)]
    measured[ModelPartition("m", own)] = 100  # a backlog measured there already
    records = published(pipeline(True, measured), [line(i, "hot", f"q{i}") for i in range(40)])
    counts = Counter(partition for partition, _ in records)
    assert own not in counts  # past (1 + ε) x the mean from the start
    # Spilled to the next partitions on the ring, each filled to the lane's mean.
    total = 100 + len(records)
    assert max(counts.values()) <= total / len(NORMAL) + 1


def test_without_affinity_or_a_shared_part_lines_spread_by_id_with_no_key() -> None:
    lines = [line(i, "same system", f"question {i}") for i in range(40)]
    off = published(pipeline(False), lines)
    assert {key for _, key in off} == {None}
    assert len({partition for partition, _ in off}) > 1
    no_system = published(pipeline(True, {}), [line(i, None, f"q{i}") for i in range(40)])
    assert {key for _, key in no_system} == {None}
