"""The runner's tries: one engine call when it succeeds, the retry policy after a
transient failure (that failure counted as its first attempt), the DLQ past the limit."""

from __future__ import annotations

import pytest

from services.codec import DEAD_LETTER, RESULT, codec
from services.errors import InvalidRequestError, TransientEngineError
from services.harness.pipeline import request_record
from services.inference.engines.base import EngineOutput, EngineRequest
from services.inference.outputs import Origin
from services.inference.runner import RequestRunner, RunnerConfig

MAX_ATTEMPTS = 4


class FailingFirst:
    """An engine whose calls raise `errors` in turn, then answer."""

    name = "scripted"
    served_models: tuple[str, ...] = ("kbatch-sim",)
    max_concurrency = 1
    running = 0

    def __init__(self, *errors: Exception) -> None:
        self.errors = list(errors)
        self.attempts_seen: list[int] = []
        self.priorities_seen: list[str] = []

    async def start(self) -> None:
        return None

    async def generate(self, request: EngineRequest) -> EngineOutput:
        self.attempts_seen.append(request.attempt)
        self.priorities_seen.append(request.priority)
        if self.errors:
            raise self.errors.pop(0)
        return EngineOutput(prompt_tokens=3, completion_tokens=2, text="ok")

    def shrink_concurrency(self) -> int:
        return 1

    async def close(self) -> None:
        return None


async def run_with(engine: FailingFirst) -> tuple[str, dict[str, object]]:
    config = RunnerConfig("w", "results", "dlq", MAX_ATTEMPTS, 0.0, 0.0)
    record = request_record("job", 1, max_tokens=2)
    origin = Origin("requests", 0, 7, b"key", b"value", 0)
    [output] = await RequestRunner(engine, config).run(origin, record)
    kind = RESULT if output.topic == "results" else DEAD_LETTER
    return output.topic, codec(kind).decode(output.value)


async def test_a_request_that_succeeds_calls_the_engine_once() -> None:
    engine = FailingFirst()
    topic, result = await run_with(engine)
    assert (topic, result["attempt"], engine.attempts_seen) == ("results", 1, [0])


async def test_a_share_taken_record_runs_at_the_busy_lanes_engine_priority() -> None:
    """The engine schedules it as the busy lane; its result still names its own lane."""
    engine = FailingFirst()
    config = RunnerConfig("w", "results", "dlq", MAX_ATTEMPTS, 0.0, 0.0)
    record = request_record("job", 1, lane="low", max_tokens=2)
    origin = Origin("requests", 3, 7, b"key", b"value", 0)
    [output] = await RequestRunner(engine, config).run(origin, record, "high")
    [plain] = await RequestRunner(engine, config).run(origin, record)
    assert engine.priorities_seen == ["high", "low"]
    assert codec(RESULT).decode(output.value)["priority"] == "low"
    assert codec(RESULT).decode(plain.value)["priority"] == "low"


@pytest.mark.parametrize("failures", [1, MAX_ATTEMPTS - 1])
async def test_transient_failures_are_retried_up_to_the_limit(failures: int) -> None:
    engine = FailingFirst(*[TransientEngineError("busy")] * failures)
    topic, result = await run_with(engine)
    assert topic == "results"
    assert engine.attempts_seen == list(range(failures + 1))
    assert result["attempt"] == failures + 1


async def test_past_the_limit_the_request_is_a_dead_letter() -> None:
    engine = FailingFirst(*[TransientEngineError("busy")] * MAX_ATTEMPTS)
    topic, letter = await run_with(engine)
    assert engine.attempts_seen == list(range(MAX_ATTEMPTS))
    assert (topic, letter["stage"], letter["attempt"]) == ("dlq", "retries_exhausted", 4)


@pytest.mark.parametrize("transient_first", [0, 1, 2])
async def test_an_invalid_request_is_never_retried(transient_first: int) -> None:
    engine = FailingFirst(
        *[TransientEngineError("busy")] * transient_first, InvalidRequestError("x")
    )
    topic, letter = await run_with(engine)
    assert (topic, letter["stage"], letter["error_class"]) == (
        "dlq",
        "inference",
        "InvalidRequestError",
    )
    assert letter["attempt"] == transient_first + 1
    assert len(engine.attempts_seen) == transient_first + 1
