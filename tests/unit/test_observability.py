"""Dashboards and alert rules are generated, current, and name only exported metrics."""

from __future__ import annotations

import re

from prometheus_client import REGISTRY

import services.build_info
import services.inference.metrics
import services.ingest.metrics
import services.kafka.stats
import services.scheduler.metrics
from services.observability.catalog import all_exprs
from services.observability.render import rendered

LOADED = (
    services.build_info,
    services.inference.metrics,
    services.ingest.metrics,
    services.kafka.stats,
    services.scheduler.metrics,
)
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "info": ("_info",)}


def exported_names() -> set[str]:
    names: set[str] = set()
    for family in REGISTRY.collect():
        names.add(family.name)
        names.update(family.name + s for s in SUFFIXES.get(family.type, ()))
    return names


def test_generated_files_are_current() -> None:
    stale = [
        str(p) for p, content in rendered().items() if not p.is_file() or p.read_text() != content
    ]
    assert stale == [], f"run python -m services.observability.render: {stale}"


def test_every_metric_a_query_names_is_exported() -> None:
    assert len(LOADED) == 5
    exported = exported_names()
    named = {m for expr in all_exprs() for m in re.findall(r"\bkbatch_[a-z_]+\b", expr)}
    assert named, "no kbatch metric found in any expression"
    assert sorted(named - exported) == []
