"""The `vllm` engine: vLLM's AsyncLLM in-process, fed one request at a time.

Each request is its own `generate()`/`encode()` call; vLLM's scheduler batches
whatever is in flight at every step (continuous batching), so the worker keeps
it full simply by keeping up to its in-flight cap outstanding. Imported only
when KBATCH_INFERENCE__ENGINE=vllm (pip install kbatch[vllm]).
"""

from __future__ import annotations

from typing import Any

import torch
from vllm import PoolingParams, SamplingParams
from vllm.engine.arg_utils import AsyncEngineArgs
from vllm.sampling_params import RequestOutputKind
from vllm.v1.engine.async_llm import AsyncLLM
from vllm.v1.engine.exceptions import EngineDeadError as VllmEngineDeadError
from vllm.v1.engine.exceptions import EngineGenerateError

from services.errors import (
    EngineDeadError,
    EngineOutOfMemoryError,
    InvalidRequestError,
    TransientEngineError,
)
from services.inference.engines.base import EngineOutput, EngineRequest
from services.inference.engines.vllm_mapping import (
    chat_messages,
    embedding_output,
    generation_output,
    is_context_length_error,
    sampling_kwargs,
)
from services.inference.settings import VllmEngineOptions


class VllmEngine:
    name = "vllm"

    def __init__(self, model: str, options: VllmEngineOptions) -> None:
        self._model = model
        self._options = options
        self._concurrency = options.max_num_seqs
        self._running = 0
        self._engine: AsyncLLM | None = None
        self._tokenizer: Any = None

    @property
    def max_concurrency(self) -> int:
        return self._concurrency

    @property
    def running(self) -> int:
        return self._running

    async def start(self) -> None:
        args = AsyncEngineArgs(
            model=self._model,
            max_num_seqs=self._options.max_num_seqs,
            max_model_len=self._options.max_model_len,
            gpu_memory_utilization=self._options.gpu_memory_utilization,
            dtype=self._options.dtype,
            tensor_parallel_size=self._options.tensor_parallel_size,
            runner="pooling" if self._options.task == "embed" else "generate",
        )
        self._engine = AsyncLLM.from_engine_args(args)
        self._tokenizer = await self._engine.get_tokenizer()

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
        self._running += 1
        try:
            if request.endpoint == "/v1/embeddings":
                return await self._embed(engine, request)
            return await self._complete(engine, request)
        except torch.cuda.OutOfMemoryError as exc:
            raise EngineOutOfMemoryError(str(exc)) from exc
        except VllmEngineDeadError as exc:
            raise EngineDeadError(str(exc)) from exc
        except EngineGenerateError as exc:
            raise TransientEngineError(str(exc)) from exc
        except ValueError as exc:
            if is_context_length_error(str(exc)):
                raise InvalidRequestError(str(exc)) from exc
            raise InvalidRequestError(f"vLLM refused the request: {exc}") from exc
        finally:
            self._running -= 1

    async def _complete(self, engine: AsyncLLM, request: EngineRequest) -> EngineOutput:
        if request.messages is not None:
            prompt = self._tokenizer.apply_chat_template(
                chat_messages(request), tokenize=False, add_generation_prompt=True
            )
        else:
            prompt = request.prompt or ""
        params = SamplingParams(
            **sampling_kwargs(request), output_kind=RequestOutputKind.FINAL_ONLY
        )
        final = None
        request_id = f"{request.request_id}:{request.attempt}"
        async for output in engine.generate(prompt, params, request_id):
            final = output
        if final is None or not final.outputs:
            raise TransientEngineError(f"vLLM returned no output for {request_id}")
        completion = final.outputs[0]
        return generation_output(
            final.prompt_token_ids, completion.text, completion.token_ids, completion.finish_reason
        )

    async def _embed(self, engine: AsyncLLM, request: EngineRequest) -> EngineOutput:
        inputs = request.input or []
        if len(inputs) != 1:
            raise InvalidRequestError("the vllm engine embeds one input per request line")
        final = None
        request_id = f"{request.request_id}:{request.attempt}"
        async for output in engine.encode(inputs[0], PoolingParams(), request_id):
            final = output
        if final is None:
            raise TransientEngineError(f"vLLM returned no embedding for {request_id}")
        return embedding_output(final.prompt_token_ids, final.outputs.data.tolist())

    def _require(self) -> AsyncLLM:
        if self._engine is None:
            raise EngineDeadError("vLLM engine not started")
        return self._engine
