"""The consumer factory's configuration per role (pure), and the threaded reader's
routing of records and errors (over a scripted consumer)."""

from __future__ import annotations

from typing import Any, cast

import pytest
from confluent_kafka import Consumer, KafkaError, Message, TopicPartition
from hypothesis import given
from hypothesis import strategies as st

from services.kafka.consumers import ConsumerRole, consumer_config
from services.kafka.reader import TopicReader

BASE = {"bootstrap.servers": "b:9092", "security.protocol": "SSL", "isolation.level": "x"}


@pytest.mark.parametrize(
    ("role", "isolation"),
    [
        # The worker: offsets go only through its transactions.
        (ConsumerRole.MEMBER, "read_committed"),
        # Offsets and backlogs: sees what is published, committed or not.
        (ConsumerRole.READER, "read_uncommitted"),
        # Results, dead letters, compacted state: only what a transaction committed.
        (ConsumerRole.COMMITTED_READER, "read_committed"),
    ],
)
def test_no_role_commits_offsets_by_itself(role: ConsumerRole, isolation: str) -> None:
    assert consumer_config(BASE, role, "kbatch-inference") == {
        "bootstrap.servers": "b:9092",
        "security.protocol": "SSL",
        "group.id": "kbatch-inference",
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        "isolation.level": isolation,
    }


def test_a_member_needs_its_group() -> None:
    with pytest.raises(ValueError, match="group"):
        consumer_config(BASE, ConsumerRole.MEMBER)


def test_a_reader_without_a_group_gets_a_unique_one() -> None:
    first = consumer_config(BASE, ConsumerRole.READER)["group.id"]
    second = consumer_config(BASE, ConsumerRole.COMMITTED_READER)["group.id"]
    assert first.startswith("kbatch-reader-")
    assert second.startswith("kbatch-reader-")
    assert first != second


def test_the_base_config_is_not_changed() -> None:
    base = dict(BASE)
    consumer_config(base, ConsumerRole.MEMBER, "g", **{"fetch.wait.max.ms": 100})
    assert base == BASE


KEYS = st.sampled_from(
    [
        "group.id",
        "enable.auto.commit",
        "enable.auto.offset.store",
        "auto.offset.reset",
        "isolation.level",
        "bootstrap.servers",
        "enable.partition.eof",
        "client.id",
    ]
)
VALUES = st.one_of(st.booleans(), st.integers(), st.sampled_from(["earliest", "latest", "", "g2"]))


@given(
    role=st.sampled_from(ConsumerRole),
    overrides=st.dictionaries(KEYS, VALUES, max_size=8),
)
def test_overrides_win_over_the_role_the_group_and_the_base(
    role: ConsumerRole, overrides: dict[str, Any]
) -> None:
    config = consumer_config(BASE, role, "g", **overrides)
    without = consumer_config(BASE, role, "g")
    for key, value in overrides.items():
        assert config[key] == value
    for key, value in without.items():
        if key not in overrides:
            assert config[key] == value
    assert set(config) == set(without) | set(overrides)


class _Record:
    def __init__(self, value: bytes | None = None, error: KafkaError | None = None) -> None:
        self._value, self._error = value, error

    def value(self) -> bytes | None:
        return self._value

    def error(self) -> KafkaError | None:
        return self._error


class _ScriptedConsumer:
    """Hands out one scripted batch per consume(); empty batches once they run out."""

    def __init__(self, batches: list[list[_Record]]) -> None:
        self.batches = batches
        self.assigned: list[TopicPartition] = []
        self.closed = False

    def assign(self, partitions: list[TopicPartition]) -> None:
        self.assigned = partitions

    def consume(self, num_messages: int, timeout: float) -> list[_Record]:
        return self.batches.pop(0) if self.batches else []

    def close(self) -> None:
        self.closed = True


def _read(batches: list[list[_Record]], on_error: Any) -> tuple[_ScriptedConsumer, list[Any]]:
    consumer = _ScriptedConsumer(batches)
    handed: list[Any] = []
    reader: TopicReader

    def on_records(records: list[Message]) -> None:
        handed.append([r.value() for r in records])
        if not consumer.batches:
            reader.stop()

    reader = TopicReader(
        "test",
        lambda: cast(Consumer, consumer),
        lambda _: [TopicPartition("t", 0, 0)],
        on_records,
        on_error,
        max_records=10,
    )
    reader.run()
    return consumer, handed


def test_the_reader_skips_eof_hands_on_records_and_reports_every_error() -> None:
    transport = KafkaError(KafkaError._TRANSPORT)
    errors: list[KafkaError] = []
    batches = [
        [_Record(b"a"), _Record(error=transport), _Record(b"b")],
        [_Record(error=KafkaError(KafkaError._PARTITION_EOF))],
        [_Record(b"c")],
    ]
    consumer, handed = _read(batches, errors.append)
    assert consumer.assigned == [TopicPartition("t", 0, 0)]
    assert handed == [[b"a", b"b"], [b"c"]]
    assert errors == [transport]
    assert consumer.closed


def test_an_error_handler_that_raises_ends_the_reader_before_its_batch() -> None:
    def on_error(error: KafkaError) -> None:
        raise RuntimeError(str(error))

    fatal = KafkaError(KafkaError._FATAL, "fenced", fatal=True)
    consumer = _ScriptedConsumer([[_Record(b"a"), _Record(error=fatal)]])
    reader = TopicReader(
        "test",
        lambda: cast(Consumer, consumer),
        lambda _: [],
        lambda records: pytest.fail(f"handed on {records}"),
        on_error,
    )
    with pytest.raises(RuntimeError, match="fenced"):
        reader.run()
    assert consumer.closed
