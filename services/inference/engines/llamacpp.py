"""The `llamacpp` engine: GGUF models in-process through llama-cpp-python.

llama-cpp-python decodes one sequence at a time per `Llama` instance and is not
thread-safe, so the engine's concurrency is its number of instances
(KBATCH_INFERENCE__LLAMACPP__INSTANCES, default 1), each on its own thread and
each holding its own weights and KV cache. On a CPU host one instance with all
cores is usually fastest; more instances pay off when a single sequence cannot
use the machine (small models, many cores).

An instance keeps its previous prompt's KV and evaluates only what a new prompt
does not share with it, so the engine queues a window of requests
(KBATCH_INFERENCE__LLAMACPP__PREFIX_WINDOW) and each instance takes those sharing
the prefix it ran last first (`PrefixQueue`: lanes first, a bound on skipping).
The prompt tokens it did not evaluate are each result's `cached_tokens`.

Chat requests go through `Llama.create_chat_completion` (the model's own chat
template), completions through `create_completion`, embeddings through
`create_embedding`: at temperature 0 a request answers exactly what the binding
itself answers for the same messages and parameters.

The binding has no abort: a request cancelled while it decodes (its job
cancelled, its partition released) runs to its max_tokens on its thread and its
output is discarded; one cancelled while queued is never decoded. Imported only when
KBATCH_INFERENCE__ENGINE=llamacpp (pip install kbatch[llamacpp]).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import llama_cpp

from services.errors import (
    ConfigurationError,
    EngineDeadError,
    InvalidRequestError,
    TransientEngineError,
)
from services.inference.engines.base import EngineOutput, EngineRequest
from services.inference.engines.openai_params import (
    EMBEDDINGS,
    chat_messages,
    check_task,
    is_context_length_error,
    sampling_kwargs,
)
from services.inference.prefix_queue import PrefixQueue
from services.inference.settings import (
    InferenceOptions,
    LlamaCppEngineOptions,
    one_served_model,
)
from services.lanes import lane_rank

# OpenAI's documented defaults; llama-cpp-python's own (temperature 0.2, top_p 0.95)
# would answer a line that sets neither differently from every other engine.
OPENAI_SAMPLING_DEFAULTS = {"temperature": 1.0, "top_p": 1.0}


def llama_arguments(request: EngineRequest) -> dict[str, Any]:
    """Keyword arguments for create_chat_completion / create_completion (pure)."""
    return OPENAI_SAMPLING_DEFAULTS | sampling_kwargs(request)


def output_of(response: dict[str, Any], chat: bool, evaluated: int | None) -> EngineOutput:
    """An OpenAI-shaped response from the binding as an EngineOutput (pure); `evaluated`:
    the prompt tokens llama.cpp evaluated for it, the rest came from its KV cache."""
    choice = response["choices"][0]
    usage = response["usage"]
    text = choice["message"]["content"] if chat else choice["text"]
    prompt_tokens = usage["prompt_tokens"]
    return EngineOutput(
        prompt_tokens=prompt_tokens,
        completion_tokens=usage["completion_tokens"],
        text=text or "",
        finish_reason=choice.get("finish_reason"),
        cached_tokens=0 if evaluated is None else max(0, prompt_tokens - evaluated),
    )


class PromptEvaluation:
    """Wraps one instance's `eval` to see how many prompt tokens a request evaluated:
    `Llama.generate` keeps the longest prefix its KV shares with the new prompt and
    evaluates the rest in its first `eval` call (decoding evaluates one token a call
    after it). Counting what llama.cpp was given is its own figure, not an estimate."""

    def __init__(self, instance: llama_cpp.Llama) -> None:
        self._eval: Callable[[Sequence[int]], None] = instance.eval
        self.prompt: int | None = None
        instance.eval = self  # type: ignore[method-assign]

    def __call__(self, tokens: Sequence[int]) -> None:
        if self.prompt is None:
            self.prompt = len(tokens)
        self._eval(tokens)

    def reset(self) -> None:
        self.prompt = None


def load_llama(path: str, options: LlamaCppEngineOptions) -> llama_cpp.Llama:
    """One instance of the model, as the engine runs it (the bench's anchor loads it so too)."""
    embed = options.task == "embed"
    try:
        return llama_cpp.Llama(
            model_path=path,
            n_ctx=options.n_ctx,
            n_threads=options.n_threads,
            # The binding evaluates prompts on every core unless told otherwise: two
            # instances (or workers) on one host then oversubscribe it (measured: 5x slower).
            n_threads_batch=options.n_threads,
            n_batch=options.n_batch,
            n_gpu_layers=options.n_gpu_layers,
            embedding=embed,
            # One vector per input, not one per token.
            pooling_type=llama_cpp.LLAMA_POOLING_TYPE_MEAN if embed else -1,
            verbose=False,
        )
    except ValueError as exc:
        raise ConfigurationError(f"llama.cpp could not load {path}: {exc}") from exc


@dataclass(frozen=True)
class _Job:
    request: EngineRequest
    done: asyncio.Future[EngineOutput]
    loop: asyncio.AbstractEventLoop


def _settle(job: _Job, output: EngineOutput | None, error: BaseException | None) -> None:
    """On the event loop: hand the thread's outcome to the awaiting request."""
    if job.done.done():
        return  # cancelled meanwhile; the output is dropped
    if error is not None:
        job.done.set_exception(error)
    elif output is not None:
        job.done.set_result(output)


class LlamaCppEngine:
    """`instances` threads, each owning one `Llama`, taking requests from one queue
    (the highest lane first, then its cached prefix's, then in arrival order).

    A thread starts the next queued request the moment it finishes one, without a
    round trip through the event loop (handing instances out from the loop left the
    model idle between requests whenever the loop was busy with Kafka work).
    """

    name = "llamacpp"

    def __init__(self, model_path: str, options: LlamaCppEngineOptions, served_model: str):
        self.served_models = (served_model,)
        self.served_model = served_model
        self._path = model_path
        self._options = options
        self._jobs: PrefixQueue[_Job] = PrefixQueue(options.instances, options.max_prefix_skips)
        self._ready = threading.Condition()
        self._closing = False
        self._threads: list[threading.Thread] = []
        self._running = 0

    @property
    def max_concurrency(self) -> int:
        return self._options.instances

    @property
    def running(self) -> int:
        """Requests decoding now: the waiting ones beyond one per instance are queued."""
        return min(self._running, self._options.instances)

    async def start(self) -> None:
        if not Path(self._path).is_file():
            raise ConfigurationError(
                f"KBATCH_INFERENCE__MODEL={self._path!r} is not a GGUF file "
                "(`kbatch model tiny PATH` writes a small one)"
            )
        for index in range(self._options.instances):
            # Loaded here, one by one, so that a bad file fails the start, not a request.
            instance = await asyncio.to_thread(load_llama, self._path, self._options)
            thread = threading.Thread(
                target=self._serve, args=(index, instance), name=f"llamacpp-{index}", daemon=True
            )
            thread.start()
            self._threads.append(thread)

    def _next(self, slot: int) -> _Job | None:
        """The slot's next request; None once closing and nothing is left."""
        with self._ready:
            while (job := self._jobs.take(slot)) is None:
                if self._closing:
                    return None
                self._ready.wait()
            return job

    def _serve(self, slot: int, instance: llama_cpp.Llama) -> None:
        """One instance's thread: requests in queue order until closing leaves none."""
        evaluation = PromptEvaluation(instance)
        try:
            while (job := self._next(slot)) is not None:
                if job.done.cancelled():
                    continue  # cancelled while queued: never decoded
                output: EngineOutput | None = None
                error: BaseException | None = None
                try:
                    output = self._run(instance, evaluation, job.request)
                except (InvalidRequestError, TransientEngineError) as exc:
                    error = exc
                except Exception as exc:  # noqa: BLE001 - anything else: the engine is unusable
                    error = EngineDeadError(f"llama.cpp failed unexpectedly: {exc!r}")
                    error.__cause__ = exc
                job.loop.call_soon_threadsafe(_settle, job, output, error)
        finally:
            instance.close()

    def shrink_concurrency(self) -> int:
        # llama.cpp on a CPU does not run out of accelerator memory mid-request; the
        # instances were sized at start, so there is nothing to give back.
        return self._options.instances

    async def close(self) -> None:
        with self._ready:
            self._closing = True  # each thread exits once nothing is left queued
            self._ready.notify_all()
        # Each thread finishes the request it decodes (there is no abort), then exits.
        await asyncio.gather(*(asyncio.to_thread(t.join) for t in self._threads))
        self._threads.clear()

    async def generate(self, request: EngineRequest) -> EngineOutput:
        check_task(self.name, self._options.task, self.served_model, request.endpoint)
        loop = asyncio.get_running_loop()
        job = _Job(request, loop.create_future(), loop)
        with self._ready:
            self._jobs.put(job, lane_rank(request.priority), request.prefix_key)
            self._ready.notify()
        self._running += 1
        try:
            return await job.done
        finally:
            self._running -= 1

    def _run(
        self, instance: llama_cpp.Llama, evaluation: PromptEvaluation, request: EngineRequest
    ) -> EngineOutput:
        evaluation.reset()
        try:
            if request.endpoint == EMBEDDINGS:
                return self._embed(instance, request)
            if request.messages is not None:
                chat = instance.create_chat_completion(
                    messages=cast(Any, chat_messages(request)), **llama_arguments(request)
                )
                return output_of(cast(dict[str, Any], chat), True, evaluation.prompt)
            if not request.prompt:
                raise InvalidRequestError("the prompt is empty")
            completion = instance.create_completion(request.prompt, **llama_arguments(request))
            return output_of(cast(dict[str, Any], completion), False, evaluation.prompt)
        except ValueError as exc:
            if is_context_length_error(str(exc)):
                raise InvalidRequestError(str(exc)) from exc
            raise InvalidRequestError(f"llama.cpp refused the request: {exc}") from exc
        except RuntimeError as exc:
            # llama_decode failures (KV cache full, a backend error) are worth a retry.
            raise TransientEngineError(f"llama.cpp failed: {exc}") from exc

    def _embed(self, instance: llama_cpp.Llama, request: EngineRequest) -> EngineOutput:
        inputs = request.input or []
        if len(inputs) != 1 or not inputs[0]:
            raise InvalidRequestError("the llamacpp engine embeds one non-empty input per line")
        response = instance.create_embedding(inputs[0])
        vector = response["data"][0]["embedding"]
        return EngineOutput(
            prompt_tokens=response["usage"]["prompt_tokens"],
            completion_tokens=0,
            embedding=[float(cast(float, v)) for v in vector],
        )


def from_options(options: InferenceOptions) -> LlamaCppEngine:
    return LlamaCppEngine(options.model, options.llamacpp, one_served_model(options, "llamacpp"))
