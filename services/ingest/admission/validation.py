"""Validate one OpenAI batch line and turn it into an InferenceRequest record.

Pure: no I/O. Unknown body parameters are refused rather than ignored, so a
caller never believes a parameter was honoured when it was not.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from services.lanes import Lane

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
EMBEDDINGS = "/v1/embeddings"
# OpenAI's Responses API, text in and text out, served as a chat: its input and
# instructions become messages; the collector answers with a Response object.
RESPONSES = "/v1/responses"
ENDPOINTS = (CHAT, COMPLETIONS, EMBEDDINGS, RESPONSES)


@dataclass(frozen=True)
class Limits:
    """What a line may ask for."""

    served_models: frozenset[str]
    max_max_tokens: int


@dataclass(frozen=True)
class Rejection:
    """Why one line was refused; `code` is a small fixed vocabulary (a metric label)."""

    line: int
    code: str
    reason: str
    custom_id: str | None = None


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=False)


class BatchLine(_Strict):
    custom_id: Annotated[str, Field(min_length=1, max_length=512)]
    method: Literal["POST"]
    url: Literal["/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses"]
    body: dict[str, Any]


class _TextPart(_Strict):
    type: Literal["text"]
    text: str


class ChatMessage(_Strict):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[_TextPart]
    name: str | None = None

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class _Sampling(_Strict):
    model: Annotated[str, Field(min_length=1)]
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(gt=0, le=1)] | None = None
    stop: str | Annotated[list[str], Field(max_length=4)] | None = None
    seed: int | None = None
    n: Literal[1] | None = None
    presence_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
    frequency_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
    user: str | None = None


class ChatBody(_Sampling):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None


class CompletionBody(_Sampling):
    prompt: Annotated[str, Field(min_length=1)]


class _InputText(_Strict):
    type: Literal["input_text", "output_text"]
    text: str


class ResponsesMessage(_Strict):
    type: Literal["message"] | None = None
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[_InputText]

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class ResponsesBody(_Strict):
    """The Responses API's text subset; tools, reasoning, state (`previous_response_id`,
    `store`) and structured output are refused as unknown parameters."""

    model: Annotated[str, Field(min_length=1)]
    input: (
        Annotated[str, Field(min_length=1)] | Annotated[list[ResponsesMessage], Field(min_length=1)]
    )
    instructions: str | None = None
    max_output_tokens: Annotated[int, Field(ge=1)] | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(gt=0, le=1)] | None = None
    user: str | None = None

    def messages(self) -> list[dict[str, Any]]:
        said = (
            [{"role": "user", "content": self.input, "name": None}]
            if isinstance(self.input, str)
            else [{"role": m.role, "content": m.text(), "name": None} for m in self.input]
        )
        if self.instructions:
            return [{"role": "system", "content": self.instructions, "name": None}, *said]
        return said


class EmbeddingBody(_Strict):
    model: Annotated[str, Field(min_length=1)]
    input: str | Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=1)]
    encoding_format: Literal["float"] | None = None
    user: str | None = None

    @field_validator("input")
    @classmethod
    def _not_empty(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, str) and not value:
            raise ValueError("input must not be empty")
        return value


_BODY_MODELS: dict[str, type[BaseModel]] = {
    CHAT: ChatBody,
    COMPLETIONS: CompletionBody,
    EMBEDDINGS: EmbeddingBody,
    RESPONSES: ResponsesBody,
}


def request_id_for(job_id: str, custom_id: str) -> str:
    """Deterministic, so a re-sent line maps to the same request."""
    digest = hashlib.blake2b(f"{job_id}\x00{custom_id}".encode(), digest_size=12).hexdigest()
    return f"req_{digest}"


def _describe(error: ValidationError, prefix: str) -> str:
    parts = []
    for item in error.errors(include_url=False)[:3]:
        location = ".".join(str(p) for p in (prefix, *item["loc"]) if p != "")
        parts.append(f"{location}: {item['msg']}" if location else str(item["msg"]))
    return "; ".join(parts)


def _body_fields(endpoint: str, body: BaseModel, limits: Limits) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "messages": None,
        "prompt": None,
        "input": None,
        "max_tokens": None,
        "temperature": None,
        "top_p": None,
        "stop": [],
        "seed": None,
        "presence_penalty": None,
        "frequency_penalty": None,
    }
    if isinstance(body, EmbeddingBody):
        fields["input"] = [body.input] if isinstance(body.input, str) else list(body.input)
        return fields
    if isinstance(body, ResponsesBody):
        _check_max_tokens(body.max_output_tokens, limits)
        fields.update(
            messages=body.messages(),
            max_tokens=body.max_output_tokens,
            temperature=body.temperature,
            top_p=body.top_p,
        )
        return fields
    assert isinstance(body, _Sampling)
    max_tokens = body.max_tokens
    if isinstance(body, ChatBody):
        fields["messages"] = [
            {"role": m.role, "content": m.text(), "name": m.name} for m in body.messages
        ]
        max_tokens = body.max_completion_tokens or max_tokens
    elif isinstance(body, CompletionBody):
        fields["prompt"] = body.prompt
    _check_max_tokens(max_tokens, limits)
    stop = body.stop
    fields.update(
        max_tokens=max_tokens,
        temperature=body.temperature,
        top_p=body.top_p,
        stop=[stop] if isinstance(stop, str) else list(stop or []),
        seed=body.seed,
        presence_penalty=body.presence_penalty,
        frequency_penalty=body.frequency_penalty,
    )
    return fields


def _custom_id_in(text: str) -> str | None:
    """The custom_id of a line refused as a whole, when it has a usable one."""
    try:
        parsed = json.loads(text)
    except ValueError:
        return None
    custom_id = parsed.get("custom_id") if isinstance(parsed, dict) else None
    return custom_id if isinstance(custom_id, str) and 0 < len(custom_id) <= 512 else None


def _check_max_tokens(max_tokens: int | None, limits: Limits) -> None:
    if max_tokens is not None and max_tokens > limits.max_max_tokens:
        raise ValueError(f"max_tokens {max_tokens} exceeds the limit {limits.max_max_tokens}")


@dataclass(frozen=True)
class RequestContext:
    """What ingest knows about the upload a line came in."""

    job_id: str
    tenant: str
    priority: Lane
    submitted_at_ms: int
    deadline_ms: int | None = None
    endpoint: str | None = None  # a batch's: every line must name it (None: any endpoint)


def parse_line(
    number: int, data: bytes, context: RequestContext, limits: Limits
) -> dict[str, Any] | Rejection:
    """An InferenceRequest record for a valid line, or the Rejection that says why not."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return Rejection(number, "invalid_utf8", f"line is not valid UTF-8: {exc.reason}")
    try:
        line = BatchLine.model_validate_json(text)
    except ValidationError as exc:
        errors = exc.errors()
        if errors[0]["type"] == "json_invalid":
            return Rejection(number, "invalid_json", _describe(exc, ""))
        only_url = all(error["loc"] == ("url",) for error in errors)
        code = "unsupported_endpoint" if only_url else "invalid_line"
        return Rejection(number, code, _describe(exc, ""), _custom_id_in(text))
    custom_id = line.custom_id
    if context.endpoint is not None and line.url != context.endpoint:
        reason = f"url {line.url!r} is not the batch's endpoint {context.endpoint!r}"
        return Rejection(number, "endpoint_mismatch", reason, custom_id)
    try:
        body = _BODY_MODELS[line.url].model_validate(line.body)
    except ValidationError as exc:
        return Rejection(number, "invalid_body", _describe(exc, "body"), custom_id)
    model = getattr(body, "model", "")
    if model not in limits.served_models:
        # OpenAI's code for a model that does not exist; known models are registered.
        known = ", ".join(sorted(limits.served_models)) or "none"
        reason = f"the model {model!r} does not exist here (registered: {known})"
        return Rejection(number, "model_not_found", reason, custom_id)
    try:
        fields = _body_fields(line.url, body, limits)
    except ValueError as exc:
        return Rejection(number, "invalid_body", str(exc), custom_id)
    return {
        "request_id": request_id_for(context.job_id, custom_id),
        "job_id": context.job_id,
        "custom_id": custom_id,
        "tenant": context.tenant,
        "priority": context.priority.value,
        "endpoint": line.url,
        "model": model,
        "body": fields,
        "submitted_at_ms": context.submitted_at_ms,
        "attempt": 0,
        "deadline_ms": context.deadline_ms,
        "trace_id": None,
    }
