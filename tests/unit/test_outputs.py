"""What a worker writes for a request that never ran, and which model a result names."""

from __future__ import annotations

import pytest

from services.codec import results_codec
from services.harness.pipeline import request_record
from services.inference.engines.simulated import SimulatedEngine
from services.inference.outputs import Origin, cancelled_record
from services.inference.settings import SimulatedEngineOptions

ENGINE = SimulatedEngine(SimulatedEngineOptions(), ("model-a", "model-b"))


@pytest.mark.parametrize(
    ("reason", "code"), [("cancelled", "batch_cancelled"), ("expired", "batch_expired")]
)
def test_a_request_its_batch_ended_before_is_recorded_with_openais_code(
    reason: str, code: str
) -> None:
    request = {**request_record("job", 3), "model": "model-b"}
    origin = Origin("t.requests.model-b", 1, 7, b"k", b"v")
    record = cancelled_record(
        "t.results", request, ENGINE, "w", origin, reason=reason, results_format="json"
    )
    result = results_codec().decode(record.value)
    assert result["error"]["code"] == code
    # A worker serving several models names the request's own on its result.
    assert result["model"] == "model-b"
    assert dict(record.headers)["kbatch-model"] == b"model-b"
