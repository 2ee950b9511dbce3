"""The llamacpp engine on the tiny GGUF: real llama.cpp inference, no broker needed."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import llama_cpp
import pytest

from services.errors import ConfigurationError, InvalidRequestError
from services.inference.engines.base import EngineRequest
from services.inference.engines.llamacpp import LlamaCppEngine
from services.inference.settings import LlamaCppEngineOptions
from services.models.tiny import write_tiny_model

MESSAGES = [
    {"role": "system", "content": "You score candidates."},
    {"role": "user", "content": "Candidate 7: Kafka, Rust; 3 years. Score? héllo 🚀"},
]


def chat(request_id: str = "r", **sampling: Any) -> EngineRequest:
    return EngineRequest(
        request_id, "/v1/chat/completions", "kbatch-tiny", messages=MESSAGES, sampling=sampling
    )


@pytest.fixture
async def engine(tiny_model: Path) -> AsyncIterator[LlamaCppEngine]:
    started = LlamaCppEngine(str(tiny_model), LlamaCppEngineOptions(), "kbatch-tiny")
    await started.start()
    yield started
    await started.close()


@pytest.fixture(scope="module")
def direct(tiny_model: Path) -> llama_cpp.Llama:
    """The binding called directly: the reference every answer must equal."""
    return llama_cpp.Llama(model_path=str(tiny_model), n_ctx=0, verbose=False)


async def test_greedy_chat_answers_what_the_binding_answers(
    engine: LlamaCppEngine, direct: llama_cpp.Llama
) -> None:
    output = await engine.generate(chat(temperature=0.0, max_tokens=24, seed=3))
    expected: Any = direct.create_chat_completion(
        messages=MESSAGES,  # type: ignore[arg-type]
        temperature=0.0,
        top_p=1.0,
        max_tokens=24,
        seed=3,
    )
    assert output.text == expected["choices"][0]["message"]["content"]
    assert output.text  # random weights still produce tokens
    assert output.prompt_tokens == expected["usage"]["prompt_tokens"] > len(MESSAGES[1]["content"])
    # The binding counts completion tokens by re-tokenizing its text: byte-level gibberish
    # can count a few more than were generated. kbatch reports the binding's own figure.
    assert output.completion_tokens == expected["usage"]["completion_tokens"] >= 24
    assert output.finish_reason == "length"


async def test_completions_and_stop_sequences_reach_the_binding(
    engine: LlamaCppEngine, direct: llama_cpp.Llama
) -> None:
    request = EngineRequest(
        "c", "/v1/completions", "kbatch-tiny", prompt="Once upon", sampling={"temperature": 0.0}
    )
    output = await engine.generate(request)
    expected: Any = direct.create_completion("Once upon", temperature=0.0, top_p=1.0, max_tokens=16)
    assert output.text == expected["choices"][0]["text"]
    assert output.completion_tokens == 16  # kbatch's default max_tokens
    first_char = (output.text or "x")[0]
    stopped = await engine.generate(
        EngineRequest(
            "s",
            "/v1/completions",
            "kbatch-tiny",
            prompt="Once upon",
            sampling={"temperature": 0.0, "stop": [first_char]},
        )
    )
    assert stopped.text == "" and stopped.finish_reason == "stop"


async def test_a_prompt_past_the_context_is_refused_with_the_engines_reason(
    engine: LlamaCppEngine,
) -> None:
    too_long = EngineRequest(
        "l",
        "/v1/chat/completions",
        "kbatch-tiny",
        messages=[{"role": "user", "content": "x" * 2000}],
    )
    with pytest.raises(InvalidRequestError, match=r"exceed context window of 512"):
        await engine.generate(too_long)


async def test_embeddings_are_one_pooled_vector_per_input(tiny_model: Path) -> None:
    engine = LlamaCppEngine(str(tiny_model), LlamaCppEngineOptions(task="embed"), "kbatch-tiny")
    await engine.start()
    try:
        request = EngineRequest("e", "/v1/embeddings", "kbatch-tiny", input=["hello"])
        first = await engine.generate(request)
        again = await engine.generate(request)
        other = await engine.generate(
            EngineRequest("f", "/v1/embeddings", "kbatch-tiny", input=["goodbye"])
        )
        with pytest.raises(InvalidRequestError, match="TASK=generate"):
            await engine.generate(chat())
    finally:
        await engine.close()
    assert first.embedding is not None and len(first.embedding) == 64
    assert first.embedding == again.embedding != other.embedding
    assert first.prompt_tokens > 0


async def test_cancelled_requests_leave_every_instance_serving(tiny_model: Path) -> None:
    engine = LlamaCppEngine(str(tiny_model), LlamaCppEngineOptions(instances=2), "kbatch-tiny")
    await engine.start()
    try:
        assert engine.max_concurrency == 2
        long = [
            asyncio.create_task(engine.generate(chat(str(i), max_tokens=400, temperature=0.0)))
            for i in range(3)
        ]
        await asyncio.sleep(0.01)
        long[0].cancel()  # decoding: runs out on its thread, its output dropped
        long[2].cancel()  # queued behind both instances: never decoded
        finished = await long[1]
        assert finished.completion_tokens > 0
        again = await asyncio.gather(*(engine.generate(chat(f"n{i}")) for i in range(4)))
        assert all(o.completion_tokens >= 16 for o in again)
        assert long[0].cancelled() and long[2].cancelled()
    finally:
        await engine.close()


async def test_a_missing_model_file_fails_at_start_with_one_clear_line(tmp_path: Path) -> None:
    engine = LlamaCppEngine(str(tmp_path / "none.gguf"), LlamaCppEngineOptions(), "none")
    with pytest.raises(ConfigurationError, match="is not a GGUF file"):
        await engine.start()
    await engine.close()


def test_the_tiny_model_is_the_same_bytes_for_the_same_seed(tmp_path: Path) -> None:
    def digest(seed: int, name: str) -> str:
        path = write_tiny_model(tmp_path / name, seed)
        return hashlib.sha256(path.read_bytes()).hexdigest()

    assert digest(0, "a.gguf") == digest(0, "b.gguf") != digest(1, "c.gguf")


def shared(system: str, question: str, key: str | None) -> EngineRequest:
    messages = [{"role": "system", "content": system}, {"role": "user", "content": question}]
    return EngineRequest(
        f"r-{key}-{question}",
        "/v1/chat/completions",
        "kbatch-tiny",
        messages=messages,
        sampling={"temperature": 0.0, "max_tokens": 2},
        prefix_key=key,
    )


async def test_cached_tokens_are_the_prompt_tokens_llama_cpp_did_not_evaluate(
    engine: LlamaCppEngine,
) -> None:
    system = "You grade short answers. " * 8
    cold = await engine.generate(shared(system, "First?", None))
    warm = await engine.generate(shared(system, "Second?", None))
    other = await engine.generate(shared("Another system prompt entirely. " * 6, "Third?", None))
    assert cold.cached_tokens == 0
    # Everything up to the question was in the KV already; the question was not.
    assert warm.cached_tokens is not None
    assert 0 < len(system) < warm.cached_tokens < warm.prompt_tokens
    # Only the chat template's opening tokens are shared with a different system prompt.
    assert other.cached_tokens is not None and other.cached_tokens < 16


async def test_one_instance_runs_a_prefix_back_to_back_from_its_queue(tiny_model: Path) -> None:
    """Requests queued A, B, A, B, A, B: the instance takes the As together, then the
    Bs, so all but the first of each prefix find it cached."""
    engine = LlamaCppEngine(str(tiny_model), LlamaCppEngineOptions(), "kbatch-tiny")
    await engine.start()
    try:
        systems = {"a": "Alpha instructions. " * 8, "b": "Beta guidance here. " * 8}
        order = ["a", "b"] * 3
        outputs = await asyncio.gather(
            *(engine.generate(shared(systems[k], f"q{i}", k)) for i, k in enumerate(order))
        )
    finally:
        await engine.close()
    cold = [o for o in outputs if (o.cached_tokens or 0) < 100]
    assert len(cold) == 2, [o.cached_tokens for o in outputs]
