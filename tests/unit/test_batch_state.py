"""Batch states (pure): validation, progress, cancellation, expiry."""

from __future__ import annotations

from typing import Any

import pytest

from services.ingest import batch_state
from services.ingest.batch_state import Progress


def fresh(window: str = "24h") -> dict[str, Any]:
    batch = batch_state.new_batch(
        "batch_1", "file-1", "/v1/chat/completions", window, None, "high", 1000
    )
    return batch_state.validated(batch, accepted=10, errors=[], now_s=1001)


def test_windows_parse_and_bad_ones_are_refused() -> None:
    assert batch_state.window_seconds("24h") == 86400
    assert batch_state.window_seconds("2d") == 172800
    for bad in ("0h", "24", "1w", ""):
        with pytest.raises(ValueError, match="completion_window"):
            batch_state.window_seconds(bad)


def test_nothing_accepted_fails_the_batch_with_its_errors() -> None:
    batch = batch_state.new_batch("b", "f", "/v1/embeddings", "24h", {"k": "v"}, "low", 5)
    failed = batch_state.validated(batch, 0, [{"code": "invalid_json", "line": 1}], 6)
    assert failed["status"] == "failed" and failed["failed_at"] == 6
    assert failed["errors"]["data"][0]["line"] == 1


def test_progress_runs_through_finalizing_to_completed() -> None:
    batch = fresh()
    running = batch_state.advance(batch, Progress(10, 4, 1, 3), 1002)
    assert running["status"] == "in_progress" and running["request_counts"]["completed"] == 4
    finalizing = batch_state.advance(running, Progress(10, 9, 1, 7), 1003)
    assert finalizing["status"] == "finalizing" and finalizing["finalizing_at"] == 1003
    done = batch_state.advance(finalizing, Progress(10, 9, 1, 10), 1004)
    assert (done["status"], done["finalizing_at"], done["completed_at"]) == (
        "completed",
        1003,
        1004,
    )
    assert batch_state.advance(done, Progress(10, 0, 0, 0), 1005) == done  # terminal stays


def test_cancelled_and_expired_end_once_every_line_is_collected() -> None:
    cancelling = batch_state.cancel_requested(fresh(), 1002)
    assert cancelling["status"] == "cancelling"
    assert batch_state.advance(cancelling, Progress(10, 3, 0, 3), 1003)["status"] == "cancelling"
    assert batch_state.advance(cancelling, Progress(10, 3, 7, 10), 1004)["status"] == "cancelled"
    late = fresh("1h")
    assert not batch_state.expired_now(late, 1001 + 3599 - 1)
    assert batch_state.expired_now(late, 1000 + 3600)
    expiring = {**batch_state.cancel_requested(late, 4600), "expired_by_window": True}
    ended = batch_state.advance(expiring, Progress(10, 2, 8, 10), 4601)
    assert (ended["status"], ended["expired_at"]) == ("expired", 4601)
    assert "expired_by_window" not in batch_state.public(ended)
