"""`kbatch submit | jobs | status | results`: the Batch API and the topics from a shell."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

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
TERMINAL = {"completed", "failed", "expired", "cancelled"}


def submit(
    file: Path = typer.Argument(..., exists=True, help="OpenAI batch input (.jsonl)"),
    priority: str = typer.Option("normal", help="high, normal or low"),
    endpoint: str = typer.Option("/v1/chat/completions", help="the lines' endpoint"),
    wait: bool = typer.Option(False, "--wait", help="follow progress, then download results"),
    output: Path | None = typer.Option(None, "-o", "--output", help="results file (with --wait)"),
    api: str = ApiOption,
) -> None:
    """Upload a batch file, create the batch, and with --wait follow it to the end."""
    with httpx.Client(base_url=api, timeout=600) as client:
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


def jobs(api: str = ApiOption) -> None:
    """The batches ingest knows, newest first."""
    listing = _ok(httpx.get(f"{api}/v1/batches", params={"limit": 100}, timeout=30))
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
    """Health of ingest and the scheduler, the fleet and the assignment."""
    for name, url in (("ingest", f"{api}/healthz"), ("scheduler", f"{scheduler}/healthz")):
        try:
            reply = httpx.get(url, timeout=5)
            console.print(f"{name}: {reply.status_code} {reply.text.strip()}")
        except httpx.HTTPError as exc:
            console.print(f"{name}: unreachable ({exc})")
    try:
        workers = httpx.get(f"{scheduler}/workers", timeout=5).json()["workers"]
        waiting = httpx.get(f"{scheduler}/assignments", timeout=5).json()["waiting"]
    except httpx.HTTPError:
        return
    table = Table("worker", "pool", "alive", "healthy", "engine", "owned partitions")
    for worker in workers:
        table.add_row(
            worker["worker_id"],
            worker["pool"],
            str(worker["alive"]),
            str(worker["healthy"]),
            worker["engine"],
            ",".join(map(str, worker["owned"])),
        )
    console.print(table)
    console.print(f"partitions waiting for capacity: {waiting or 'none'}")


def results(
    job: str = typer.Argument(..., help="job (batch) id"),
    output: Path | None = typer.Option(None, "-o", "--output", help="file; default stdout"),
) -> None:
    """A job's committed results as OpenAI batch output lines, read from the results topic."""
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


def _ok(reply: httpx.Response) -> dict[str, Any]:
    if reply.status_code >= 400:
        raise typer.BadParameter(f"{reply.request.url}: {reply.status_code} {reply.text}")
    body: dict[str, Any] = reply.json()
    return body
