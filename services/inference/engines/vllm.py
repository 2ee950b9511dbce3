"""The `vllm` engine: vLLM's AsyncLLM in-process, fed one request at a time.

Each request is its own `generate()`/`encode()` call; vLLM's scheduler batches
whatever is in flight at every step (continuous batching), so the worker keeps
it full simply by keeping up to its in-flight cap outstanding. The scheduler runs
with the priority policy, so a high-lane request overtakes queued normal and low
ones. LoRA adapters (KBATCH_INFERENCE__VLLM__LORA_MODULES) are models of their own
that the one engine serves beside its base: a request for one runs with its
LoRARequest. Written against vLLM 0.33; imported only when KBATCH_INFERENCE__ENGINE=vllm
(pip install kbatch[vllm]); tests/vllm_check checks it against the installed vLLM.
"""

from __future__ import annotations

import asyncio
from typing import Any

import torch
from jinja2 import TemplateError
from vllm import PoolingParams, SamplingParams
from vllm.engine.arg_utils import AsyncEngineArgs
from vllm.exceptions import VLLMClientError, VLLMError
from vllm.lora.request import LoRARequest
from vllm.sampling_params import RequestOutputKind
from vllm.tokenizers import TokenizerLike
from vllm.v1.engine.async_llm import AsyncLLM
from vllm.v1.engine.exceptions import EngineDeadError as VllmEngineDeadError

from services.errors import (
    EngineDeadError,
    EngineError,
    EngineOutOfMemoryError,
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
from services.inference.engines.vllm_mapping import (
    embedding_output,
    generation_output,
    unanswered,
    vllm_priority,
)
from services.inference.settings import InferenceOptions, VllmEngineOptions, one_served_model

# A chat template already wrote the model's special tokens (BOS); like vLLM's own chat
# path, the templated text is tokenized without adding them a second time.
_TEMPLATED_TOKENIZATION = {"add_special_tokens": False}


def engine_error(exc: BaseException) -> EngineError:
    """A vLLM failure as the kbatch error whose class says whether to retry it."""
    if isinstance(exc, VllmEngineDeadError):
        return EngineDeadError(str(exc))
    if isinstance(exc, VLLMClientError):  # VLLMValidationError: too long, bad parameters
        if is_context_length_error(str(exc)):
            return InvalidRequestError(str(exc))
        return InvalidRequestError(f"vLLM refused the request: {exc}")
    if isinstance(exc, torch.OutOfMemoryError) or isinstance(exc.__cause__, torch.OutOfMemoryError):
        return EngineOutOfMemoryError(str(exc.__cause__ or exc))
    # GenerationError (RetryableRequestError among them), EngineGenerateError (vLLM's
    # wrapper for anything unexpected) and GracefulHTTPError (queue full, paused).
    return TransientEngineError(f"vLLM failed the request: {type(exc).__name__}: {exc}")


class VllmEngine:
    name = "vllm"

    def __init__(self, model: str, options: VllmEngineOptions, served_model: str) -> None:
        # Each adapter is a model of its own to kbatch: registered, routed and assigned
        # apart, while one engine (one capacity) serves the base and all of them.
        self.served_models = (served_model, *options.lora_modules)
        self.served_model = served_model
        self._adapters = {
            name: LoRARequest(name, index, path)  # vLLM ids adapters from 1
            for index, (name, path) in enumerate(options.lora_modules.items(), start=1)
        }
        self._model = model
        self._options = options
        self._concurrency = options.max_num_seqs
        self._running = 0
        self._engine: AsyncLLM | None = None
        self._tokenizer: TokenizerLike | None = None

    @property
    def max_concurrency(self) -> int:
        return self._concurrency

    @property
    def running(self) -> int:
        return self._running

    def engine_args(self) -> AsyncEngineArgs:
        options = self._options
        lora: dict[str, Any] = {}
        if options.lora_modules:
            lora = {
                "enable_lora": True,
                "max_lora_rank": options.max_lora_rank,
                "max_loras": options.max_loras or len(options.lora_modules),
            }
        return AsyncEngineArgs(
            model=self._model,
            max_num_seqs=options.max_num_seqs,
            max_model_len=options.max_model_len,
            gpu_memory_utilization=options.gpu_memory_utilization,
            dtype=options.dtype,
            tensor_parallel_size=options.tensor_parallel_size,
            runner="pooling" if options.task == "embed" else "generate",
            # Requests sharing a prompt prefix reuse its KV blocks (what prefix affinity
            # feeds); vLLM's own default, set so that it cannot change under kbatch.
            enable_prefix_caching=options.task == "generate",
            scheduling_policy="priority",  # lowest `priority=` first: vllm_priority(lane)
            **lora,
        )

    async def start(self) -> None:
        self._engine = AsyncLLM.from_engine_args(self.engine_args())
        self._tokenizer = self._engine.get_tokenizer()  # a plain method in vLLM 0.33

    def shrink_concurrency(self) -> int:
        # vLLM's own batch is bounded by max_num_seqs; the worker's in-flight cap
        # (2x this value) is what shrinks, so fewer sequences compete for KV cache.
        self._concurrency = max(1, self._concurrency // 2)
        return self._concurrency

    async def close(self) -> None:
        if self._engine is not None:
            self._engine.shutdown()
            self._engine = None

    async def generate(self, request: EngineRequest) -> EngineOutput:
        engine = self._require()
        check_task(self.name, self._options.task, self.served_model, request.endpoint)
        self._running += 1
        try:
            if request.endpoint == EMBEDDINGS:
                return await self._embed(engine, request)
            return await self._complete(engine, request)
        except asyncio.CancelledError:
            # vLLM aborts a cancelled request itself only once it is queued; one cancelled
            # while being added would run on. Ids are never reused, so no retry is hit.
            await engine.abort(request.engine_request_id)
            raise
        except (VLLMError, torch.OutOfMemoryError) as exc:
            raise engine_error(exc) from exc
        finally:
            self._running -= 1

    async def _complete(self, engine: AsyncLLM, request: EngineRequest) -> EngineOutput:
        prompt, tokenization = self._prompt(request)
        params = SamplingParams(
            **sampling_kwargs(request), output_kind=RequestOutputKind.FINAL_ONLY
        )
        request_id = request.engine_request_id
        final = None
        async for output in engine.generate(
            prompt,
            params,
            request_id,
            tokenization_kwargs=tokenization,
            priority=vllm_priority(request.priority),
            lora_request=self._adapters.get(request.model),
        ):
            final = output
        if final is None or not final.outputs:
            raise TransientEngineError(f"vLLM returned no output for {request_id}")
        completion = final.outputs[0]
        if unanswered(completion.finish_reason):
            raise TransientEngineError(
                f"vLLM ended {request_id} with finish_reason={completion.finish_reason}"
            )
        return generation_output(
            final.prompt_token_ids,
            completion.text,
            completion.token_ids,
            completion.finish_reason,
            final.num_cached_tokens,
        )

    def _prompt(self, request: EngineRequest) -> tuple[str, dict[str, Any] | None]:
        """The text to generate from, and how vLLM is to tokenize it."""
        if request.messages is None:
            if not request.prompt:
                raise InvalidRequestError("the prompt is empty")
            return request.prompt, None
        if not request.messages:
            raise InvalidRequestError("the messages are empty")
        if self._tokenizer is None:
            raise EngineDeadError("vLLM engine not started")
        try:
            text = self._tokenizer.apply_chat_template(
                chat_messages(request), tokenize=False, add_generation_prompt=True
            )
        except (TemplateError, ValueError) as exc:
            raise InvalidRequestError(f"the model's chat template refused: {exc}") from exc
        return str(text), dict(_TEMPLATED_TOKENIZATION)

    async def _embed(self, engine: AsyncLLM, request: EngineRequest) -> EngineOutput:
        inputs = request.input or []
        if len(inputs) != 1 or not inputs[0]:
            raise InvalidRequestError("the vllm engine embeds one non-empty input per line")
        request_id = request.engine_request_id
        final = None
        # task="embed": one pooled vector per input; vLLM's default is one per token.
        async for output in engine.encode(
            inputs[0],
            PoolingParams(task="embed"),
            request_id,
            priority=vllm_priority(request.priority),
            lora_request=self._adapters.get(request.model),
        ):
            final = output
        if final is None:
            raise TransientEngineError(f"vLLM returned no embedding for {request_id}")
        if final.error is not None:
            raise engine_error(final.error.to_exception())
        return embedding_output(
            final.prompt_token_ids, final.outputs.data.tolist(), final.num_cached_tokens
        )

    def _require(self) -> AsyncLLM:
        if self._engine is None:
            raise EngineDeadError("vLLM engine not started")
        return self._engine


def from_options(options: InferenceOptions) -> VllmEngine:
    return VllmEngine(options.model, options.vllm, one_served_model(options, "vllm"))
