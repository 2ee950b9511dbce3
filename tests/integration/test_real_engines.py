"""A real model through the whole pipeline: the tiny GGUF on the llamacpp engine and behind
llama_cpp.server on the openai engine, against the real broker."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import llama_cpp
import openai
import pytest

from services.codec import REQUEST, codec
from services.harness.kafka import read_topic, unique_topics, wait_for
from services.harness.pipeline import (
    ingest_env,
    outcomes,
    publish,
    publish_to,
    request_record,
    start_follower,
    start_ingest_process,
    start_scheduler,
    start_worker,
)
from tests.conftest import LLAMA_SERVER_KEY
from tests.integration.test_batch_api import create_batch

pytestmark = pytest.mark.integration

TINY = "kbatch-tiny"
SMALL = {"high_partitions": 1, "normal_partitions": 2, "low_partitions": 1}


def tiny_record(job: str, index: int, content: str | None = None, **body: Any) -> dict[str, Any]:
    record = request_record(job, index, temperature=0.0, **body)
    record["model"] = TINY
    if content is not None:
        record["body"]["messages"] = [{"role": "user", "content": content}]
    return record


def greedy_answer(model: llama_cpp.Llama, messages: list[dict[str, Any]], max_tokens: int) -> str:
    """What llama-cpp-python itself answers at temperature 0."""
    answer: Any = model.create_chat_completion(
        messages=messages,  # type: ignore[arg-type]
        temperature=0.0,
        top_p=1.0,
        max_tokens=max_tokens,
    )
    return str(answer["choices"][0]["message"]["content"])


def chat_line(custom_id: str, content: str, max_tokens: int = 8) -> str:
    return json.dumps(
        {
            "custom_id": custom_id,
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {
                "model": TINY,
                "messages": [{"role": "user", "content": content}],
                "max_tokens": max_tokens,
                "temperature": 0,
            },
        }
    )


def test_a_batch_runs_on_the_llamacpp_engine_through_every_service(
    bootstrap: str, tmp_path: Path, tiny_model: Path
) -> None:
    topics = unique_topics(bootstrap, **SMALL)
    scheduler, scheduler_url = start_scheduler(bootstrap, topics, tmp_path)
    worker, _ = start_follower(
        bootstrap, topics, tmp_path, "llama-w1", "dedicated", 4,
        ENGINE="llamacpp", MODEL=str(tiny_model),
    )  # fmt: skip
    env = ingest_env(bootstrap, topics, tmp_path / "files", scheduler_url)
    ingest, url = start_ingest_process(env, tmp_path / "ingest.log")
    processes = [ingest, worker, scheduler]
    try:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        # Ingest admits the model because a live worker declares it, not from its settings.
        wait_for(lambda: TINY in {m.id for m in client.models.list()}, timeout_s=30)
        prompts = {f"c{i}": f"Candidate {i}: héllo 🚀 Kafka" for i in range(12)}
        lines = [chat_line(cid, text) for cid, text in prompts.items()]
        lines.append(chat_line("too-long", "z" * 2000))
        batch = create_batch(client, tmp_path, lines)
        wait_for(lambda: client.batches.retrieve(batch.id).status == "completed", timeout_s=120)
        done = client.batches.retrieve(batch.id)
        assert done.request_counts is not None
        assert (done.request_counts.completed, done.request_counts.failed) == (12, 1)
        assert done.output_file_id and done.error_file_id
        output = [
            json.loads(x) for x in client.files.content(done.output_file_id).text.splitlines()
        ]
        errors = [json.loads(x) for x in client.files.content(done.error_file_id).text.splitlines()]
    finally:
        for process in processes:
            assert process.terminate() == 0, process.log()

    direct = llama_cpp.Llama(model_path=str(tiny_model), n_ctx=0, verbose=False)
    try:
        for line in output:
            body = line["response"]["body"]
            assert body["model"] == TINY and body["kbatch"]["engine"] == "llamacpp"
            messages = [{"role": "user", "content": prompts[line["custom_id"]]}]
            assert body["choices"][0]["message"]["content"] == greedy_answer(direct, messages, 8)
    finally:
        direct.close()
    assert sorted(line["custom_id"] for line in output) == sorted(prompts)
    [refused] = errors
    assert refused["custom_id"] == "too-long"
    assert refused["error"]["code"] == "InvalidRequestError"
    assert "exceed context window of 512" in refused["error"]["message"]


def test_the_openai_engine_serves_through_a_real_openai_compatible_server(
    bootstrap: str, tmp_path: Path, llama_server_url: str
) -> None:
    topics = unique_topics(bootstrap, **SMALL)
    records = [tiny_record("job-oa", i, max_tokens=6) for i in range(20)]
    too_long = tiny_record("job-oa", 98, content="q" * 2000)
    other_model = {**tiny_record("job-oa", 99), "model": "some-other-model"}
    publish(bootstrap, topics, [*records, too_long])
    # Routing never puts a model's request in another's topic; one put there by hand
    # meets the worker's safety net.
    every = range(topics.lane_layout().total)
    publish_to(bootstrap, topics, [], every, [codec(REQUEST).encode(other_model)], TINY)
    worker, url = start_worker(
        bootstrap, topics, tmp_path, "openai-w1", "0-3",
        ENGINE="openai", MODEL=TINY,
        OPENAI__BASE_URL=llama_server_url, OPENAI__API_KEY=LLAMA_SERVER_KEY,
        OPENAI__MAX_CONCURRENCY="4",
    )  # fmt: skip
    try:
        found = outcomes(bootstrap, topics, expect=22)
        misrouted = httpx.get(f"{url}/metrics", timeout=10).text
    finally:
        assert worker.terminate() == 0, worker.log()

    assert found.result_ids() == {r["request_id"]: 1 for r in records}
    # The anchor is the server itself, asked directly with the official client: kbatch
    # forwards the request, it does not re-sample (llama_cpp.server's own defaults, such
    # as repeat_penalty 1.1, make its answers differ from the bare binding's).
    server = openai.OpenAI(base_url=llama_server_url, api_key=LLAMA_SERVER_KEY, max_retries=0)
    for result in found.results:
        assert (result["engine"], result["model"]) == ("openai", TINY)
        index = int(result["custom_id"].rsplit("-", 1)[1])
        direct = server.chat.completions.create(
            model=TINY,
            messages=records[index]["body"]["messages"],
            temperature=0.0,
            max_tokens=6,
        )
        assert result["output"]["text"] == direct.choices[0].message.content
        assert direct.usage is not None
        assert result["usage"]["prompt_tokens"] == direct.usage.prompt_tokens
    reasons = {letter["custom_id"]: letter for letter, _ in found.dead}
    assert set(reasons) == {"job-oa-98", "job-oa-99"}
    assert "maximum context length" in reasons["job-oa-98"]["error_message"]
    assert reasons["job-oa-99"]["stage"] == "model_not_served"
    assert reasons["job-oa-99"]["error_class"] == "ModelNotServedError"
    assert 'kbatch_inference_misrouted_requests_total{model="some-other-model"} 1.0' in misrouted


def test_kill_9_of_a_llamacpp_worker_loses_and_repeats_nothing(
    bootstrap: str, tmp_path: Path, tiny_model: Path
) -> None:
    topics = unique_topics(bootstrap, **SMALL)
    # Long answers (~2 ms a token here): the kill at 60 results lands well before 240.
    records = [tiny_record("job-k9", i, max_tokens=160) for i in range(240)]
    publish(bootstrap, topics, records)
    engine = {"ENGINE": "llamacpp", "MODEL": str(tiny_model)}
    first, _ = start_worker(bootstrap, topics, tmp_path, "llama-a", "0-3", **engine)
    try:
        wait_for(lambda: len(read_topic(bootstrap, topics.results, timeout_s=5)) >= 60, 120)
    finally:
        first.kill()
    committed_before = len(read_topic(bootstrap, topics.results, timeout_s=5))
    assert committed_before < len(records), "killed too late to test anything"
    second, _ = start_worker(bootstrap, topics, tmp_path, "llama-b", "0-3", **engine)
    try:
        found = outcomes(bootstrap, topics, expect=len(records), timeout_s=180)
    finally:
        assert second.terminate() == 0, second.log()
    assert found.dead == []
    assert found.result_ids() == {r["request_id"]: 1 for r in records}
    assert {r["worker_id"] for r in found.results} == {"llama-a", "llama-b"}
