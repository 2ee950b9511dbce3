"""One real Kafka broker per test session (or the one KBATCH_BOOTSTRAP_SERVERS names)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from services.harness.broker import running_broker

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Bootstrap address of a running broker, started for this session if none is named."""
    home = tmp_path_factory.mktemp("kafka")
    with running_broker(home, jar_cache=REPO_ROOT / ".kbatch" / "jars") as address:
        yield address


@pytest.fixture(scope="session")
def tiny_model() -> Path:
    """The tiny random-weight GGUF, written from seed 0 (cached under .kbatch/models)."""
    from services.models.tiny import ensure_tiny_model

    return ensure_tiny_model(REPO_ROOT / ".kbatch" / "models")


LLAMA_SERVER_KEY = "test-server-key"


@pytest.fixture(scope="session")
def llama_server_url(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`python -m llama_cpp.server` serving the tiny model (bearer LLAMA_SERVER_KEY)."""
    from services.harness.llama_server import llama_server

    log = tmp_path_factory.mktemp("llama-server") / "server.log"
    with llama_server(tiny_model, log, alias="kbatch-tiny", api_key=LLAMA_SERVER_KEY) as url:
        yield url


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """With pytest-xdist (`make test` runs two workers), the chaos tests share one worker,
    one after another: each loads the machine on purpose and times its recovery."""
    for item in items:
        if "chaos" in item.path.parts:
            item.add_marker(pytest.mark.xdist_group("chaos"))
