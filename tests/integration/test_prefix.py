"""Prefix affinity on a real llamacpp worker pair: requests sharing a system prompt meet
the same llama.cpp cache, and every result says how many prompt tokens it took from it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import openai
import pytest

from services.bench.prefix import job
from services.harness.kafka import unique_topics, wait_for
from services.harness.pipeline import (
    ingest_env,
    start_follower,
    start_ingest_process,
    start_scheduler,
)
from services.harness.processes import ServiceProcess
from services.models.tiny import ensure_tiny_model
from services.settings import TopicSettings
from tests.conftest import REPO_ROOT
from tests.integration.test_batch_api import create_batch, jsonl, wait_status

pytestmark = pytest.mark.integration

TINY = "kbatch-tiny"
LANES = {"high_partitions": 1, "normal_partitions": 4, "low_partitions": 1}
PROMPTS, QUESTIONS = 4, 20
SYSTEM_CHARS = 1500  # ~1,500 tokens: the tiny model's tokenizer is byte-level


def job_lines(seed: int) -> list[str]:
    """4 long system prompts x 20 short questions, shuffled, greedy: the bench's job, small."""
    return [json.dumps(line) for line in job(seed, PROMPTS, QUESTIONS, SYSTEM_CHARS, 4)]


def run_batch(
    env: dict[str, str], tmp_path: Path, name: str, lines: list[str]
) -> tuple[dict[str, Any], Any]:
    """One batch through an ingest started with `env`: its outputs by custom_id, and the
    finished batch object."""
    ingest, url = start_ingest_process(env, tmp_path / f"ingest-{name}.log")
    try:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        wait_for(lambda: TINY in {m.id for m in client.models.list()}, timeout_s=30)
        batch = create_batch(client, tmp_path, lines)
        done = wait_status(client, batch.id, {"completed", "failed"}, timeout_s=150)
        assert done.status == "completed", done
        assert done.output_file_id
        outputs = {line["custom_id"]: line for line in jsonl(client, done.output_file_id)}
        return outputs, done
    finally:
        assert ingest.terminate() == 0, ingest.log()


def cached_share(outputs: dict[str, Any]) -> float:
    usages = [line["response"]["body"]["usage"] for line in outputs.values()]
    cached: int = sum(u["prompt_tokens_details"]["cached_tokens"] for u in usages)
    prompt: int = sum(u["prompt_tokens"] for u in usages)
    return cached / prompt


def worker_pair(
    bootstrap: str, topics: TopicSettings, tmp_path: Path, model: Path
) -> list[ServiceProcess]:
    return [
        start_follower(
            bootstrap, topics, tmp_path, f"llama-{n}", "dedicated", 6,
            ENGINE="llamacpp", MODEL=str(model), LLAMACPP__N_THREADS="1",
        )[0]
        for n in (1, 2)
    ]  # fmt: skip


def test_shared_system_prompts_are_served_from_the_cache_with_affinity_and_answer_alike(
    bootstrap: str, tmp_path: Path
) -> None:
    model = ensure_tiny_model(REPO_ROOT / ".kbatch" / "models", context=4096)
    topics = unique_topics(bootstrap, **LANES)
    scheduler, scheduler_url = start_scheduler(bootstrap, topics, tmp_path)
    processes = [scheduler, *worker_pair(bootstrap, topics, tmp_path, model)]
    lines = job_lines(seed=7)
    try:
        env = ingest_env(bootstrap, topics, tmp_path / "files", scheduler_url)
        with_affinity, batch = run_batch(env, tmp_path, "on", lines)
        off = {**env, "KBATCH_INGEST__PREFIX_AFFINITY": "false"}
        without, _ = run_batch(off, tmp_path, "off", lines)
    finally:
        for process in processes:
            assert process.terminate() == 0, process.log()

    assert set(with_affinity) == set(without) == {json.loads(x)["custom_id"] for x in lines}
    for custom_id, line in with_affinity.items():
        body = line["response"]["body"]
        assert body["kbatch"]["engine"] == "llamacpp"
        # Greedy decoding from a cached prefix answers exactly what a cold prompt does.
        twin = without[custom_id]["response"]["body"]
        assert body["choices"][0]["message"] == twin["choices"][0]["message"], custom_id
        assert body["usage"]["prompt_tokens"] == twin["usage"]["prompt_tokens"]
        assert body["usage"]["prompt_tokens_details"]["cached_tokens"] >= 0
        assert (
            body["usage"]["prompt_tokens_details"]["cached_tokens"] < body["usage"]["prompt_tokens"]
        )  # the question at least is evaluated
    on, off_share = cached_share(with_affinity), cached_share(without)
    print(f"prompt tokens from the cache: {on:.3f} with affinity, {off_share:.3f} without")
    assert on >= 0.75, on
    assert off_share <= on - 0.3, (on, off_share)
    # The batch's usage sums its results' cached tokens.
    assert batch.usage is not None
    summed = sum(
        line["response"]["body"]["usage"]["prompt_tokens_details"]["cached_tokens"]
        for line in with_affinity.values()
    )
    assert batch.usage.input_tokens_details.cached_tokens == summed > 0
