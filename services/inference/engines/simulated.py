"""The `simulated` engine: deterministic outputs and a cost model with a known ideal.

Continuous batching like a real engine: up to `max_num_seqs` sequences advance
together by `tokens_per_step` tokens every `step_s` seconds; a finished
sequence frees its slot at once and a waiting one joins at the next step, the
highest lane first (as vLLM's priority scheduling, without preemption). With
slots always full, the ideal throughput is

    requests/s = max_num_seqs / (step_s * mean(ceil(output_tokens / tokens_per_step)))

Every output says it is simulated; this engine is only ever selected by name.
"""

from __future__ import annotations

import asyncio
import hashlib
import heapq
import itertools
import math
import struct
import time
from dataclasses import dataclass, field

from services.errors import (
    EngineDeadError,
    EngineOutOfMemoryError,
    InvalidRequestError,
    TransientEngineError,
)
from services.inference.engines.base import EngineOutput, EngineRequest
from services.inference.settings import InferenceOptions, SimulatedEngineOptions
from services.lanes import lane_rank

EMBEDDING_DIMENSIONS = 8


def prompt_text(request: EngineRequest) -> str:
    if request.messages is not None:
        return "\n".join(f"{m['role']}: {m['content']}" for m in request.messages)
    if request.prompt is not None:
        return request.prompt
    return "\n".join(request.input or [])


def count_tokens(text: str) -> int:
    """The simulated tokenizer: whitespace-separated words, at least one."""
    return max(1, len(text.split()))


def output_tokens(request: EngineRequest, options: SimulatedEngineOptions) -> int:
    return int(request.sampling.get("max_tokens") or options.default_max_tokens)


def steps_for(tokens: int, tokens_per_step: int) -> int:
    return math.ceil(tokens / tokens_per_step)


def ideal_requests_per_s(options: SimulatedEngineOptions, mean_steps: float) -> float:
    """Closed-form ceiling of the cost model for a given mean of steps per request."""
    return options.max_num_seqs / (options.step_s * mean_steps)


def _digest(*parts: str) -> bytes:
    return hashlib.sha256("\x00".join(parts).encode()).digest()


def simulated_text(request: EngineRequest, tokens: int) -> str:
    seed = _digest(request.model, prompt_text(request)).hex()
    words = [f"sim{seed[(i * 4) % 60 : (i * 4) % 60 + 4]}" for i in range(tokens)]
    return "[simulated] " + " ".join(words)


def simulated_embedding(text: str) -> list[float]:
    raw = _digest("embedding", text)[: EMBEDDING_DIMENSIONS * 4]
    values = struct.unpack(f"<{EMBEDDING_DIMENSIONS}I", raw)
    return [v / 2**32 * 2 - 1 for v in values]


def _injected_transient(request: EngineRequest, rate: float) -> bool:
    if rate <= 0:
        return False
    draw = int.from_bytes(_digest("fault", request.request_id, str(request.attempt))[:4], "big")
    return draw / 2**32 < rate


@dataclass(order=True)
class _Sequence:
    rank: int  # its lane's: waiting sequences join the batch high lane first, then in order
    arrival: int
    steps_left: int = field(compare=False)
    done: asyncio.Future[None] = field(compare=False)


class SimulatedEngine:
    """Continuous-batching simulator; see the module docstring for its cost model."""

    name = "simulated"

    def __init__(
        self, options: SimulatedEngineOptions, served_models: tuple[str, ...] = ("kbatch-sim",)
    ) -> None:
        self.served_models = served_models
        self._options = options
        self._concurrency = options.max_num_seqs
        self._active: list[_Sequence] = []
        self._waiting: list[_Sequence] = []  # a heap
        self._arrivals = itertools.count()
        self._wake = asyncio.Event()
        self._stepper: asyncio.Task[None] | None = None
        self._served = 0
        self._dead = False

    @property
    def max_concurrency(self) -> int:
        return self._concurrency

    @property
    def running(self) -> int:
        return len(self._active)

    async def start(self) -> None:
        if self._options.step_s > 0:
            self._stepper = asyncio.create_task(self._step_forever(), name="sim-engine")

    def shrink_concurrency(self) -> int:
        self._concurrency = max(1, self._concurrency // 2)
        return self._concurrency

    async def close(self) -> None:
        if self._stepper is not None:
            self._stepper.cancel()
            await asyncio.gather(self._stepper, return_exceptions=True)

    async def generate(self, request: EngineRequest) -> EngineOutput:
        self._check_faults(request)
        prompt = prompt_text(request)
        prompt_tokens = count_tokens(prompt)
        if request.endpoint == "/v1/embeddings":
            await self._run_steps(1, request)
            return EngineOutput(prompt_tokens, 0, embedding=simulated_embedding(prompt))
        tokens = output_tokens(request, self._options)
        if prompt_tokens + tokens > self._options.max_model_len:
            raise InvalidRequestError(
                f"prompt ({prompt_tokens} tokens) + max_tokens ({tokens}) exceeds the model's "
                f"context length {self._options.max_model_len}"
            )
        await self._run_steps(steps_for(tokens, self._options.tokens_per_step), request)
        return EngineOutput(
            prompt_tokens, tokens, text=simulated_text(request, tokens), finish_reason="length"
        )

    def _check_faults(self, request: EngineRequest) -> None:
        options = self._options
        if self._dead:
            raise EngineDeadError("simulated engine is dead (fault injection)")
        self._served += 1
        if options.fault_die_after is not None and self._served > options.fault_die_after:
            self._dead = True
            raise EngineDeadError(f"simulated engine died after {options.fault_die_after} requests")
        if _injected_transient(request, options.fault_transient_rate):
            raise TransientEngineError("injected transient fault")
        oom_above = options.fault_oom_above
        if (
            oom_above is not None
            and self._concurrency > oom_above
            and len(self._active) >= oom_above
        ):
            raise EngineOutOfMemoryError(
                f"simulated CUDA out of memory at {len(self._active) + 1} sequences"
            )

    async def _run_steps(self, steps: int, request: EngineRequest) -> None:
        if self._options.step_s == 0:
            return  # zero-cost engine: measures the worker's message path alone
        sequence = _Sequence(
            lane_rank(request.priority),
            next(self._arrivals),
            steps,
            asyncio.get_running_loop().create_future(),
        )
        heapq.heappush(self._waiting, sequence)
        self._wake.set()
        await sequence.done

    def _admit_waiting(self) -> None:
        while self._waiting and len(self._active) < self._concurrency:
            sequence = heapq.heappop(self._waiting)
            if not sequence.done.cancelled():
                self._active.append(sequence)

    async def _step_forever(self) -> None:
        step_s = self._options.step_s
        while True:
            await self._wake.wait()
            self._wake.clear()
            next_step = time.monotonic()
            while True:
                self._admit_waiting()
                if not self._active:
                    break
                # Absolute deadlines: a late wake-up does not push every later step back.
                next_step += step_s
                await asyncio.sleep(max(0.0, next_step - time.monotonic()))
                still_running: list[_Sequence] = []
                for sequence in self._active:
                    sequence.steps_left -= 1
                    if sequence.done.cancelled():
                        continue
                    if sequence.steps_left <= 0:
                        sequence.done.set_result(None)
                    else:
                        still_running.append(sequence)
                self._active = still_running


def from_options(options: InferenceOptions) -> SimulatedEngine:
    return SimulatedEngine(options.simulated, options.served_models)
