"""Schemathesis against a running ingest's OpenAPI document: no input gets a 5xx.

Every operation in `schemas/ingest.openapi.json` is called with inputs generated
from the document, valid and invalid (wrong types, missing fields, odd strings
and bodies); the check is that none is answered with a server error. A second
test keeps the document whole: every route the app serves is in it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok
from schemathesis.generation import GenerationMode
from starlette.routing import Route

from services.ingest.app import create_app
from services.ingest.settings import IngestSettings
from tests.integration.test_ingest import Ingest, start_ingest

DOCUMENT = Path(__file__).resolve().parents[2] / "schemas" / "ingest.openapi.json"


@pytest.fixture(scope="module")
def running_ingest(bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ingest]:
    tmp_path = tmp_path_factory.mktemp("openapi")
    service = start_ingest(bootstrap, tmp_path, file_dir=str(tmp_path / "files"))
    yield service
    assert service.process.terminate() == 0, service.process.log()


@pytest.mark.parametrize("mode", list(GenerationMode), ids=lambda m: m.value)
def test_no_generated_input_gets_a_server_error(
    running_ingest: Ingest, mode: GenerationMode
) -> None:
    schema = schemathesis.openapi.from_url(f"{running_ingest.url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations() if isinstance(result, Ok)]
    assert len(operations) == 15
    exercised = 0
    for operation in operations:
        # pytest 9 and schemathesis 4's pytest plugin disagree, so hypothesis runs directly.
        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
        def call(case: schemathesis.Case[Any]) -> None:
            case.call_and_validate(checks=[not_a_server_error], timeout=30)

        try:
            call()
        except Unsatisfiable:
            # Negative mode: an operation whose inputs are all free strings (or none)
            # has no invalid input to generate.
            assert mode is GenerationMode.NEGATIVE, operation.label
            continue
        exercised += 1
    # Positive: all 15; negative: those with typed query parameters or bodies.
    assert exercised >= (15 if mode is GenerationMode.POSITIVE else 4), exercised


def test_the_document_names_every_route_the_app_serves() -> None:
    documented = {
        (path, method.upper())
        for path, operations in json.loads(DOCUMENT.read_text())["paths"].items()
        for method in operations
    }
    served = {
        (route.path, method)
        for route in create_app(IngestSettings()).routes
        if isinstance(route, Route) and route.path != "/openapi.json"
        for method in (route.methods or {"GET"}) - {"HEAD"}
    }
    assert served == documented


def test_bodies_and_ids_the_generator_rarely_reaches_are_refused(running_ingest: Ingest) -> None:
    url = running_ingest.url
    for body in (b"[]", b'"text"', b"\xff\xfe", b'{"input_file_id": 5}'):
        reply = httpx.post(f"{url}/v1/batches", content=body, timeout=10)
        assert reply.status_code == 400, (body, reply.text)
    assert httpx.get(f"{url}/v1/batches?limit=many", timeout=10).status_code == 400
    for file_id in ("a.b", "..", "fil%C3%A9"):
        assert httpx.get(f"{url}/v1/files/{file_id}", timeout=10).status_code == 404, file_id
