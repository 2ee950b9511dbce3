"""A broker to run against: the one KBATCH_BOOTSTRAP_SERVERS names, else a local one."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from services.harness.ports import free_port
from services.kafka import local_broker


@contextmanager
def running_broker(home: Path, jar_cache: Path | None = None) -> Iterator[str]:
    """Yields a bootstrap address; a broker started here (state under `home`, jars cached
    in `jar_cache`) is stopped when the block ends."""
    named = os.environ.get("KBATCH_BOOTSTRAP_SERVERS")
    if named:
        yield named
        return
    layout = local_broker.BrokerLayout(
        home, port=free_port(), controller_port=free_port(), jar_cache=jar_cache
    )
    address = local_broker.up(layout)
    try:
        yield address
    finally:
        local_broker.down(layout)
