"""Every confluent-kafka consumer in kbatch, configured from its role.

No consumer commits offsets on its own: the worker commits its group's offsets
inside its transactions, and every other consumer only reads (records, end
offsets, or a group's committed offsets). A role fixes the settings that follow
from that; what one caller needs beyond its role (fetch sizes, statistics, EOF
events, a client id) is passed as an override, and overrides win.
"""

from __future__ import annotations

import uuid
from enum import Enum
from typing import Any

from confluent_kafka import Consumer, Message


class ConsumerRole(Enum):
    """What a consumer is for."""

    MEMBER = "member"
    """The worker: partitions assigned to it, its group's offsets committed with its
    output in a transaction; reads committed records only."""

    READER = "reader"
    """Commits nothing; read_uncommitted: end offsets are high watermarks, and a group's
    committed offsets come back without waiting for open transactions to settle."""

    COMMITTED_READER = "committed_reader"
    """Commits nothing; reads committed records only (end offsets: last stable offsets)."""


_NEVER_COMMITS: dict[str, Any] = {
    "enable.auto.commit": False,
    "enable.auto.offset.store": False,
    # Where an assigned offset no longer exists (deleted by retention): the oldest kept.
    "auto.offset.reset": "earliest",
}

ROLE_DEFAULTS: dict[ConsumerRole, dict[str, Any]] = {
    ConsumerRole.MEMBER: {**_NEVER_COMMITS, "isolation.level": "read_committed"},
    ConsumerRole.READER: {**_NEVER_COMMITS, "isolation.level": "read_uncommitted"},
    ConsumerRole.COMMITTED_READER: {**_NEVER_COMMITS, "isolation.level": "read_committed"},
}


def consumer_config(
    base_config: dict[str, Any],
    role: ConsumerRole,
    group_id: str | None = None,
    /,
    **overrides: Any,
) -> dict[str, Any]:
    """The librdkafka configuration (pure but for a reader's random group id).

    `base_config` carries connection and security settings (`CommonSettings.kafka_config()`);
    the role's defaults go over it, then the group id, then `overrides`. A reader without a
    group id gets a unique one: it commits nothing, the id only names it to the broker.
    """
    if group_id is None:
        if role is ConsumerRole.MEMBER:
            raise ValueError("a group member needs its group's id")
        group_id = f"kbatch-reader-{uuid.uuid4().hex}"
    return {**base_config, **ROLE_DEFAULTS[role], "group.id": group_id, **overrides}


def make_consumer(
    base_config: dict[str, Any],
    role: ConsumerRole,
    group_id: str | None = None,
    /,
    **overrides: Any,
) -> Consumer:
    """A consumer configured by `consumer_config`."""
    return Consumer(consumer_config(base_config, role, group_id, **overrides))


def byte_headers(message: Message) -> dict[str, bytes]:
    """A consumed record's headers by name (the last of a repeated one); valueless left out."""
    pairs: Any = message.headers() or ()
    return {name: value for name, value in pairs if isinstance(value, bytes)}
