"""A failed commit never leaves a transaction open: aborted, or the producer replaced."""

from __future__ import annotations

from typing import Any, cast

import pytest
from confluent_kafka import KafkaError, KafkaException, Producer, TopicPartition

from services.errors import FencedError, KafkaUnavailableError, ProducerFatalError
from services.kafka.transactions import OutRecord, TransactionalProducer


class ScriptedProducer:
    """Stands in for librdkafka's producer: raises what a call is scripted to raise."""

    def __init__(self, fails: dict[str, KafkaError]) -> None:
        self.fails = fails
        self.calls: list[str] = []

    def _call(self, name: str) -> None:
        self.calls.append(name)
        if name in self.fails:
            raise KafkaException(self.fails[name])

    def begin_transaction(self) -> None:
        self._call("begin")

    def produce(self, *args: Any, **kwargs: Any) -> None:
        self._call("produce")

    def send_offsets_to_transaction(self, *args: Any) -> None:
        self._call("send_offsets")

    def commit_transaction(self, *args: Any) -> None:
        self._call("commit")

    def abort_transaction(self, *args: Any) -> None:
        self._call("abort")


def commit_with(producer: ScriptedProducer) -> TransactionalProducer:
    txn = TransactionalProducer({}, "t.inference.requests.0")
    txn._producer = producer  # type: ignore[assignment]
    record = OutRecord("results", b"key", b"value", [])
    txn.commit([record], TopicPartition("requests", 0, 10), None)
    return txn


TIMED_OUT = KafkaError(KafkaError._TIMED_OUT, "timed out", retriable=True)


def test_a_retriable_failure_aborts_the_open_transaction() -> None:
    producer = ScriptedProducer({"send_offsets": TIMED_OUT})
    with pytest.raises(KafkaUnavailableError):
        commit_with(producer)
    assert producer.calls == ["begin", "produce", "send_offsets", "abort"]


def test_a_failed_abort_replaces_the_producer() -> None:
    producer = ScriptedProducer({"commit": TIMED_OUT, "abort": TIMED_OUT})
    txn = TransactionalProducer({}, "t.inference.requests.0")
    txn._producer = producer  # type: ignore[assignment]
    with pytest.raises(ProducerFatalError):
        txn.commit([], TopicPartition("requests", 0, 10), None)
    assert txn._producer is None


def test_a_fatal_error_replaces_the_producer_without_abort() -> None:
    fatal = KafkaError(KafkaError._FATAL, "fatal", fatal=True)
    producer = ScriptedProducer({"commit": fatal})
    with pytest.raises(ProducerFatalError):
        commit_with(producer)
    assert "abort" not in producer.calls


def test_fencing_is_not_aborted_and_not_retried() -> None:
    fenced = KafkaError(KafkaError.PRODUCER_FENCED, "fenced")
    producer = ScriptedProducer({"send_offsets": fenced})
    with pytest.raises(FencedError):
        commit_with(producer)
    assert "abort" not in producer.calls


class InitScript:
    """init_transactions answers with each scripted error in turn, then succeeds."""

    def __init__(self, *errors: KafkaError) -> None:
        self.errors = list(errors)
        self.calls = 0

    def init_transactions(self, *args: Any) -> None:
        self.calls += 1
        if self.errors:
            raise KafkaException(self.errors.pop(0))


def test_a_timed_out_init_is_resumed_on_the_same_producer() -> None:
    timed_out = KafkaError(KafkaError._TIMED_OUT, "retry call to resume", retriable=True)
    producer = InitScript(timed_out, timed_out)
    txn = TransactionalProducer({}, "t.inference.requests.0")
    txn._producer = producer  # type: ignore[assignment]
    for _ in range(2):
        with pytest.raises(KafkaUnavailableError):
            txn.open()
        assert txn._producer is cast(Producer, producer)  # kept: the next call resumes it
    txn.open()
    txn.open()  # idempotent once initialised
    assert producer.calls == 3


def test_a_fatal_init_drops_the_producer() -> None:
    fatal = KafkaError(KafkaError._FATAL, "fenced at init", fatal=True)
    txn = TransactionalProducer({}, "t.inference.requests.0")
    txn._producer = InitScript(fatal)  # type: ignore[assignment]
    with pytest.raises(ProducerFatalError):
        txn.open()
    assert txn._producer is None
