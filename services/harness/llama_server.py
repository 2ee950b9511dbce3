"""`python -m llama_cpp.server` on a GGUF file: a real OpenAI-compatible server."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from services.harness.ports import free_port
from services.harness.processes import wait_serving


@contextlib.contextmanager
def llama_server(
    model: Path,
    log_path: Path,
    alias: str,
    api_key: str | None = None,
    n_ctx: int = 0,
    timeout_s: float = 120,
) -> Iterator[str]:
    """Serve `model` as `alias` until the block ends; yields the API root (…/v1)."""
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "llama_cpp.server",
        "--model",
        str(model),
        "--model_alias",
        alias,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--n_ctx",
        str(n_ctx),
        *(["--api_key", api_key] if api_key else []),
    ]
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        try:
            base_url = f"http://127.0.0.1:{port}/v1"
            headers = {"Authorization": f"Bearer {api_key}"} if api_key else None
            wait_serving(
                f"{base_url}/models",
                timeout_s,
                process,
                headers,
                describe=lambda: (
                    f"llama_cpp.server (log {log_path}): {log_path.read_text()[-2000:]}"
                ),
            )
            yield base_url
        finally:
            process.terminate()
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
