"""`kbatch submit | jobs | status | results`: the Batch API and the topics from a shell.

The tenant's token (`--api-key`, or KBATCH_API_KEY as for the openai client) goes to
ingest as `Authorization: Bearer <key>` and nowhere else: it is never printed, and
errors show ingest's answer, not the request's headers.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

import httpx
import typer
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from services.client.results import job_result_lines
from services.settings import CommonSettings

console = Console()
ApiOption = typer.Option("http://127.0.0.1:8080", "--api", envvar="KBATCH_API_URL", help="ingest")
SchedulerOption = typer.Option(
    "http://127.0.0.1:8070", "--scheduler", envvar="KBATCH_SCHEDULER_URL", help="scheduler web"
)
ApiKeyOption = typer.Option(
    None,
    "--api-key",
    envvar="KBATCH_API_KEY",
    show_default=False,
    help="the tenant's token, sent as 'Authorization: Bearer <key>'",
)
TERMINAL = {"completed", "failed", "expired", "cancelled"}


@contextmanager
def _client(api: str, api_key: str | None, timeout_s: float) -> Iterator[httpx.Client]:
    """A client for ingest that carries the tenant's token, when there is one; an ingest
    that does not answer ends the command with one line."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        with httpx.Client(base_url=api, headers=headers, timeout=timeout_s) as client:
            yield client
    except httpx.TransportError as exc:
        _fail(f"ingest at {api} did not answer: {exc}")


def submit(
    file: Path = typer.Argument(..., exists=True, help="OpenAI batch input (.jsonl)"),
    priority: str = typer.Option("normal", help="high, normal or low"),
    endpoint: str = typer.Option("/v1/chat/completions", help="the lines' endpoint"),
    wait: bool = typer.Option(False, "--wait", help="follow progress, then download results"),
    output: Path | None = typer.Option(None, "-o", "--output", help="results file (with --wait)"),
    api: str = ApiOption,
    api_key: str | None = ApiKeyOption,
) -> None:
    """Upload a batch file, create the batch, and with --wait follow it to the end."""
    with _client(api, api_key, 600) as client:
        with file.open("rb") as handle:
            uploaded = _ok(
                client.post("/v1/files", files={"file": handle}, data={"purpose": "batch"})
            )
        batch = _ok(
            client.post(
                "/v1/batches",
                json={
                    "input_file_id": uploaded["id"],
                    "endpoint": endpoint,
                    "completion_window": "24h",
                    "priority": priority,
                },
            )
        )
        console.print(f"batch {batch['id']} created ({priority})")
        if wait:
            follow(client, batch["id"], output or Path(f"{batch['id']}_output.jsonl"))


def follow(client: httpx.Client, batch_id: str, output: Path) -> dict[str, Any]:
    """Poll a batch with a progress bar; download its output and error files when done."""
    with Progress(console=console) as progress:
        task = progress.add_task(batch_id, total=None)
        while True:
            batch = _ok(client.get(f"/v1/batches/{batch_id}"))
            counts = batch["request_counts"]
            progress.update(
                task,
                total=counts["total"] or None,
                completed=counts["completed"] + counts["failed"],
                description=f"{batch_id[:14]}… {batch['status']}",
            )
            if batch["status"] in TERMINAL:
                break
            time.sleep(0.5)
    for key, path in (
        ("output_file_id", output),
        ("error_file_id", output.with_suffix(".errors.jsonl")),
    ):
        if batch.get(key):
            path.write_bytes(client.get(f"/v1/files/{batch[key]}/content").content)
            console.print(f"{key.split('_')[0]} file: {path}")
    errors = (batch.get("errors") or {}).get("data") or []
    console.print(
        f"{batch['status']}: {counts['completed']} completed, {counts['failed']} failed, "
        f"{len(errors)} lines rejected at validation"
    )
    return batch


def jobs(api: str = ApiOption, api_key: str | None = ApiKeyOption) -> None:
    """The batches ingest shows the caller (a tenant: its own), newest first."""
    with _client(api, api_key, 30) as client:
        listing = _ok(client.get("/v1/batches", params={"limit": 100}))
    table = Table("batch", "status", "priority", "total", "completed", "failed", "created")
    for batch in listing["data"]:
        counts = batch["request_counts"]
        created = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(batch["created_at"]))
        table.add_row(
            batch["id"],
            batch["status"],
            batch["kbatch"]["priority"],
            str(counts["total"]),
            str(counts["completed"]),
            str(counts["failed"]),
            created,
        )
    console.print(table)


def status(api: str = ApiOption, scheduler: str = SchedulerOption) -> None:
    """Health of ingest and the scheduler, the fleet and the assignment (the scheduler's
    views with the ops token, KBATCH_OPS_TOKEN, when one is set)."""
    for name, url in (("ingest", f"{api}/healthz"), ("scheduler", f"{scheduler}/healthz")):
        try:
            reply = httpx.get(url, timeout=5)
            console.print(f"{name}: {reply.status_code} {reply.text.strip()}")
        except httpx.HTTPError as exc:
            console.print(f"{name}: unreachable ({exc})")
    headers = CommonSettings().ops_headers()
    try:
        with httpx.Client(base_url=scheduler, headers=headers, timeout=5) as client:
            workers = client.get("/workers").raise_for_status().json()["workers"]
            models = client.get("/models").raise_for_status().json()["models"]
    except httpx.HTTPStatusError as exc:
        console.print(f"scheduler views: {exc.response.status_code} {exc.response.text.strip()}")
        return
    except httpx.HTTPError:
        return
    table = Table("worker", "pool", "alive", "healthy", "engine", "models", "owned partitions")
    for worker in workers:
        owned = Counter(p["model"] for p in worker.get("owned_partitions") or [])
        table.add_row(
            worker["worker_id"],
            worker["pool"],
            str(worker["alive"]),
            str(worker["healthy"]),
            worker["engine"],
            ", ".join(worker.get("served_models") or []),
            ", ".join(f"{m}: {n}" for m, n in sorted(owned.items())),
        )
    console.print(table)
    per_model = Table(
        "model", "workers", "backlog high/normal/low", "partitions owned", "waiting", "note"
    )
    for row in models:
        lanes = row["lanes"]
        per_model.add_row(
            row["model"],
            str(len(row["workers"])),
            "/".join(str(lanes[lane]["backlog"]) for lane in ("high", "normal", "low")),
            str(sum(lane["partitions_assigned"] for lane in lanes.values())),
            str(sum(lane["partitions_waiting"] for lane in lanes.values())),
            "waits for a worker serving it" if row["waiting_for_worker"] else "",
        )
    console.print(per_model)


def results(
    job: str = typer.Argument(..., help="job (batch) id"),
    output: Path | None = typer.Option(None, "-o", "--output", help="file; default stdout"),
    api: str = ApiOption,
    api_key: str | None = ApiKeyOption,
) -> None:
    """A job's results as OpenAI batch output lines: with a key, the ended batch's output
    and error files from ingest, as that tenant; without, the committed results read
    straight from the results topic (an operator's view, past any tenant)."""
    if api_key:
        lines: Iterator[str] = _batch_result_lines(api, api_key, job)
    else:
        settings = CommonSettings()
        lines = job_result_lines(settings.kafka_config(), settings.topics.results, job)
    out = output.open("w") if output else sys.stdout
    count = 0
    for line in lines:
        out.write(line + "\n")
        count += 1
    if output:
        out.close()
        console.print(f"{count} results written to {output}")


def _batch_result_lines(api: str, api_key: str, batch_id: str) -> Iterator[str]:
    """The lines of an ended batch's output file, then of its error file. The batch is
    checked now; the files are read as the lines are taken."""
    with _client(api, api_key, 30) as client:
        batch = _ok(client.get(f"/v1/batches/{batch_id}"))
    if batch["status"] not in TERMINAL:
        _fail(f"batch {batch_id} is {batch['status']}: its output and error files come at its end")
    file_ids = [batch[key] for key in ("output_file_id", "error_file_id") if batch.get(key)]
    return _file_lines(api, api_key, file_ids)


def _file_lines(api: str, api_key: str, file_ids: list[str]) -> Iterator[str]:
    with _client(api, api_key, 600) as client:
        for file_id in file_ids:
            with client.stream("GET", f"/v1/files/{file_id}/content") as reply:
                if reply.status_code >= 400:
                    reply.read()
                    _ok(reply)  # ends the command with ingest's reason
                yield from reply.iter_lines()


def _ok(reply: httpx.Response) -> dict[str, Any]:
    """The reply's JSON body; an error status ends the command with ingest's reason."""
    if reply.status_code < 400:
        body: dict[str, Any] = reply.json()
        return body
    request = reply.request
    message = f"{request.method} {request.url.path}: {reply.status_code} {reply.reason_phrase}"
    try:
        message += f": {reply.json()['error']['message']}"
    except (ValueError, KeyError, TypeError):
        message += f": {reply.text[:500]}"
    if reply.status_code == 401:
        message += " (give the tenant's token with --api-key or KBATCH_API_KEY)"
    elif reply.status_code == 404:
        message += " (or it belongs to another tenant than the key's)"
    _fail(message)


def _fail(message: str) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(1)
