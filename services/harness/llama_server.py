"""`python -m llama_cpp.server` on a GGUF file: a real OpenAI-compatible server."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from services.harness.ports import free_port


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
            _wait_until_serving(process, f"{base_url}/models", api_key, log_path, timeout_s)
            yield base_url
        finally:
            process.terminate()
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _wait_until_serving(
    process: subprocess.Popen[bytes],
    url: str,
    api_key: str | None,
    log_path: Path,
    timeout_s: float,
) -> None:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"llama_cpp.server exited {process.returncode}: {log_path.read_text()[-2000:]}"
            )
        try:
            if httpx.get(url, headers=headers, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"llama_cpp.server not serving after {timeout_s}s (log: {log_path})")
