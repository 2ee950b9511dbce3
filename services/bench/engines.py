"""`kbatch bench engines`: kbatch on real engines against the engine called directly.

Each engine is measured both ways in one run, on the same prompts with the same
parameters: through kbatch (requests on the topic, one worker, results committed
in transactions) and directly (the anchor), the runs alternating. The figure is
the median kbatch steady-state rate over the median anchor rate (goal >= 0.9).

- llamacpp: the worker's `llamacpp` engine against `Llama.create_chat_completion`
  called in a loop in this process (same model file, same default threads).
- openai: the worker's `openai` engine against a plain async httpx loop with the
  same concurrency, both talking to `python -m llama_cpp.server` on the model.

The model is the tiny random-weight GGUF unless --model names another GGUF.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import typer

from services.bench.measure import STATE, bench_broker, emit, run_facts, steady_rate
from services.harness.kafka import unique_topics
from services.harness.llama_server import llama_server
from services.harness.pipeline import outcomes, publish_to, request_record, start_worker
from services.inference.engines.base import EngineRequest
from services.inference.engines.openai_compat import request_body
from services.inference.settings import LlamaCppEngineOptions, served_name_of
from services.lanes import Lane
from services.models.tiny import ensure_tiny_model
from services.resources import data_dir

GOAL = 0.9


def sample_messages(count: int) -> list[list[dict[str, str]]]:
    """The shipped sample prompts (system + user), cycled to `count`."""
    found = []
    for lane in ("high", "low"):
        path = data_dir("samples") / f"candidates-{lane}.jsonl"
        for text in path.read_text(encoding="utf-8").splitlines():
            found.append(json.loads(text)["body"]["messages"])
    return list(itertools.islice(itertools.cycle(found), count))


def bench_records(
    job: str, prompts: list[list[dict[str, str]]], model: str, max_tokens: int
) -> list[dict[str, Any]]:
    records = []
    for index, messages in enumerate(prompts):
        record = request_record(job, index, max_tokens=max_tokens, temperature=0.0)
        record["model"] = model
        record["body"]["messages"] = messages
        records.append(record)
    return records


def direct_llamacpp(model: Path, records: list[dict[str, Any]]) -> float:
    """The binding in a loop, loaded and called as the engine does."""
    from services.inference.engines.llamacpp import llama_arguments, load_llama

    llm = load_llama(str(model), LlamaCppEngineOptions())
    done = []
    try:
        for record in records:
            request = EngineRequest.from_record(record)
            llm.create_chat_completion(messages=request.messages, **llama_arguments(request))  # type: ignore[arg-type]
            done.append(time.monotonic())
    finally:
        llm.close()
    return steady_rate(done)


async def direct_openai(
    base_url: str, model: str, records: list[dict[str, Any]], concurrency: int
) -> float:
    """A plain async client loop: the same bodies, `concurrency` outstanding."""
    slots = asyncio.Semaphore(concurrency)
    done: list[float] = []
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=base_url + "/", limits=limits, timeout=600) as client:

        async def one(record: dict[str, Any]) -> None:
            async with slots:
                body = request_body(EngineRequest.from_record(record), model)
                response = await client.post("chat/completions", json=body)
                response.raise_for_status()
                done.append(time.monotonic())

        await asyncio.gather(*(one(r) for r in records))
    return steady_rate(done)


def through_kbatch(
    bootstrap: str, logs: Path, records: list[dict[str, Any]], env: dict[str, str], tag: str
) -> float:
    """One worker owning all 8 partitions; the job in the normal lane (where ingest puts a
    normal-priority job); steady-state rate of committed results."""
    topics = unique_topics(bootstrap, high_partitions=2, normal_partitions=4, low_partitions=2)
    publish_to(bootstrap, topics, records, topics.lane_layout().partitions(Lane.NORMAL))
    worker, _ = start_worker(
        bootstrap, topics, logs, f"bench-{tag}", "0-7", LOG_LEVEL="WARNING", **env
    )
    try:
        found = outcomes(bootstrap, topics, expect=len(records), timeout_s=1800)
    finally:
        worker.terminate()
    if len(found.results) != len(records) or found.dead:
        raise RuntimeError(
            f"{tag}: {len(found.results)} results and {len(found.dead)} dead letters "
            f"for {len(records)} requests (worker log: {logs})"
        )
    return steady_rate([r["completed_at_ms"] / 1000 for r in found.results])


def figures(anchors: list[float], measured: list[float], **facts: Any) -> dict[str, Any]:
    anchor, kbatch = statistics.median(anchors), statistics.median(measured)
    return {
        **facts,
        "anchor_requests_per_s": [round(a, 1) for a in anchors],
        "kbatch_requests_per_s": [round(m, 1) for m in measured],
        "ratio": round(kbatch / anchor, 3),
        "goal": GOAL,
    }


def interleaved(
    runs: int, anchor: Callable[[], float], kbatch: Callable[[], float]
) -> tuple[list[float], list[float]]:
    """anchor, kbatch, anchor, ... anchor: each kbatch run between two anchor runs, so a
    drift of the machine during the run shows in both."""
    anchors, measured = [anchor()], []
    for _ in range(runs):
        measured.append(kbatch())
        anchors.append(anchor())
    return anchors, measured


def run(
    requests: int, max_tokens: int, model: Path | None, concurrency: int, runs: int
) -> dict[str, Any]:
    logs = STATE / "bench-engines"
    logs.mkdir(parents=True, exist_ok=True)
    model = model or ensure_tiny_model(STATE / "models")
    served = served_name_of(str(model))
    records = bench_records("bench-engines", sample_messages(requests), served, max_tokens)
    shape = {"requests": requests, "max_tokens": max_tokens, "model": served, "runs": runs}
    result: dict[str, Any] = {**run_facts(), "engines": {}}
    with bench_broker() as bootstrap:
        llama_env = {"ENGINE": "llamacpp", "MODEL": str(model)}
        anchors, measured = interleaved(
            runs,
            lambda: direct_llamacpp(model, records),
            lambda: through_kbatch(bootstrap, logs, records, llama_env, "llamacpp"),
        )
        result["engines"]["llamacpp"] = figures(
            anchors, measured, anchor="Llama.create_chat_completion in a loop", **shape
        )
        with llama_server(model, logs / "llama-server.log", alias=served) as base_url:
            openai_env = {
                "ENGINE": "openai",
                "MODEL": served,
                "OPENAI__BASE_URL": base_url,
                "OPENAI__MAX_CONCURRENCY": str(concurrency),
            }
            anchors, measured = interleaved(
                runs,
                lambda: asyncio.run(direct_openai(base_url, served, records, concurrency)),
                lambda: through_kbatch(bootstrap, logs, records, openai_env, "openai"),
            )
        result["engines"]["openai"] = figures(
            anchors,
            measured,
            anchor=f"async httpx loop, {concurrency} outstanding, against llama_cpp.server",
            **shape,
        )
    return result


def main(
    requests: int = typer.Option(1000, help="requests per measurement"),
    max_tokens: int = typer.Option(24, help="max_tokens of every request"),
    model: Path | None = typer.Option(None, help="a GGUF file; default: the tiny model"),
    concurrency: int = typer.Option(4, help="requests outstanding at the openai server"),
    runs: int = typer.Option(2, help="kbatch runs per engine, each between two anchor runs"),
    out: Path | None = typer.Option(None, help="also write the JSON here"),
) -> None:
    """kbatch on the llamacpp and openai engines against each engine called directly; JSON."""
    emit(run(requests, max_tokens, model, concurrency, runs), out)


if __name__ == "__main__":
    typer.run(main)
