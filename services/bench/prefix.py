"""`kbatch bench prefix`: what prefix affinity buys, in throughput and cached tokens.

A job of shared system prompts x questions, shuffled, through the whole pipeline
(ingest's Batch API, the scheduler, two `llamacpp` workers of one instance and one
thread each, the tiny model with a 4,096-token context), with prefix affinity on and
off, alternating, each run with system prompts of its own (no run meets a cache the
previous one filled). The anchor, in the same process: llama-cpp-python called
directly on the same requests, grouped by prompt and interleaved, which bounds what
ordering alone can give on this machine. Goals: affinity on >= 3x off in throughput,
>= 85% of prompt tokens from the cache. Prints JSON.
"""

from __future__ import annotations

import json
import random
import statistics
import time
from pathlib import Path
from typing import Any

import httpx
import typer

from services.bench.measure import STATE, OutOption, bench_broker, emit, run_facts
from services.codec import results_codec
from services.harness.kafka import read_topic, unique_topics, wait_for
from services.harness.pipeline import (
    ingest_env,
    start_follower,
    start_ingest_process,
    start_scheduler,
)
from services.harness.processes import ServiceProcess
from services.inference.settings import LlamaCppEngineOptions
from services.models.tiny import TINY_MODEL_NAME, ensure_tiny_model
from services.settings import TopicSettings

GOAL_SPEEDUP = 3.0
GOAL_CACHED_SHARE = 0.85
CONTEXT = 4096
MAX_TOKENS = 16
LANES = {"high_partitions": 1, "normal_partitions": 8, "low_partitions": 1}
ENGINE = {"ENGINE": "llamacpp", "LLAMACPP__N_THREADS": "1"}


def job(
    seed: int, prompts: int, questions: int, system_chars: int, max_tokens: int = MAX_TOKENS
) -> list[dict[str, Any]]:
    """`prompts` system prompts of `system_chars` characters x `questions`, shuffled,
    greedy (tests/integration/test_prefix.py runs a small one)."""
    rng = random.Random(seed)
    systems = [
        " ".join(rng.choice(["alpha", "kafka", "batch", "cache", "token"]) for _ in range(400))[
            :system_chars
        ]
        for _ in range(prompts)
    ]
    lines = [
        {
            "custom_id": f"s{seed}-p{p}-q{q}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {
                "model": TINY_MODEL_NAME,
                "messages": [
                    {"role": "system", "content": systems[p]},
                    {"role": "user", "content": f"Question {q}: {rng.randint(0, 10**6)}?"},
                ],
                "max_tokens": max_tokens,
                "temperature": 0,
            },
        }
        for p in range(prompts)
        for q in range(questions)
    ]
    rng.shuffle(lines)
    return lines


def through_pipeline(
    bootstrap: str, results_topic: str, url: str, lines: list[dict[str, Any]]
) -> dict[str, Any]:
    """One batch: requests per second from its creation to its last result (the results'
    own Kafka timestamps), and the share of prompt tokens its results took from a cache."""
    with httpx.Client(base_url=url, timeout=60) as client:
        body = "\n".join(json.dumps(line) for line in lines).encode()
        uploaded = client.post(
            "/v1/files", files={"file": ("job.jsonl", body)}, data={"purpose": "batch"}
        ).json()
        started = time.time()
        batch = client.post(
            "/v1/batches",
            json={
                "input_file_id": uploaded["id"],
                "endpoint": "/v1/chat/completions",
                "completion_window": "24h",
            },
        ).json()
        done = wait_for(
            lambda: (
                (b := client.get(f"/v1/batches/{batch['id']}").json())["status"]
                in ("completed", "failed")
                and b
            ),
            timeout_s=1800,
            what="the bench batch to end",
            interval_s=0.5,
        )
        if done["status"] != "completed" or done["request_counts"]["failed"]:
            raise RuntimeError(f"the bench batch did not complete cleanly: {done}")
        results = [
            json.loads(line)["response"]["body"]
            for line in client.get(f"/v1/files/{done['output_file_id']}/content").text.splitlines()
        ]
    ended = max(
        (message.timestamp()[1] / 1000)
        for message in read_topic(bootstrap, results_topic, timeout_s=30)
        if results_codec().decode(message.value())["job_id"] == batch["id"]
    )
    prompt = sum(r["usage"]["prompt_tokens"] for r in results)
    cached = sum(r["usage"]["prompt_tokens_details"]["cached_tokens"] for r in results)
    return {
        "per_s": len(results) / max(ended - started, 1e-9),
        "cached_share": cached / prompt,
    }


def direct(model: Path, lines: list[dict[str, Any]], grouped: bool) -> dict[str, Any]:
    """The same requests straight into one llama-cpp-python instance (one thread)."""
    from services.inference.engines.llamacpp import load_llama

    ordered = sorted(lines, key=lambda line: line["body"]["messages"][0]["content"])
    llama = load_llama(str(model), LlamaCppEngineOptions(n_ctx=CONTEXT, n_threads=1))
    try:
        started = time.perf_counter()
        for line in ordered if grouped else lines:
            body = line["body"]
            llama.create_chat_completion(
                messages=body["messages"], max_tokens=MAX_TOKENS, temperature=0.0, top_p=1.0
            )
        elapsed = time.perf_counter() - started
    finally:
        llama.close()
    return {"per_s": len(lines) / elapsed}


def worker_pair(
    bootstrap: str, topics: TopicSettings, out: Path, model: Path
) -> list[ServiceProcess]:
    return [
        start_follower(
            bootstrap, topics, out, f"prefix-{n}", "dedicated", 8, MODEL=str(model), **ENGINE
        )[0]
        for n in (1, 2)
    ]


def measure(
    out: Path, prompts: int, questions: int, system_chars: int, runs: int
) -> dict[str, Any]:
    model = ensure_tiny_model(STATE / "models", context=CONTEXT)
    on: list[dict[str, Any]] = []
    off: list[dict[str, Any]] = []
    with bench_broker() as bootstrap:
        topics = unique_topics(bootstrap, **LANES)
        scheduler, scheduler_url = start_scheduler(bootstrap, topics, out, "prefix-scheduler")
        processes = [scheduler, *worker_pair(bootstrap, topics, out, model)]
        try:
            for run in range(runs):  # alternating, so drift hits both alike
                for affinity, into in (("true", on), ("false", off)):
                    env = ingest_env(
                        bootstrap,
                        topics,
                        out / "prefix-files",
                        scheduler_url,
                        KBATCH_INGEST__PREFIX_AFFINITY=affinity,
                    )
                    ingest, url = start_ingest_process(env, out / f"prefix-ingest-{run}.log")
                    try:
                        seed = 2 * run + (affinity == "false")
                        lines = job(seed, prompts, questions, system_chars)
                        into.append(through_pipeline(bootstrap, topics.results, url, lines))
                    finally:
                        ingest.terminate()
        finally:
            for process in processes:
                process.terminate()
    anchor = job(10_000, prompts, questions, system_chars)
    grouped, interleaved = direct(model, anchor, True), direct(model, anchor, False)

    def median(runs_: list[dict[str, Any]], key: str) -> float:
        return float(statistics.median(float(r[key]) for r in runs_))

    return {
        **run_facts(),
        "job": {
            "system_prompts": prompts,
            "questions_each": questions,
            "system_chars": system_chars,
            "max_tokens": MAX_TOKENS,
            "workers": 2,
            "context": CONTEXT,
        },
        "pipeline": {
            "affinity_per_s": [round(r["per_s"], 2) for r in on],
            "no_affinity_per_s": [round(r["per_s"], 2) for r in off],
            "affinity_cached_share": [round(r["cached_share"], 3) for r in on],
            "no_affinity_cached_share": [round(r["cached_share"], 3) for r in off],
            "speedup": round(median(on, "per_s") / median(off, "per_s"), 2),
        },
        "direct": {
            "grouped_per_s": round(grouped["per_s"], 2),
            "interleaved_per_s": round(interleaved["per_s"], 2),
            "speedup": round(grouped["per_s"] / interleaved["per_s"], 2),
        },
        "goal_speedup": GOAL_SPEEDUP,
        "goal_cached_share": GOAL_CACHED_SHARE,
    }


def main(
    prompts: int = typer.Option(8, help="shared system prompts"),
    questions: int = typer.Option(32, help="questions per system prompt"),
    system_chars: int = typer.Option(2000, help="characters per system prompt"),
    runs: int = typer.Option(2, help="runs with affinity on and off, alternating"),
    out: Path = OutOption,
) -> None:
    """Prefix affinity on against off, two llamacpp workers; llama.cpp direct as anchor."""
    out.mkdir(parents=True, exist_ok=True)
    emit(measure(out, prompts, questions, system_chars, runs), out / "prefix.json")


if __name__ == "__main__":
    typer.run(main)
