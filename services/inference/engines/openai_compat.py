"""The `openai` engine: any OpenAI-compatible server behind a worker.

vLLM's `vllm serve`, SGLang, TGI, llama.cpp's server, Ollama or a hosted API
answer the requests; kbatch keeps its Kafka intake, priorities, exactly-once
results and dead letters in front of them. Up to `max_concurrency` requests are
outstanding at once over one pooled keep-alive client (HTTP/2 where the server
offers it over TLS). A cancelled request closes its connection, which
OpenAI-compatible servers take as an abort.

Status mapping: 408, 409, 429 and 5xx, timeouts and connection failures are
transient (retried with backoff, at least the server's Retry-After); 401 and 403
mean the worker is misconfigured, so the engine is dead rather than every
request dead-lettered; other 4xx are the request's own fault (permanent).
"""

from __future__ import annotations

import asyncio
import email.utils
import time
from typing import Any

import httpx

from services.errors import (
    ConfigurationError,
    EngineDeadError,
    InvalidRequestError,
    TransientEngineError,
)
from services.inference.engines.base import EngineOutput, EngineRequest
from services.inference.engines.openai_params import chat_messages, sampling_kwargs
from services.inference.settings import InferenceOptions, OpenAIEngineOptions

_TRANSIENT_STATUSES = frozenset({408, 409, 429})
_PATHS = {
    "/v1/chat/completions": "chat/completions",
    "/v1/completions": "completions",
    "/v1/embeddings": "embeddings",
    # A responses line arrives as a chat (see services/ingest/validation.py).
    "/v1/responses": "chat/completions",
}


def request_body(request: EngineRequest, remote_model: str) -> dict[str, Any]:
    """The JSON body for the server (pure)."""
    if request.endpoint == "/v1/embeddings":
        inputs = request.input or []
        if len(inputs) != 1:
            raise InvalidRequestError("the openai engine embeds one input per request line")
        return {"model": remote_model, "input": inputs[0]}
    body: dict[str, Any] = {"model": remote_model, **sampling_kwargs(request)}
    if request.messages is not None:
        body["messages"] = chat_messages(request)
    else:
        body["prompt"] = request.prompt or ""
    return body


def retry_after_s(value: str | None, now: float) -> float | None:
    """Retry-After as seconds: delta-seconds or an HTTP date (pure)."""
    if not value:
        return None
    if value.strip().isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - now)


def error_for(status: int, body: str, retry_after: float | None) -> Exception:
    """The kbatch error a non-2xx answer means (pure)."""
    detail = f"server answered {status}: {body[:500]}"
    if status in _TRANSIENT_STATUSES or status >= 500:
        return TransientEngineError(detail, retry_after_s=retry_after)
    if status in (401, 403):
        return EngineDeadError(f"the server refused kbatch's credentials; {detail}")
    return InvalidRequestError(detail)


def output_of(endpoint: str, response: dict[str, Any]) -> EngineOutput:
    """A 200 answer as an EngineOutput, with the server's own token counts (pure)."""
    usage = response.get("usage") or {}
    prompt_tokens = int(usage.get("prompt_tokens") or 0)
    if endpoint == "/v1/embeddings":
        vector = response["data"][0]["embedding"]
        return EngineOutput(
            prompt_tokens,
            0,
            embedding=[float(v) for v in vector],
            cached_tokens=reported_cached_tokens(usage),
        )
    choice = response["choices"][0]
    text = choice["message"]["content"] if "message" in choice else choice["text"]
    return EngineOutput(
        prompt_tokens,
        int(usage.get("completion_tokens") or 0),
        text=text or "",
        finish_reason=choice.get("finish_reason"),
        cached_tokens=reported_cached_tokens(usage),
    )


def reported_cached_tokens(usage: dict[str, Any]) -> int | None:
    """The server's own count of prompt tokens its cache served (OpenAI's
    usage.prompt_tokens_details.cached_tokens); None when it does not report one."""
    details = usage.get("prompt_tokens_details") or {}
    cached = details.get("cached_tokens")
    return int(cached) if cached is not None else None


class OpenAICompatEngine:
    """Requests to an OpenAI-compatible server, at most `max_concurrency` at a time."""

    name = "openai"

    def __init__(
        self, remote_model: str, options: OpenAIEngineOptions, served_models: tuple[str, ...]
    ) -> None:
        self.served_models = served_models
        self._remote_model = remote_model
        self._options = options
        self._slots = asyncio.Semaphore(options.max_concurrency)
        self._running = 0
        self._client: httpx.AsyncClient | None = None

    @property
    def max_concurrency(self) -> int:
        return self._options.max_concurrency

    @property
    def running(self) -> int:
        return self._running

    async def start(self) -> None:
        options = self._options
        headers = {}
        if options.api_key is not None:
            headers["Authorization"] = f"Bearer {options.api_key.get_secret_value()}"
        cap = options.max_concurrency
        try:
            self._client = httpx.AsyncClient(
                base_url=options.base_url.rstrip("/") + "/",
                headers=headers,
                http2=True,
                limits=httpx.Limits(max_connections=cap, max_keepalive_connections=cap),
                timeout=httpx.Timeout(options.timeout_s, connect=options.connect_timeout_s),
            )
        except ImportError as exc:
            raise ConfigurationError(f"the openai engine needs kbatch[openai]: {exc}") from exc
        if options.models_from_server:
            self.served_models = await self._server_models(self._client)

    async def _server_models(self, client: httpx.AsyncClient) -> tuple[str, ...]:
        """The ids the server lists at GET /v1/models: what this worker then serves."""
        try:
            response = await client.get("models")
            response.raise_for_status()
            ids = tuple(sorted(str(m["id"]) for m in response.json()["data"]))
        except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
            raise ConfigurationError(f"the server's GET /v1/models failed: {exc!r}") from exc
        if not ids:
            raise ConfigurationError("the server's GET /v1/models lists no model")
        return ids

    def _remote_name(self, model: str) -> str:
        """What the server calls the requested model: one configured served name may
        alias the configured `model`; several, or those read from the server, are the
        server's own names."""
        if self._options.models_from_server or len(self.served_models) > 1:
            return model
        return self._remote_model

    def shrink_concurrency(self) -> int:
        # The server manages its own memory; it answers 5xx or 429 when it cannot cope.
        return self._options.max_concurrency

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def generate(self, request: EngineRequest) -> EngineOutput:
        client = self._client
        if client is None:
            raise EngineDeadError("the openai engine is not started")
        body = request_body(request, self._remote_name(request.model))
        async with self._slots:
            self._running += 1
            try:
                response = await client.post(_PATHS[request.endpoint], json=body)
            except httpx.TimeoutException as exc:
                raise TransientEngineError(f"server timed out: {exc!r}") from exc
            except httpx.TransportError as exc:
                raise TransientEngineError(f"server unreachable: {exc!r}") from exc
            finally:
                self._running -= 1
        if response.status_code != 200:
            hint = retry_after_s(response.headers.get("retry-after"), time.time())
            raise error_for(response.status_code, response.text, hint)
        try:
            return output_of(request.endpoint, response.json())
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise TransientEngineError(f"server answered 200 with no usable body: {exc!r}") from exc


def from_options(options: InferenceOptions) -> OpenAICompatEngine:
    return OpenAICompatEngine(options.model, options.openai, options.served_models)
