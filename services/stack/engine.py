"""The engine a local deployment's workers run (`kbatch up`, `kbatch demo`)."""

from __future__ import annotations

import contextlib
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from services.harness.llama_server import llama_server
from services.inference.gpu import sample_gpus
from services.inference.settings import served_name_of
from services.models.tiny import ensure_tiny_model

console = Console()


@dataclass(frozen=True)
class EngineChoice:
    """The engine the workers run, and what their results will say."""

    name: str
    worker_env: dict[str, str]
    served_model: str


def choose_engine(requested: str | None) -> str:
    """vllm when a GPU and vLLM are both here; otherwise llamacpp on the tiny model."""
    if requested:
        return requested
    gpus = sample_gpus()
    if gpus.available and importlib.util.find_spec("vllm") is not None:
        return "vllm"
    why = gpus.nvml_error or "vLLM is not installed"
    console.print(f"no GPU engine ({why}): using llamacpp", markup=False)
    return "llamacpp"


def prepare_engine(
    name: str,
    root: Path,
    logs: Path,
    stack: contextlib.ExitStack,
    model: str | None = None,
    served_name: str | None = None,
    seed: int = 0,
) -> EngineChoice:
    """Model file (under `root`), server and worker settings for `name`; says plainly what
    will answer. `model` defaults to KBATCH_INFERENCE__MODEL, the tiny model (from `seed`)
    when that is unset too; `served_name` to KBATCH_INFERENCE__SERVED_MODEL_NAME, else
    the model's own name."""
    model = model or os.environ.get("KBATCH_INFERENCE__MODEL")
    own_server = "KBATCH_INFERENCE__OPENAI__BASE_URL" in os.environ
    if name == "vllm" and model is None:
        raise SystemExit("the vllm engine needs KBATCH_INFERENCE__MODEL (a path or hub id)")
    if name == "openai" and own_server and model is None:
        raise SystemExit("set KBATCH_INFERENCE__MODEL to the model name your server serves")
    env: dict[str, str] = {}
    if name in ("llamacpp", "openai") and model is None:
        model = str(ensure_tiny_model(root / "models", seed))
        console.print(
            f"[bold yellow]MODEL: the tiny random-weight GGUF[/] ({model}): real llama.cpp "
            "inference, gibberish answers. Point KBATCH_INFERENCE__MODEL at your own GGUF "
            "for real ones."
        )
    if name == "openai" and not own_server:
        assert model is not None
        alias = served_name or served_name_of(model)
        env["KBATCH_INFERENCE__OPENAI__BASE_URL"] = stack.enter_context(
            llama_server(Path(model), logs / f"llama-server-{alias}.log", alias=alias)
        )
        console.print(
            f"openai engine: llama_cpp.server at {env['KBATCH_INFERENCE__OPENAI__BASE_URL']}"
        )
        model = alias
    if name == "simulated":
        console.print(
            "[bold yellow]ENGINE: simulated[/]: every output says \\[simulated] and "
            "engine=simulated; nothing here is a model's answer."
        )
    if model is not None:
        env["KBATCH_INFERENCE__MODEL"] = model
    served = (
        served_name
        or os.environ.get("KBATCH_INFERENCE__SERVED_MODEL_NAME")
        or served_name_of(model or "kbatch-sim")
    )
    env["KBATCH_INFERENCE__SERVED_MODEL_NAME"] = served
    console.print(f"ENGINE: {name}, serving {served!r}", markup=False)
    return EngineChoice(name, {"KBATCH_INFERENCE__ENGINE": name, **env}, served)
