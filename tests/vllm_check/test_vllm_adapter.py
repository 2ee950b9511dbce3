"""The vllm engine adapter against the vLLM actually installed, without a GPU.

Every name the adapter imports, every keyword it passes and every exception it maps is
checked against vLLM's own classes and signatures; the adapter itself runs against an
AsyncLLM autospec (calls with a keyword vLLM does not take fail) and vLLM's real output
objects. The context-length refusals come from vLLM's own validation code.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import typing
from collections.abc import AsyncIterator, Callable
from types import SimpleNamespace
from typing import Any, Literal
from unittest import mock

import msgspec
import pytest
import torch
from vllm import PoolingParams, SamplingParams
from vllm.config.model import ModelDType
from vllm.config.scheduler import RunnerType, SchedulerPolicy
from vllm.engine.arg_utils import AsyncEngineArgs
from vllm.exceptions import (
    GenerationError,
    GracefulHTTPError,
    QueueOverflowError,
    RetryableRequestError,
    VLLMClientError,
    VLLMError,
    VLLMServerError,
    VLLMValidationError,
)
from vllm.inputs.llm import DecoderOnlyPrompt
from vllm.lora.request import LoRARequest
from vllm.outputs import (
    CompletionOutput,
    PoolingOutput,
    PoolingRequestOutput,
    RequestError,
    RequestOutput,
)
from vllm.renderers.params import TokenizeParams
from vllm.sampling_params import RequestOutputKind
from vllm.tasks import PoolingTask
from vllm.v1.engine import FINISH_REASON_STRINGS
from vllm.v1.engine.async_llm import AsyncLLM
from vllm.v1.engine.exceptions import EngineDeadError as VllmEngineDeadError
from vllm.v1.engine.exceptions import EngineGenerateError
from vllm.v1.engine.input_processor import InputProcessor

import services.inference.engines.vllm as adapter
from services.errors import (
    EngineDeadError,
    EngineOutOfMemoryError,
    InvalidRequestError,
    TransientEngineError,
)
from services.inference.engines import build_engine
from services.inference.engines.base import SAMPLING_FIELDS, EngineRequest
from services.inference.engines.openai_params import is_context_length_error
from services.inference.engines.vllm_mapping import UNANSWERED_FINISH_REASONS, vllm_priority
from services.inference.settings import InferenceOptions, VllmEngineOptions

Task = Literal["generate", "embed"]

ALL_SAMPLING = {
    "max_tokens": 5,
    "temperature": 0.5,
    "top_p": 0.9,
    "stop": ["\n"],
    "seed": 7,
    "presence_penalty": 0.1,
    "frequency_penalty": 0.2,
}


def completion(prompt: str = "Once upon", priority: str = "high") -> EngineRequest:
    return EngineRequest(
        "req-1",
        "/v1/completions",
        "m",
        prompt=prompt,
        sampling=ALL_SAMPLING,
        attempt=2,
        priority=priority,
    )


# --- names, keywords and signatures ------------------------------------------------------


def test_the_worker_builds_the_vllm_engine_with_its_served_model() -> None:
    options = InferenceOptions(engine="vllm", model="org/model", served_model_name="served")
    engine = build_engine(options)
    assert isinstance(engine, adapter.VllmEngine)
    assert (engine.name, engine.served_model) == ("vllm", "served")
    assert engine.max_concurrency == options.vllm.max_num_seqs


@pytest.mark.parametrize("task", ["generate", "embed"])
def test_every_engine_argument_is_an_async_engine_args_field(task: Task) -> None:
    engine = adapter.VllmEngine("org/model", VllmEngineOptions(task=task), "served")
    with mock.patch.object(adapter, "AsyncEngineArgs", wraps=AsyncEngineArgs) as spy:
        args = engine.engine_args()
    passed = spy.call_args.kwargs
    assert set(passed) <= {f.name for f in dataclasses.fields(AsyncEngineArgs)}
    assert isinstance(args, AsyncEngineArgs)
    assert args.scheduling_policy == "priority"
    assert args.scheduling_policy in typing.get_args(SchedulerPolicy)
    assert args.runner in typing.get_args(RunnerType)
    assert args.runner == ("pooling" if task == "embed" else "generate")
    assert args.enable_prefix_caching is (task == "generate")
    assert args.dtype in typing.get_args(ModelDType)


def test_lora_adapters_are_served_names_and_enable_lora_in_the_engine_args() -> None:
    options = VllmEngineOptions(lora_modules={"sql": "/adapters/sql", "fr": "org/fr-lora"})
    engine = adapter.VllmEngine("org/model", options, "base")
    assert engine.served_models == ("base", "sql", "fr")
    with mock.patch.object(adapter, "AsyncEngineArgs", wraps=AsyncEngineArgs) as spy:
        args = engine.engine_args()
    assert set(spy.call_args.kwargs) <= {f.name for f in dataclasses.fields(AsyncEngineArgs)}
    assert (args.enable_lora, args.max_loras, args.max_lora_rank) == (True, 2, 16)
    plain = adapter.VllmEngine("org/model", VllmEngineOptions(), "base").engine_args()
    assert not plain.enable_lora


def test_every_sampling_field_is_a_sampling_params_field() -> None:
    fields = {field.name for field in msgspec.structs.fields(SamplingParams)}
    assert {*SAMPLING_FIELDS, "output_kind"} <= fields
    assert set(ALL_SAMPLING) == set(SAMPLING_FIELDS)
    params = SamplingParams(**ALL_SAMPLING, output_kind=RequestOutputKind.FINAL_ONLY)
    assert params.output_kind is RequestOutputKind.FINAL_ONLY
    assert (params.max_tokens, params.top_p, params.stop, params.seed) == (5, 0.9, ["\n"], 7)


def test_async_llm_signatures_take_what_the_adapter_passes() -> None:
    params = SamplingParams()
    generate = inspect.signature(AsyncLLM.generate)
    adapter_ = LoRARequest("adapter", 1, "/adapters/a")
    generate.bind(
        None, "text", params, "req-1:0", tokenization_kwargs=None, priority=0, lora_request=None
    )
    generate.bind(None, "text", params, "req-1:0", lora_request=adapter_)
    encode = inspect.signature(AsyncLLM.encode)
    encode.bind(
        None, "text", PoolingParams(task="embed"), "req-1:0", priority=0, lora_request=adapter_
    )
    for signature in (generate, encode):
        priority = signature.parameters["priority"]
        assert priority.kind in (priority.KEYWORD_ONLY, priority.POSITIONAL_OR_KEYWORD)
    assert inspect.isasyncgenfunction(AsyncLLM.generate)
    assert inspect.isasyncgenfunction(AsyncLLM.encode)
    inspect.signature(AsyncLLM.abort).bind(None, "req-1:0")
    assert inspect.iscoroutinefunction(AsyncLLM.abort)
    inspect.signature(AsyncLLM.shutdown).bind(None)
    assert not inspect.iscoroutinefunction(AsyncLLM.shutdown)
    inspect.signature(AsyncLLM.get_tokenizer).bind(None)
    assert not inspect.iscoroutinefunction(AsyncLLM.get_tokenizer)
    inspect.signature(AsyncLLM.from_engine_args).bind(AsyncEngineArgs(model="m"))
    # The adapter hands vLLM a plain string prompt.
    assert str in typing.get_args(DecoderOnlyPrompt)


def test_embed_pooling_params_ask_for_one_vector_per_input() -> None:
    assert "embed" in typing.get_args(PoolingTask)
    assert PoolingParams(task="embed").task == "embed"
    # Unset, vLLM picks token_embed (one vector per token) for most embedding models.
    assert PoolingParams().task is None


def test_templated_prompts_are_tokenized_without_a_second_bos() -> None:
    params = TokenizeParams(max_total_tokens=16).with_kwargs(**adapter._TEMPLATED_TOKENIZATION)
    assert params.add_special_tokens is False


def test_the_exceptions_the_adapter_maps_have_their_expected_bases() -> None:
    assert issubclass(VLLMValidationError, VLLMClientError)
    assert not issubclass(VLLMValidationError, ValueError)  # an `except ValueError` misses it
    assert issubclass(RetryableRequestError, GenerationError)
    assert issubclass(GenerationError, VLLMServerError)
    assert issubclass(VllmEngineDeadError, VLLMServerError)
    assert issubclass(EngineGenerateError, VLLMServerError)
    assert issubclass(VLLMClientError, VLLMError)
    assert issubclass(VLLMServerError, VLLMError)
    assert issubclass(GracefulHTTPError, VLLMError)
    assert torch.cuda.OutOfMemoryError is torch.OutOfMemoryError
    assert set(FINISH_REASON_STRINGS) >= UNANSWERED_FINISH_REASONS


# --- vLLM's own refusals -------------------------------------------------------------------


def refusal(validate: Callable[[], object]) -> VLLMValidationError:
    with pytest.raises(VLLMValidationError) as caught:
        validate()
    return caught.value


def input_processor_stub(max_model_len: int) -> Any:
    """What InputProcessor._validate_prompt_len reads of its instance."""
    return SimpleNamespace(
        skip_prompt_length_check=False,
        model_config=SimpleNamespace(max_model_len=max_model_len, runner_type="generate"),
        mm_encoder_cache_size=0,
        supports_mm_inputs=False,
    )


CONTEXT_LENGTH_REFUSALS: dict[str, Callable[[], object]] = {
    # The renderer's checks, which a text prompt meets first.
    "tokens": lambda: TokenizeParams(max_total_tokens=16).apply_post_tokenization(
        None, {"prompt_token_ids": list(range(40))}
    ),
    "characters": lambda: TokenizeParams(max_total_tokens=16).apply_pre_tokenization(
        SimpleNamespace(max_chars_per_token=4),  # type: ignore[arg-type]
        {"prompt": "x" * 1000},
    ),
    # The input processor's, on the token ids it is given.
    "prompt": lambda: InputProcessor._validate_prompt_len(input_processor_stub(16), 40, "decoder"),
    "prompt_and_output": lambda: InputProcessor._validate_prompt_len(
        input_processor_stub(16), 16, "decoder"
    ),
}


@pytest.mark.parametrize("where", sorted(CONTEXT_LENGTH_REFUSALS))
def test_vllms_context_length_refusals_are_recognised(where: str) -> None:
    exc = refusal(CONTEXT_LENGTH_REFUSALS[where])
    assert is_context_length_error(str(exc)), str(exc)
    mapped = adapter.engine_error(exc)
    assert type(mapped) is InvalidRequestError
    assert str(mapped) == str(exc)


def test_an_empty_prompt_is_a_validation_error_in_vllm_too() -> None:
    exc = refusal(
        lambda: InputProcessor._validate_prompt_len(input_processor_stub(16), 0, "decoder")
    )
    assert not is_context_length_error(str(exc))
    assert type(adapter.engine_error(exc)) is InvalidRequestError


def oom_inside_generate() -> EngineGenerateError:
    try:
        raise EngineGenerateError() from torch.OutOfMemoryError("CUDA out of memory")
    except EngineGenerateError as exc:
        return exc


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (VLLMValidationError("temperature must be non-negative"), InvalidRequestError),
        (RequestError("validation_error", "bad").to_exception(), InvalidRequestError),
        (RetryableRequestError(), TransientEngineError),
        (RequestError("kv_load", "lost", retryable=True).to_exception(), TransientEngineError),
        (GenerationError(), TransientEngineError),
        (QueueOverflowError(), TransientEngineError),
        (EngineGenerateError(), TransientEngineError),
        (oom_inside_generate(), EngineOutOfMemoryError),
        (torch.OutOfMemoryError("CUDA out of memory"), EngineOutOfMemoryError),
        (VllmEngineDeadError(), EngineDeadError),
    ],
    ids=lambda value: value.__name__ if isinstance(value, type) else type(value).__name__,
)
def test_vllm_failures_map_to_kbatch_errors(exc: BaseException, expected: type) -> None:
    assert type(adapter.engine_error(exc)) is expected


# --- the adapter driving an AsyncLLM autospec ----------------------------------------------


class Fake:
    """An AsyncLLM autospec: a keyword or call shape vLLM does not take raises TypeError."""

    def __init__(self) -> None:
        self.llm = mock.create_autospec(AsyncLLM, instance=True)
        self.tokenizer = mock.Mock()
        self.tokenizer.apply_chat_template.return_value = "<s>[INST] hello [/INST]"
        self.llm.get_tokenizer.return_value = self.tokenizer
        self.text_output("Paris", "stop")
        self.llm.encode.side_effect = self._yield(
            PoolingRequestOutput(
                "req-1:2", PoolingOutput(torch.tensor([0.5, 0.25])), [1, 2], 0, True
            )
        )

    def text_output(self, text: str, finish_reason: str | None) -> None:
        completion = CompletionOutput(0, text, [11, 12], None, None, finish_reason=finish_reason)
        output = RequestOutput(
            "req-1:2", "p", [1, 2, 3], None, [completion], finished=True, num_cached_tokens=1
        )
        self.llm.generate.side_effect = self._yield(output)

    def raises(self, exc: BaseException) -> None:
        async def failing(*_args: Any, **_kwargs: Any) -> AsyncIterator[Any]:
            raise exc
            yield  # an async generator, like AsyncLLM.generate

        self.llm.generate.side_effect = failing

    @staticmethod
    def _yield(output: object) -> Callable[..., AsyncIterator[Any]]:
        async def outputs(*_args: Any, **_kwargs: Any) -> AsyncIterator[Any]:
            yield output

        return outputs


async def started(fake: Fake, task: Task = "generate") -> adapter.VllmEngine:
    engine = adapter.VllmEngine("org/model", VllmEngineOptions(task=task), "served")
    with mock.patch.object(
        AsyncLLM, "from_engine_args", autospec=True, return_value=fake.llm
    ) as from_args:
        await engine.start()
    assert isinstance(from_args.call_args.args[0], AsyncEngineArgs)
    return engine


async def test_a_completion_goes_to_generate_with_its_priority_and_id() -> None:
    fake = Fake()
    engine = await started(fake)
    output = await engine.generate(completion(priority="low"))
    assert (output.text, output.prompt_tokens, output.completion_tokens) == ("Paris", 3, 2)
    assert output.finish_reason == "stop"
    assert output.cached_tokens == 1  # RequestOutput.num_cached_tokens: the prefix cache's
    (prompt, params, request_id), kwargs = fake.llm.generate.call_args
    assert (prompt, request_id) == ("Once upon", "req-1:2")
    assert isinstance(params, SamplingParams)
    assert params.output_kind is RequestOutputKind.FINAL_ONLY
    assert (params.max_tokens, params.temperature) == (5, 0.5)
    assert kwargs == {
        "tokenization_kwargs": None,
        "priority": vllm_priority("low"),
        "lora_request": None,
    }
    assert vllm_priority("high") < vllm_priority("normal") < vllm_priority("low")
    await engine.close()
    fake.llm.shutdown.assert_called_once_with()


async def test_a_request_for_an_adapter_runs_with_its_lora_request() -> None:
    fake = Fake()
    engine = adapter.VllmEngine(
        "org/model", VllmEngineOptions(lora_modules={"sql": "/adapters/sql"}), "base"
    )
    with mock.patch.object(AsyncLLM, "from_engine_args", autospec=True, return_value=fake.llm):
        await engine.start()
    await engine.generate(EngineRequest("req-1", "/v1/completions", "sql", prompt="SELECT"))
    lora = fake.llm.generate.call_args.kwargs["lora_request"]
    assert isinstance(lora, LoRARequest)
    assert (lora.lora_name, lora.lora_int_id, lora.lora_path) == ("sql", 1, "/adapters/sql")
    await engine.generate(EngineRequest("req-2", "/v1/completions", "base", prompt="SELECT"))
    assert fake.llm.generate.call_args.kwargs["lora_request"] is None
    await engine.close()


async def test_a_chat_is_templated_once_and_not_given_a_second_bos() -> None:
    fake = Fake()
    engine = await started(fake)
    chat = EngineRequest(
        "req-1", "/v1/chat/completions", "m", messages=[{"role": "user", "content": "hello"}]
    )
    await engine.generate(chat)
    fake.tokenizer.apply_chat_template.assert_called_once_with(
        [{"role": "user", "content": "hello"}], tokenize=False, add_generation_prompt=True
    )
    (prompt, _params, request_id), kwargs = fake.llm.generate.call_args
    assert (prompt, request_id) == ("<s>[INST] hello [/INST]", "req-1:0")
    assert kwargs["tokenization_kwargs"] == {"add_special_tokens": False}
    assert kwargs["priority"] == vllm_priority("normal")


async def test_an_embedding_is_one_pooled_vector_per_input() -> None:
    fake = Fake()
    engine = await started(fake, task="embed")
    request = EngineRequest("req-1", "/v1/embeddings", "m", input=["hello"], attempt=2)
    output = await engine.generate(request)
    assert (output.embedding, output.prompt_tokens) == ([0.5, 0.25], 2)
    (text, params, request_id), kwargs = fake.llm.encode.call_args
    assert (text, request_id, params.task) == ("hello", "req-1:2", "embed")
    assert kwargs == {"priority": vllm_priority("normal"), "lora_request": None}


@pytest.mark.parametrize(
    "request_",
    [
        completion(prompt=""),
        EngineRequest("r", "/v1/chat/completions", "m", messages=[]),
        EngineRequest("r", "/v1/embeddings", "m", input=[""]),
        EngineRequest("r", "/v1/embeddings", "m", input=["a", "b"]),
        EngineRequest("r", "/v1/embeddings", "m", input=["a"]),  # a generation worker
    ],
    ids=["empty-prompt", "no-messages", "empty-input", "two-inputs", "wrong-task"],
)
async def test_requests_vllm_cannot_answer_are_refused_up_front(request_: EngineRequest) -> None:
    fake = Fake()
    engine = await started(fake)
    with pytest.raises(InvalidRequestError):
        await engine.generate(request_)
    fake.llm.generate.assert_not_called()
    fake.llm.encode.assert_not_called()


async def test_a_too_long_prompt_is_a_permanent_refusal_with_vllms_message() -> None:
    fake = Fake()
    engine = await started(fake)
    exc = refusal(CONTEXT_LENGTH_REFUSALS["tokens"])
    fake.raises(exc)
    with pytest.raises(InvalidRequestError) as caught:
        await engine.generate(completion())
    assert str(caught.value) == str(exc)
    assert engine.running == 0


@pytest.mark.parametrize("finish_reason", sorted(UNANSWERED_FINISH_REASONS))
async def test_an_output_vllm_ended_without_an_answer_is_retried(finish_reason: str) -> None:
    fake = Fake()
    engine = await started(fake)
    fake.text_output("", finish_reason)
    with pytest.raises(TransientEngineError, match=finish_reason):
        await engine.generate(completion())


async def test_a_cancelled_request_is_aborted_inside_vllm() -> None:
    fake = Fake()
    engine = await started(fake)
    entered = asyncio.Event()

    async def forever(*_args: Any, **_kwargs: Any) -> AsyncIterator[Any]:
        entered.set()
        await asyncio.Event().wait()
        yield None

    fake.llm.generate.side_effect = forever
    task = asyncio.create_task(engine.generate(completion()))
    waiting = asyncio.create_task(entered.wait())
    done, _ = await asyncio.wait({task, waiting}, return_when=asyncio.FIRST_COMPLETED)
    waiting.cancel()
    assert task not in done, task.exception()  # it failed instead of waiting in vLLM
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    fake.llm.abort.assert_awaited_once_with("req-1:2")
    assert engine.running == 0
