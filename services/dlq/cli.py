"""`kbatch dlq list | show | replay`."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime

import typer
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from services.dlq.records import Filters, read_dead_letters
from services.dlq.replay import Replayer, plan, replayed_coordinates
from services.settings import CommonSettings

dlq_app = typer.Typer(help="Inspect and replay dead letters", no_args_is_help=True)
console = Console()

JobOption = typer.Option(None, "--job", help="only this job")
ClassOption = typer.Option(None, "--error-class", help="only this error class")
SinceOption = typer.Option(None, "--since", help="only failures at or after (ISO time)")


def _filters(job: str | None, error_class: str | None, since: str | None) -> Filters:
    since_ms = int(datetime.fromisoformat(since).timestamp() * 1000) if since else None
    return Filters(job, error_class, since_ms)


def _when(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")


@dlq_app.command("list")
def list_dead_letters(
    job: str | None = JobOption,
    error_class: str | None = ClassOption,
    since: str | None = SinceOption,
) -> None:
    """A table of dead letters: when, job, custom_id, stage, error."""
    settings = CommonSettings()
    wanted = _filters(job, error_class, since)
    table = Table("coordinate", "when (UTC)", "job", "custom_id", "stage", "error", "replays")
    for dead in read_dead_letters(settings.kafka_config(), settings.topics.dlq):
        if wanted.match(dead):
            record = dead.record
            error = f"{record['error_class']}: {record['error_message'][:60]}"
            table.add_row(
                dead.coordinate,
                _when(record["failed_at_ms"]),
                record["job_id"] or "-",
                record["custom_id"] or "-",
                record["stage"],
                error,
                str(dead.replays),
            )
    console.print(table)


@dlq_app.command("show")
def show(
    coordinate: str = typer.Argument(help="topic:partition:offset, as `dlq list` prints"),
) -> None:
    """One dead letter, fields and headers decoded."""
    settings = CommonSettings()
    for dead in read_dead_letters(settings.kafka_config(), settings.topics.dlq):
        if dead.coordinate == coordinate:
            record = dict(dead.record)
            for name in ("original_key", "original_value"):
                if record[name] is not None:
                    raw: bytes = record[name]
                    record[name] = base64.b64encode(raw).decode() + " (base64)"
            print(json.dumps({"record": record, "headers": dead.headers}, indent=2))
            return
    raise typer.BadParameter(f"no dead letter at {coordinate}")


@dlq_app.command("replay")
def replay(
    job: str | None = JobOption,
    error_class: str | None = ClassOption,
    since: str | None = SinceOption,
    dry_run: bool = typer.Option(False, "--dry-run", help="say what would be replayed"),
    rate: float | None = typer.Option(None, "--rate", help="records per second at most"),
    max_replays: int = typer.Option(3, "--max-replays", help="refuse records replayed this often"),
    limit: int | None = typer.Option(None, "--limit", help="replay at most this many now"),
) -> None:
    """Republish dead letters' original bytes to their original partitions, exactly once."""
    settings = CommonSettings()
    topics = settings.topics
    wanted = _filters(job, error_class, since)
    matching = [
        d for d in read_dead_letters(settings.kafka_config(), topics.dlq) if wanted.match(d)
    ]
    done_before = replayed_coordinates(settings.kafka_config(), topics.dlq_replayed)
    report = plan(matching, done_before, max_replays)
    todo = report.replayed[:limit] if limit is not None else report.replayed
    for refusal in report.refused:
        console.print(f"refused {refusal.dead.coordinate}: {refusal.reason}")
    console.print(
        f"{len(report.replayed)} to replay ({len(todo)} now), {len(report.refused)} refused, "
        f"{report.already} replayed before"
    )
    if dry_run or not todo:
        return
    replayer = Replayer(
        settings.kafka_config(),
        topics,
        topics.dlq_replayed,
        f"{topics.prefix}.dlq-replay",
    )
    with Progress(console=console) as progress:
        task = progress.add_task("replaying", total=len(todo))
        replayer.run(todo, rate, on_progress=lambda n: progress.advance(task, n))
    console.print(f"replayed {len(todo)}")
