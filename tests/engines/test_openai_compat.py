"""The openai engine against a real OpenAI-compatible server: llama_cpp.server on the tiny model."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import openai
import pytest
from pydantic import SecretStr

from services.errors import EngineDeadError, InvalidRequestError, TransientEngineError
from services.harness.ports import free_port
from services.inference.engines.base import EngineRequest
from services.inference.engines.openai_compat import OpenAICompatEngine
from services.inference.settings import OpenAIEngineOptions
from tests.conftest import LLAMA_SERVER_KEY

MESSAGES = [{"role": "user", "content": "Rate candidate 12: Go, Kafka, 5 years."}]


def chat(**sampling: Any) -> EngineRequest:
    return EngineRequest(
        "r", "/v1/chat/completions", "kbatch-tiny", messages=MESSAGES, sampling=sampling
    )


async def started(base_url: str, key: str | None = LLAMA_SERVER_KEY) -> OpenAICompatEngine:
    options = OpenAIEngineOptions(
        base_url=base_url,
        api_key=SecretStr(key) if key else None,
        max_concurrency=4,
        timeout_s=30,
        connect_timeout_s=2,
    )
    engine = OpenAICompatEngine("kbatch-tiny", options, ("kbatch-tiny",))
    await engine.start()
    return engine


@pytest.fixture
async def engine(llama_server_url: str) -> AsyncIterator[OpenAICompatEngine]:
    engine = await started(llama_server_url)
    yield engine
    await engine.close()


async def test_greedy_answers_match_the_server_asked_directly(
    engine: OpenAICompatEngine, llama_server_url: str
) -> None:
    chat_sampling: dict[str, Any] = {"temperature": 0.0, "top_p": 1.0, "max_tokens": 12}
    output = await engine.generate(chat(**chat_sampling))
    server = openai.OpenAI(base_url=llama_server_url, api_key=LLAMA_SERVER_KEY, max_retries=0)
    expected = server.chat.completions.create(
        model="kbatch-tiny",
        messages=MESSAGES,  # type: ignore[arg-type]
        temperature=0.0,
        top_p=1.0,
        max_tokens=12,
    )
    assert expected.usage is not None
    assert output.text == expected.choices[0].message.content
    assert output.finish_reason == expected.choices[0].finish_reason
    assert output.prompt_tokens == expected.usage.prompt_tokens
    assert output.completion_tokens == expected.usage.completion_tokens > 0
    # A /v1/responses line arrives as the same chat (ingest maps it): the same answer,
    # asked of the server's chat route (it need not serve the Responses API).
    responses = EngineRequest(
        "r2", "/v1/responses", "kbatch-tiny", messages=MESSAGES, sampling=chat_sampling
    )
    assert (await engine.generate(responses)).text == output.text


async def test_a_prompt_past_the_context_is_a_permanent_refusal(
    engine: OpenAICompatEngine,
) -> None:
    too_long = EngineRequest(
        "l", "/v1/chat/completions", "m", messages=[{"role": "user", "content": "y" * 2000}]
    )
    with pytest.raises(InvalidRequestError, match="maximum context length"):
        await engine.generate(too_long)


async def test_wrong_credentials_stop_the_engine_instead_of_failing_every_request(
    llama_server_url: str,
) -> None:
    engine = await started(llama_server_url, key="not-the-key")
    try:
        with pytest.raises(EngineDeadError, match="401"):
            await engine.generate(chat())
    finally:
        await engine.close()


async def test_an_unreachable_server_is_transient() -> None:
    engine = await started(f"http://127.0.0.1:{free_port()}/v1")
    try:
        with pytest.raises(TransientEngineError, match="unreachable"):
            await engine.generate(chat())
    finally:
        await engine.close()


async def test_an_engine_serving_the_servers_models_reads_them_at_start(
    llama_server_url: str,
) -> None:
    """models_from_server: the worker serves what the server lists at GET /v1/models,
    each under its own name, sent to the server as named."""
    options = OpenAIEngineOptions(
        base_url=llama_server_url,
        api_key=SecretStr(LLAMA_SERVER_KEY),
        max_concurrency=2,
        models_from_server=True,
    )
    engine = OpenAICompatEngine("unused", options, ("configured-name",))
    await engine.start()
    try:
        assert engine.served_models == ("kbatch-tiny",)
        output = await engine.generate(chat(temperature=0.0, max_tokens=4))
        assert output.completion_tokens > 0
    finally:
        await engine.close()
