"""`kbatch`: one command line for the broker, topics and every service."""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path

import typer
from confluent_kafka.admin import AdminClient

from services.bench import chaos as bench_chaos
from services.bench import engines as bench_engines
from services.bench import failover as bench_failover
from services.bench import ingest as bench_ingest
from services.bench import metrics_plot as bench_metrics_plot
from services.bench import models as bench_models
from services.bench import pipeline as bench_pipeline
from services.bench import prefix as bench_prefix
from services.bench import priority as bench_priority
from services.bench import scale as bench_scale
from services.client import cli as client_cli
from services.dlq.cli import dlq_app
from services.kafka import local_broker
from services.kafka.topics import describe_topics, ensure_topics, topic_catalog
from services.settings import CommonSettings
from services.stack import cli as stack_cli

app = typer.Typer(help="kbatch: batch LLM inference over Apache Kafka", no_args_is_help=True)
kafka_app = typer.Typer(help="A local single-node KRaft broker from Maven Central jars")
topics_app = typer.Typer(help="Create and inspect kbatch's topics")
model_app = typer.Typer(
    help="The model registry (which models requests may name) and model files kbatch "
    "writes itself (nothing is downloaded)"
)
bench_app = typer.Typer(help="Benchmarks, each against an anchor measured in the same run; JSON")
app.add_typer(kafka_app, name="kafka")
app.add_typer(model_app, name="model")
app.add_typer(bench_app, name="bench")
bench_app.command("engines")(bench_engines.main)
bench_app.command("ingest")(bench_ingest.main)
bench_app.command("pipeline")(bench_pipeline.main)
bench_app.command("scale")(bench_scale.main)
bench_app.command("failover")(bench_failover.main)
bench_app.command("priority")(bench_priority.main)
bench_app.command("models")(bench_models.main)
bench_app.command("prefix")(bench_prefix.main)
bench_app.command("chaos")(bench_chaos.main)
bench_app.command("metrics-plot")(bench_metrics_plot.main)
app.add_typer(topics_app, name="topics")
app.add_typer(dlq_app, name="dlq")
app.command("submit")(client_cli.submit)
app.command("jobs")(client_cli.jobs)
app.command("status")(client_cli.status)
app.command("results")(client_cli.results)
app.command("up")(stack_cli.up)
app.command("down")(stack_cli.down)
app.command("ps")(stack_cli.ps)


def _layout(home: Path | None, port: int) -> local_broker.BrokerLayout:
    home = home or Path(os.environ.get("KBATCH_KAFKA_HOME", ".kbatch/kafka"))
    return local_broker.BrokerLayout(home.resolve(), port=port, controller_port=port + 1)


HomeOption = typer.Option(
    None, help="state directory (default $KBATCH_KAFKA_HOME or .kbatch/kafka)"
)
PortOption = typer.Option(9092, help="client port; the controller uses port+1")


@kafka_app.command("up")
def kafka_up(home: Path | None = HomeOption, port: int = PortOption) -> None:
    """Fetch jars (cached), format storage, start the broker; return once it answers."""
    bootstrap = local_broker.up(_layout(home, port))
    typer.echo(f"kafka up at {bootstrap}")


@kafka_app.command("down")
def kafka_down(home: Path | None = HomeOption, port: int = PortOption) -> None:
    """Stop the broker cleanly."""
    stopped = local_broker.down(_layout(home, port))
    typer.echo("kafka stopped" if stopped else "kafka was not running")


@kafka_app.command("status")
def kafka_status(home: Path | None = HomeOption, port: int = PortOption) -> None:
    """Say whether the broker runs and answers; exit 1 if not."""
    layout = _layout(home, port)
    pid = local_broker.running_pid(layout)
    answering = local_broker.answers_metadata(layout.bootstrap)
    typer.echo(json.dumps({"pid": pid, "bootstrap": layout.bootstrap, "answering": answering}))
    if not answering:
        raise typer.Exit(1)


def _admin(settings: CommonSettings) -> AdminClient:
    return AdminClient(settings.kafka_config())


@topics_app.command("create")
def topics_create() -> None:
    """Create every kbatch topic (idempotent)."""
    settings = CommonSettings()
    outcome = ensure_topics(
        _admin(settings), topic_catalog(settings.topics), settings.topics.replication_factor
    )
    for name, state in outcome.items():
        typer.echo(f"{name}: {state}")


@topics_app.command("describe")
def topics_describe() -> None:
    """Show each catalog topic with its partitions on the broker."""
    settings = CommonSettings()
    for row in describe_topics(_admin(settings), topic_catalog(settings.topics)):
        typer.echo(json.dumps(row))


@model_app.command("register")
def model_register(
    names: list[str] = typer.Argument(..., help="model ids, as requests name them"),
) -> None:
    """Register models: each gets its requests topic, and ingest admits its lines at once
    (they wait in Kafka until a worker serving the model appears)."""
    from services.models.registry import register_models

    settings = CommonSettings()
    for entry in register_models(settings.kafka_config(), settings.topics, names, "operator"):
        typer.echo(json.dumps({"model": entry.model, "topic": entry.topic}))


@model_app.command("list")
def model_list() -> None:
    """Every registered model and its requests topic, one JSON object a line."""
    from services.kafka.compacted import read_latest
    from services.models.registry import ModelEntry

    settings = CommonSettings()
    latest = read_latest(settings.kafka_config(), settings.topics.models, ModelEntry.decode)
    for entry in sorted(latest.values(), key=lambda e: e.model):
        typer.echo(json.dumps(asdict(entry)))


@model_app.command("tiny")
def model_tiny(
    path: Path = typer.Argument(..., help="where to write the GGUF file"),
    seed: int = typer.Option(0, help="the same seed writes the same bytes"),
    context: int = typer.Option(512, min=16, help="context length in tokens (bytes of text)"),
) -> None:
    """Write the tiny random-weight Llama GGUF (real inference, gibberish answers)."""
    from services.models.tiny import TinyShape, write_tiny_model

    written = write_tiny_model(path, seed, TinyShape(context=context))
    size = written.stat().st_size
    typer.echo(f"wrote {written} ({size} bytes, seed {seed}, context {context})")


@app.command("ingest")
def ingest() -> None:
    """Run the ingest HTTP service (settings from KBATCH_* env vars)."""
    from services.ingest.main import run

    run()


@app.command("inference")
def inference() -> None:
    """Run an inference worker (KBATCH_INFERENCE__ENGINE=vllm|llamacpp|openai|simulated)."""
    from services.inference.main import run

    run()


@app.command("scheduler")
def scheduler() -> None:
    """Run the scheduler: assignments by priority, failover, job progress (faust app)."""
    from services.scheduler.main import run

    run()


@app.command("demo")
def demo(
    engine: str | None = typer.Option(
        None,
        help="simulated|llamacpp|vllm|openai; default: vllm with a GPU and vLLM, else "
        "llamacpp on the tiny model",
    ),
) -> None:
    """Broker, topics, scheduler, ingest and two workers; a sample job end to end."""
    from services.demo import run_demo

    if engine not in (None, "simulated", "llamacpp", "vllm", "openai"):
        raise typer.BadParameter(f"unknown engine {engine!r}", param_hint="--engine")
    run_demo(engine)
