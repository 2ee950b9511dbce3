"""Many models on one fleet, against the real broker and real processes: requests reach
only the workers serving their model, a model without a worker waits, a new model is
served without a restart, an unknown one is refused."""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import llama_cpp
import openai
import pytest
from confluent_kafka import Producer

from services.harness.kafka import read_topic, unique_topics, wait_for
from services.harness.pipeline import (
    batch_line,
    ingest_env,
    outcomes,
    start_follower,
    start_ingest_process,
    start_scheduler,
)
from services.harness.processes import KBATCH, ServiceProcess
from services.models.tiny import ensure_tiny_model
from tests.conftest import REPO_ROOT
from tests.integration.test_batch_api import create_batch, wait_status
from tests.integration.test_real_engines import greedy_answer

pytestmark = pytest.mark.integration

SMALL = {"high_partitions": 1, "normal_partitions": 2, "low_partitions": 1}
MAX_TOKENS = 6
# Two tiny random-weight models from different seeds: they answer differently, so a
# request served by the wrong one fails the comparison.
MODEL_SEEDS = {"tiny-a": 1, "tiny-b": 2}
B_JOB = 800  # the orphaned model's job: a few seconds of work on this machine


@pytest.fixture(scope="module")
def tiny_models() -> dict[str, Path]:
    return {
        name: ensure_tiny_model(REPO_ROOT / ".kbatch" / "models", seed)
        for name, seed in MODEL_SEEDS.items()
    }


@pytest.fixture(scope="module")
def direct(tiny_models: dict[str, Path]) -> Iterator[dict[str, llama_cpp.Llama]]:
    """llama-cpp-python itself, per model: what each answer must equal."""
    models = {
        name: llama_cpp.Llama(model_path=str(path), n_ctx=0, verbose=False)
        for name, path in tiny_models.items()
    }
    try:
        yield models
    finally:
        for model in models.values():
            model.close()


def line(custom_id: str, model: str, max_tokens: int = MAX_TOKENS) -> str:
    return batch_line(custom_id, model, max_tokens, prompt(custom_id), temperature=0)


def prompt(custom_id: str) -> str:
    return f"Question {custom_id}: which lane is fastest?"


def llama_worker(
    bootstrap: str, topics: Any, log_dir: Path, name: str, model: str, path: Path
) -> ServiceProcess:
    worker, _ = start_follower(
        bootstrap, topics, log_dir, name, "dedicated", 4,
        ENGINE="llamacpp", MODEL=str(path), SERVED_MODEL_NAME=model,
    )  # fmt: skip
    return worker


def submit_natively(bootstrap: str, topic: str, job: str, lines: list[str]) -> None:
    """A Kafka-native submission: one job's lines, sealed by the last."""
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    for i, text in enumerate(lines):
        headers: list[tuple[str, str | bytes | None]] = [
            ("kbatch-job", job.encode()),
            ("kbatch-priority", b"normal"),
        ]
        if i == len(lines) - 1:
            headers.append(("kbatch-seal", b"true"))
        producer.produce(topic, text.encode(), key=job.encode(), headers=headers)
    assert producer.flush(30) == 0


def listed(client: openai.OpenAI) -> dict[str, dict[str, Any]]:
    """GET /v1/models: each model's kbatch extension (live workers, backlog)."""
    return {m.id: (m.model_extra or {})["kbatch"] for m in client.models.list()}


def outputs(client: openai.OpenAI, batch_id: str) -> list[dict[str, Any]]:
    batch = client.batches.retrieve(batch_id)
    assert batch.output_file_id is not None and batch.error_file_id is None, batch
    text = client.files.content(batch.output_file_id).text
    return [json.loads(x) for x in text.splitlines()]


def test_two_models_each_answered_only_by_its_own_workers(
    bootstrap: str, tmp_path: Path, tiny_models: dict[str, Path], direct: dict[str, llama_cpp.Llama]
) -> None:
    """A batch per model, one mixing both, and Kafka-native submissions for both, at
    once: every answer is llama-cpp-python's own for the line's model; nothing is
    dead-lettered; a line naming an unknown model is refused with model_not_found.
    Then a worker for a model never seen starts while everything runs: its model is
    registered, admitted and placed, and a batch for it completes, no service restarted."""
    topics = unique_topics(bootstrap, **SMALL)
    scheduler, scheduler_url = start_scheduler(bootstrap, topics, tmp_path)
    processes = [scheduler]
    try:
        for name, path in tiny_models.items():
            processes.append(llama_worker(bootstrap, topics, tmp_path, f"w-{name}", name, path))
        env = ingest_env(bootstrap, topics, tmp_path / "files", scheduler_url)
        ingest, url = start_ingest_process(env, tmp_path / "ingest.log")
        processes.append(ingest)
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        # Registered by the workers themselves; live once the scheduler heard them.
        wait_for(
            lambda: all(listed(client).get(m, {}).get("live_workers") for m in MODEL_SEEDS),
            timeout_s=60,
            what="both models listed with a live worker",
        )
        per_model = {
            m: create_batch(client, tmp_path, [line(f"{m}-{i}", m) for i in range(8)])
            for m in MODEL_SEEDS
        }
        mixed_lines = [line(f"mix-{i}", list(MODEL_SEEDS)[i % 2]) for i in range(8)]
        mixed = create_batch(client, tmp_path, [*mixed_lines, line("who", "no-such-model")])
        for m in MODEL_SEEDS:
            submit_natively(
                bootstrap,
                topics.submissions,
                f"native-{m}",
                [line(f"nat-{m}-{i}", m) for i in range(6)],
            )
        submit_natively(
            bootstrap, topics.submissions, "native-unknown", [line("x", "no-such-model")]
        )

        def all_done() -> bool:
            ids = [b.id for b in [*per_model.values(), mixed]]
            return all(client.batches.retrieve(i).status == "completed" for i in ids)

        wait_for(all_done, timeout_s=180, what="the three batches")
        answered = {r["custom_id"]: r for b in per_model.values() for r in outputs(client, b.id)}
        finished_mixed = client.batches.retrieve(mixed.id)
        assert finished_mixed.request_counts is not None
        assert finished_mixed.request_counts.completed == 8
        assert finished_mixed.model is None  # a file naming several models names none
        assert sorted((finished_mixed.model_extra or {})["kbatch"]["models"]) == sorted(MODEL_SEEDS)
        assert finished_mixed.errors is not None
        [refused] = finished_mixed.errors.data or []
        assert refused.code == "model_not_found" and refused.line == 9
        assert client.files.content(finished_mixed.output_file_id or "").text
        mixed_out = [
            json.loads(x)
            for x in client.files.content(finished_mixed.output_file_id or "").text.splitlines()
        ]
        answered.update({r["custom_id"]: r for r in mixed_out})
        native = outcomes(bootstrap, topics, expect=len(answered) + 12, timeout_s=120)

        new_model = f"brand-new/{uuid.uuid4().hex[:8]}"
        early = create_batch(client, tmp_path, [line("early", new_model)])
        refused_early = wait_status(client, early.id, {"failed"}, 60)
        assert refused_early.errors is not None and refused_early.errors.data
        assert refused_early.errors.data[0].code == "model_not_found"
        processes.append(
            start_follower(
                bootstrap, topics, tmp_path, "w-new", "spot", 4, SERVED_MODEL_NAME=new_model
            )[0]
        )
        wait_for(lambda: listed(client).get(new_model, {}).get("live_workers"), 60)
        late = create_batch(client, tmp_path, [line(f"n-{i}", new_model) for i in range(30)])
        wait_status(client, late.id, {"completed"}, 120)
        new_rows = outputs(client, late.id)
        scheduler_models = httpx.get(f"{scheduler_url}/models", timeout=10).json()["models"]
        status = subprocess.run(
            [KBATCH, "status", "--api", url, "--scheduler", scheduler_url],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
            env={**os.environ, "COLUMNS": "200"},
        ).stdout
    finally:
        for process in reversed(processes):
            assert process.terminate() == 0, process.log()

    assert {r["response"]["body"]["model"] for r in new_rows} == {new_model}
    assert len(new_rows) == 30
    # `kbatch status`: each model in a row of its own, with its workers and backlog.
    for model in (*MODEL_SEEDS, new_model):
        assert model in status, status
    row = next(m for m in scheduler_models if m["model"] == new_model)
    assert row["workers"] == ["w-new"] and row["topic"] == topics.requests_of(new_model)
    assert len(answered) == 8 + 8 + 8
    for custom_id, row in answered.items():
        body = row["response"]["body"]
        model = body["model"]
        assert custom_id.startswith(model) or custom_id.startswith("mix-")
        messages = [{"role": "user", "content": prompt(custom_id)}]
        assert body["choices"][0]["message"]["content"] == greedy_answer(
            direct[model], messages, MAX_TOKENS
        ), custom_id
    # Different seeds answer the same prompt differently: a misroute would show.
    same = [{"role": "user", "content": prompt("tiny-a-0")}]
    answers = {greedy_answer(direct[m], same, MAX_TOKENS) for m in MODEL_SEEDS}
    assert len(answers) == 2
    natively = [r for r in native.results if r["job_id"].startswith("native-")]
    assert Counter(r["model"] for r in natively) == {"tiny-a": 6, "tiny-b": 6}
    for result in natively:
        messages = [{"role": "user", "content": prompt(result["custom_id"])}]
        text = result["output"]["text"]
        assert text == greedy_answer(direct[result["model"]], messages, MAX_TOKENS)
    assert native.dead == [], native.dead  # nothing misrouted, nothing dead-lettered
    rejected = [json.loads(m.value() or b"") for m in read_topic(bootstrap, topics.rejections)]
    assert [r["code"] for r in rejected] == ["model_not_found"]


def test_a_model_whose_only_worker_dies_waits_and_resumes_on_a_new_one(
    bootstrap: str, tmp_path: Path, tiny_models: dict[str, Path]
) -> None:
    """kill -9 the only worker of one model mid-job: the other model's job finishes
    meanwhile; the orphaned model's requests wait (GET /v1/models and the batch say
    so); a new worker for it finishes the job, each request exactly once."""
    topics = unique_topics(bootstrap, **SMALL)
    scheduler, scheduler_url = start_scheduler(bootstrap, topics, tmp_path)
    a, b = MODEL_SEEDS
    worker_a = llama_worker(bootstrap, topics, tmp_path, "w-a", a, tiny_models[a])
    worker_b = llama_worker(bootstrap, topics, tmp_path, "w-b1", b, tiny_models[b])
    env = ingest_env(bootstrap, topics, tmp_path / "files", scheduler_url)
    ingest, url = start_ingest_process(env, tmp_path / "ingest.log")
    processes = [scheduler, worker_a, ingest]
    try:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        wait_for(lambda: all(listed(client).get(m, {}).get("live_workers") for m in (a, b)), 60)
        # Large enough that most of it is still waiting when its worker dies.
        batch_b = create_batch(client, tmp_path, [line(f"b-{i}", b, 16) for i in range(B_JOB)])
        outcomes(bootstrap, topics, expect=20, timeout_s=120)  # under way
        worker_b.kill()
        batch_a = create_batch(client, tmp_path, [line(f"a-{i}", a) for i in range(40)])
        wait_for(lambda: client.batches.retrieve(batch_a.id).status == "completed", 120)
        waiting = wait_for(
            lambda: (m := listed(client)[b])["waiting_for_worker"] and m,
            timeout_s=30,
            what="model b listed as waiting for a worker",
        )
        assert waiting["live_workers"] == 0 and sum(waiting["backlog"].values()) > 0
        shown = client.batches.retrieve(batch_b.id)
        assert shown.status == "in_progress"
        assert (shown.model_extra or {})["kbatch"]["waiting_for_worker"] == [b]
        processes.append(llama_worker(bootstrap, topics, tmp_path, "w-b2", b, tiny_models[b]))
        wait_for(lambda: client.batches.retrieve(batch_b.id).status == "completed", 180)
        found = outcomes(bootstrap, topics, expect=B_JOB + 40, timeout_s=60)
    finally:
        for process in reversed(processes):
            assert process.terminate() == 0, process.log()
    ids = found.result_ids()
    assert len(ids) == B_JOB + 40 and max(ids.values()) == 1, "each request exactly once"
    assert found.dead == []
