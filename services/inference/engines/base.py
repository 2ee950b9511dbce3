"""The engine interface: one request in, one outcome out, neighbours unaffected."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

# The OpenAI body's sampling fields kbatch carries; vLLM's SamplingParams, llama-cpp-python's
# create_*_completion and every OpenAI-compatible server use the same names.
SAMPLING_FIELDS = (
    "max_tokens",
    "temperature",
    "top_p",
    "stop",
    "seed",
    "presence_penalty",
    "frequency_penalty",
)


@dataclass(frozen=True)
class EngineRequest:
    """What an engine needs of an InferenceRequest record."""

    request_id: str
    endpoint: str
    model: str
    messages: list[dict[str, Any]] | None = None
    prompt: str | None = None
    input: list[str] | None = None
    sampling: dict[str, Any] = field(default_factory=dict)
    attempt: int = 0
    priority: str = "normal"  # the lane: engines that schedule by priority serve high first
    prefix_key: str | None = None  # shared by requests with the same prompt prefix

    @property
    def engine_request_id(self) -> str:
        """The id an engine sees: never reused across retries of the same request."""
        return f"{self.request_id}:{self.attempt}"

    @classmethod
    def from_record(
        cls,
        record: dict[str, Any],
        attempt: int = 0,
        priority: str | None = None,
        prefix_key: str | None = None,
    ) -> EngineRequest:
        body = record["body"]
        sampling = {key: body[key] for key in SAMPLING_FIELDS if body.get(key) not in (None, [])}
        return cls(
            request_id=record["request_id"],
            endpoint=record["endpoint"],
            model=record["model"],
            messages=body.get("messages"),
            prompt=body.get("prompt"),
            input=body.get("input"),
            sampling=sampling,
            attempt=attempt,
            priority=priority or record["priority"],
            prefix_key=prefix_key,
        )


@dataclass(frozen=True)
class EngineOutput:
    """A finished request: text or embedding, with token usage."""

    prompt_tokens: int
    completion_tokens: int
    text: str | None = None
    embedding: list[float] | None = None
    finish_reason: str | None = None
    # Prompt tokens the engine did not evaluate (its prefix cache had them); None when
    # the engine cannot say (a remote server that does not report it).
    cached_tokens: int | None = 0


class Engine(Protocol):
    """An inference engine. `generate` raises services.errors.EngineError subclasses.

    A cancelled `generate` (its job cancelled, its partition released, the worker
    stopping) must stop the work inside the engine too, not only stop waiting for it.
    """

    name: str  # the engine kind, written on every result: vllm, llamacpp, openai, simulated
    # The model names it answers for (known once started); a result carries its
    # request's model, one of these.
    served_models: tuple[str, ...]

    @property
    def max_concurrency(self) -> int:
        """Sequences the engine runs together now (may shrink after an OOM)."""
        ...

    @property
    def running(self) -> int:
        """Sequences being processed right now (the current batch size)."""
        ...

    async def start(self) -> None: ...

    async def generate(self, request: EngineRequest) -> EngineOutput: ...

    def shrink_concurrency(self) -> int:
        """Halve the concurrency after an out-of-memory error; returns the new value."""
        ...

    async def close(self) -> None: ...
