"""One real Kafka broker per test session (or the one KBATCH_BOOTSTRAP_SERVERS names)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.kafka import local_broker
from tests.kafka_helpers import free_port

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Bootstrap address of a running broker, started for this session if none is named."""
    named = os.environ.get("KBATCH_BOOTSTRAP_SERVERS")
    if named:
        yield named
        return
    port = free_port()
    controller_port = free_port()
    layout = local_broker.BrokerLayout(
        home=tmp_path_factory.mktemp("kafka"),
        port=port,
        controller_port=controller_port,
        jar_cache=REPO_ROOT / ".kbatch" / "jars",
    )
    address = local_broker.up(layout)
    try:
        yield address
    finally:
        local_broker.down(layout)
