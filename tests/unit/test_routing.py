"""The routing layout: a topic per model, lanes as partition ranges inside it."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.lanes import Lane, LaneLayout
from services.routing import (
    Cell,
    ModelPartition,
    RequestLayout,
    cell_backlog,
    decode_partitions,
    encode_partitions,
    model_slug,
)

KAFKA_TOPIC = re.compile(r"^[A-Za-z0-9._-]{1,249}$")
LAYOUT = RequestLayout("kbatch", LaneLayout(4, 8, 4))
model_ids = st.text(min_size=1, max_size=400)


@given(model_ids)
def test_every_model_id_names_a_valid_stable_topic(model: str) -> None:
    topic = LAYOUT.topic(model)
    assert KAFKA_TOPIC.match(topic), topic
    assert LAYOUT.topic(model) == topic
    # '.' and '_' collide in Kafka's metric names: a model's part uses neither.
    assert "_" not in model_slug(model) and "." not in model_slug(model)


@given(model_ids, model_ids)
def test_distinct_models_never_share_a_topic(a: str, b: str) -> None:
    if a != b:
        assert LAYOUT.topic(a) != LAYOUT.topic(b)


def test_ids_that_read_alike_get_topics_of_their_own() -> None:
    alike = ["meta-llama/Llama-3.1-8B", "meta-llama.Llama-3.1-8B", "meta-llama-Llama-3-1-8B"]
    topics = {LAYOUT.topic(m) for m in alike}
    assert len(topics) == 3
    assert all(t.startswith("kbatch.requests.meta-llama-Llama-3-1-8B-") for t in topics)


def test_an_empty_model_id_is_refused() -> None:
    with pytest.raises(ValueError, match="empty"):
        model_slug("")


@given(model_ids, st.sampled_from(list(Lane)), st.binary(max_size=64))
def test_a_request_waits_in_its_models_lane(model: str, lane: Lane, key: bytes) -> None:
    where = LAYOUT.place(model, lane, key)
    assert where.model == model
    assert LAYOUT.cell_of(where) == Cell(model, lane)
    assert where in LAYOUT.cell_partitions(Cell(model, lane))
    assert LAYOUT.place(model, lane, key) == where


@given(st.dictionaries(st.tuples(st.sampled_from("abc"), st.integers(0, 15)), st.integers(0, 99)))
def test_cell_backlog_sums_each_models_lanes(backlog: dict[tuple[str, int], int]) -> None:
    per_partition = {ModelPartition(m, p): n for (m, p), n in backlog.items()}
    cells = cell_backlog(LAYOUT, per_partition)
    assert sum(cells.values()) == sum(per_partition.values())
    for cell, total in cells.items():
        assert total == sum(per_partition.get(w, 0) for w in LAYOUT.cell_partitions(cell))
    assert {c.model for c in cells} == {w.model for w in per_partition}


@given(st.frozensets(st.builds(ModelPartition, st.text(min_size=1), st.integers(0, 99))))
def test_partitions_round_trip_through_their_record_form(
    partitions: frozenset[ModelPartition],
) -> None:
    assert decode_partitions(encode_partitions(partitions)) == partitions
