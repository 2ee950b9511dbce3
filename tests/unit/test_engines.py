from __future__ import annotations

import asyncio
import time
from dataclasses import replace

import pytest

from services.errors import ConfigurationError, EngineOutOfMemoryError, InvalidRequestError
from services.inference.engines import build_engine
from services.inference.engines.base import EngineRequest
from services.inference.engines.openai_params import (
    chat_messages,
    is_context_length_error,
    sampling_kwargs,
)
from services.inference.engines.simulated import SimulatedEngine, ideal_requests_per_s
from services.inference.engines.vllm_mapping import generation_output
from services.inference.gpu import GpuReport, GpuSample, assess
from services.inference.settings import (
    GpuHealthOptions,
    InferenceOptions,
    SimulatedEngineOptions,
    parse_partitions,
)


def chat(request_id: str, max_tokens: int = 4, content: str = "hello there") -> EngineRequest:
    return EngineRequest(
        request_id,
        "/v1/chat/completions",
        "kbatch-sim",
        messages=[{"role": "user", "content": content, "name": None}],
        sampling={"max_tokens": max_tokens, "temperature": 0.5, "stop": ["\n"]},
    )


def test_no_engine_is_ever_chosen_implicitly() -> None:
    with pytest.raises(ConfigurationError, match="must be set"):
        build_engine(InferenceOptions())


async def test_simulated_outputs_are_deterministic_and_labelled() -> None:
    engine = SimulatedEngine(SimulatedEngineOptions(step_s=0.001))
    await engine.start()
    try:
        first = await engine.generate(chat("a", max_tokens=5))
        second = await engine.generate(chat("b", max_tokens=5))
        other = await engine.generate(chat("c", max_tokens=5, content="different"))
    finally:
        await engine.close()
    assert first.text == second.text
    assert first.text != other.text
    assert first.text is not None and first.text.startswith("[simulated]")
    assert (first.prompt_tokens, first.completion_tokens, first.finish_reason) == (3, 5, "length")


async def test_simulated_engine_reaches_most_of_its_closed_form_ideal() -> None:
    options = SimulatedEngineOptions(step_s=0.005, max_num_seqs=8, tokens_per_step=2)
    engine = SimulatedEngine(options)
    await engine.start()
    started = time.monotonic()
    try:
        await asyncio.gather(*(engine.generate(chat(str(i), max_tokens=8)) for i in range(64)))
    finally:
        await engine.close()
    elapsed = time.monotonic() - started
    ideal = 64 / ideal_requests_per_s(options, mean_steps=4)  # 8 batches x 4 steps x 5 ms
    assert elapsed >= ideal * 0.98  # never faster than the cost model allows
    assert elapsed < ideal * 3  # and the stepping loop does not stall


async def test_simulated_engine_admits_waiting_sequences_high_lane_first() -> None:
    """One slot: a low request runs; another low and then a high one wait; the high one
    joins the batch next (no preemption of what runs)."""
    engine = SimulatedEngine(SimulatedEngineOptions(step_s=0.005, max_num_seqs=1))
    await engine.start()
    finished: list[str] = []

    async def run(request: EngineRequest) -> None:
        await engine.generate(request)
        finished.append(request.request_id)

    try:
        running = asyncio.create_task(run(replace(chat("low-1"), priority="low")))
        while engine.running < 1:  # until it holds the one slot
            await asyncio.sleep(0.001)
        queued = [
            asyncio.create_task(run(replace(chat(name), priority=lane)))
            for name, lane in (("low-2", "low"), ("normal-1", "normal"), ("high-1", "high"))
        ]
        await asyncio.gather(running, *queued)
    finally:
        await engine.close()
    assert finished == ["low-1", "high-1", "normal-1", "low-2"]


async def test_simulated_engine_refuses_prompts_past_the_context_length() -> None:
    engine = SimulatedEngine(SimulatedEngineOptions(step_s=0, max_model_len=10))
    with pytest.raises(InvalidRequestError, match="context length"):
        await engine.generate(chat("x", max_tokens=9))


async def test_injected_oom_halves_concurrency_when_asked() -> None:
    engine = SimulatedEngine(SimulatedEngineOptions(step_s=0.01, max_num_seqs=8, fault_oom_above=2))
    await engine.start()
    try:
        running = [asyncio.create_task(engine.generate(chat(str(i)))) for i in range(2)]
        await asyncio.sleep(0.005)
        with pytest.raises(EngineOutOfMemoryError):
            await engine.generate(chat("third"))
        assert engine.shrink_concurrency() == 4
        await asyncio.gather(*running)
    finally:
        await engine.close()


def test_vllm_sampling_parameters_come_from_the_body() -> None:
    request = chat("a", max_tokens=7)
    assert sampling_kwargs(request) == {"max_tokens": 7, "temperature": 0.5, "stop": ["\n"]}
    bare = EngineRequest("b", "/v1/completions", "m", prompt="p")
    assert sampling_kwargs(bare, default_max_tokens=16) == {"max_tokens": 16}
    assert chat_messages(request) == [{"role": "user", "content": "hello there"}]


def test_vllm_output_maps_tokens_and_finish_reason() -> None:
    output = generation_output([1, 2, 3], "hi", [5, 6], "stop", 2)
    assert (output.prompt_tokens, output.completion_tokens, output.text) == (3, 2, "hi")
    assert (output.finish_reason, output.cached_tokens) == ("stop", 2)
    assert is_context_length_error(
        "The decoder prompt (length 9000) is longer than the maximum model length of 4096."
    )
    assert not is_context_length_error("temperature must be non-negative")


def gpu(**overrides: float) -> GpuSample:
    values = {
        "index": 0,
        "name": "H100",
        "memory_used_bytes": 10,
        "memory_total_bytes": 100,
        "temperature_c": 50,
        "utilization": 0.5,
        "uncorrected_ecc_errors": 0,
    }
    values.update(overrides)
    return GpuSample(**values)  # type: ignore[arg-type]


def test_gpu_verdicts() -> None:
    options = GpuHealthOptions(max_temperature_c=85)
    assert assess(GpuReport((gpu(),)), options, gpu_required=True).healthy
    hot = assess(GpuReport((gpu(temperature_c=90),)), options, gpu_required=True)
    assert not hot.healthy and "90C" in hot.reasons[0]
    ecc = assess(GpuReport((gpu(uncorrected_ecc_errors=2),)), options, gpu_required=True)
    assert not ecc.healthy
    no_nvml = GpuReport((), nvml_error="NVML Shared Library Not Found")
    assert not assess(no_nvml, options, gpu_required=True).healthy
    verdict = assess(no_nvml, options, gpu_required=False)
    assert verdict.healthy and "NVML Shared Library Not Found" in verdict.reasons[0]


def test_partition_ranges() -> None:
    assert parse_partitions("0-3, 7") == {0, 1, 2, 3, 7}
    assert parse_partitions("") == set()
    with pytest.raises(ValueError, match="bad partition range"):
        parse_partitions("5-2")
