"""Batch states (pure): validation, progress, cancellation, expiry, and `step`."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.ingest.batches import batch_state
from services.ingest.batches.batch_state import TERMINAL, Progress

# Every change of status `step` or a cancel may make; staying is always allowed.
MOVES = {
    ("in_progress", "finalizing"),
    ("in_progress", "completed"),
    ("in_progress", "cancelling"),
    ("finalizing", "completed"),
    ("finalizing", "cancelling"),
    ("cancelling", "cancelled"),
    ("cancelling", "expired"),
}
STAMPS = [f"{status}_at" for status in ("in_progress", "finalizing", "cancelling", *TERMINAL)]


def fresh(window: str = "24h", accepted: int = 10) -> dict[str, Any]:
    batch = batch_state.new_batch(
        "batch_1", "file-1", "/v1/chat/completions", window, None, "high", 1000
    )
    return batch_state.validated(batch, accepted=accepted, errors=[], now_s=1001)


def moved(batch: dict[str, Any], progress: Progress, now_s: int) -> dict[str, Any]:
    """The batch after `step` (itself when the step changes nothing)."""
    return batch_state.step(batch, progress, now_s) or batch


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
    assert batch_state.step(failed, Progress(0, 0, 0, 0), 7) is None


def test_progress_runs_through_finalizing_to_completed() -> None:
    batch = fresh()
    running = moved(batch, Progress(4, 1, 3, 0), 1002)
    assert running["status"] == "in_progress" and running["request_counts"]["completed"] == 4
    finalizing = moved(running, Progress(9, 1, 7, 0), 1003)
    assert finalizing["status"] == "finalizing" and finalizing["finalizing_at"] == 1003
    assert moved(finalizing, Progress(9, 1, 8, 0), 1010)["finalizing_at"] == 1003
    done = moved(finalizing, Progress(9, 1, 9, 1), 1004)
    assert (done["status"], done["finalizing_at"], done["completed_at"]) == (
        "completed",
        1003,
        1004,
    )
    assert done["request_counts"] == {"total": 10, "completed": 9, "failed": 1}
    assert (done["output_file_id"], done["error_file_id"]) == (
        "file-batch_1-output",
        "file-batch_1-errors",
    )
    assert batch_state.step(done, Progress(0, 0, 0, 0), 1005) is None  # terminal stays


def test_cancelled_and_expired_end_once_every_line_is_collected() -> None:
    cancelling = batch_state.cancel_requested(fresh(), 1002)
    assert cancelling["status"] == "cancelling"
    assert moved(cancelling, Progress(3, 0, 3, 0), 1003)["status"] == "cancelling"
    cancelled = moved(cancelling, Progress(3, 7, 3, 7), 1004)
    assert (cancelled["status"], cancelled["cancelled_at"]) == ("cancelled", 1004)
    late = fresh("1h")
    assert not batch_state.expired_now(late, 1000 + 3600 - 1)
    assert batch_state.step(late, Progress(0, 0, 0, 0), 1000 + 3600 - 1) is None
    expiring = moved(late, Progress(2, 0, 2, 0), 1000 + 3600)
    assert (expiring["status"], expiring["expired_by_window"]) == ("cancelling", True)
    ended = moved(expiring, Progress(2, 8, 2, 8), 4601)
    assert (ended["status"], ended["expired_at"]) == ("expired", 4601)
    assert ended["output_file_id"] and ended["error_file_id"]
    assert "expired_by_window" not in batch_state.public(ended)


def test_a_batch_cancelled_while_validating_waits_for_validation() -> None:
    batch = batch_state.new_batch("b", "f", "/v1/completions", "24h", None, "low", 5)
    cancelling = batch_state.cancel_requested(batch, 6)
    assert batch_state.validating(cancelling) and not batch_state.moving(cancelling)
    assert batch_state.step(cancelling, Progress(0, 0, 0, 0), 7) is None
    validated = batch_state.validated(cancelling, 4, [], 8)
    assert validated["status"] == "cancelling" and batch_state.moving(validated)
    assert moved(validated, Progress(0, 4, 0, 4), 9)["status"] == "cancelled"
    # Nothing accepted: cancelled at once, with nothing to collect.
    empty = batch_state.validated(cancelling, 0, [], 8)
    assert moved(empty, Progress(0, 0, 0, 0), 9)["status"] == "cancelled"


def test_a_batch_whose_every_line_is_in_completes_even_past_its_window() -> None:
    done = moved(fresh("1h"), Progress(6, 4, 6, 4), 1000 + 7200)
    assert done["status"] == "completed" and "expired_by_window" not in done


def test_usage_and_model_follow_the_collected_results_and_stay_after_the_end() -> None:
    batch = fresh(accepted=3)
    assert batch["usage"]["total_tokens"] == 0 and batch["model"] is None
    running = moved(batch, Progress(2, 0, 1, 0, 11, 5, "tiny"), 1002)
    assert running["model"] == "tiny"
    assert running["usage"] == {
        "input_tokens": 11,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": 5,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 16,
    }
    # Only the usage moved (the live counts are the same): still a change to publish.
    more = batch_state.step(running, Progress(2, 0, 1, 0, 20, 9, None), 1003)
    assert more is not None and more["usage"]["total_tokens"] == 29 and more["model"] == "tiny"
    done = moved(more, Progress(3, 0, 3, 0, 33, 14, "tiny"), 1004)
    assert done["status"] == "completed" and done["usage"]["total_tokens"] == 47
    assert batch_state.step(done, Progress(3, 0, 3, 0, 99, 99, "other"), 1005) is None
    assert batch_state.public(done)["usage"] == done["usage"]


# -- properties -----------------------------------------------------------------------
progresses = st.builds(
    Progress,
    st.integers(0, 12),
    st.integers(0, 12),
    st.integers(0, 12),
    st.integers(0, 12),
    st.integers(0, 10**9),
    st.integers(0, 10**9),
    st.none() | st.sampled_from(["tiny", "qwen"]),
)
# A history: what a refresher pass saw, or a cancel, each some seconds after the last.
# A cancel one time in ten; mostly short gaps, and now and then one past a window.
happening = st.tuples(st.integers(0, 9), progresses).map(lambda d: "cancel" if d[0] == 0 else d[1])
elapsed = st.one_of(st.integers(0, 60), st.integers(0, 12_000))
events = st.lists(st.tuples(happening, elapsed), max_size=25)


@st.composite
def validated_batches(draw: st.DrawFn) -> dict[str, Any]:
    window = f"{draw(st.integers(1, 3))}h"
    accepted = draw(st.integers(0, 20))
    batch = batch_state.new_batch("b", "f", "/v1/chat/completions", window, None, "low", 0)
    if draw(st.booleans()):
        batch = batch_state.cancel_requested(batch, 0)  # cancelled while validating
    return batch_state.validated(batch, accepted, [], draw(st.integers(0, 100)))


def history(batch: dict[str, Any], happenings: list[tuple[Progress | str, int]]) -> list[Any]:
    """(before, event, now, after) for each event applied in turn."""
    seen, now = [], 100
    for event, elapsed in happenings:
        now += elapsed
        if isinstance(event, Progress):
            after = moved(batch, event, now)
        else:
            after = batch_state.cancel_requested(batch, now)
        seen.append((batch, event, now, after))
        batch = after
    return seen


@given(validated_batches(), events)
def test_states_only_move_forward_and_stamps_never_change(
    batch: dict[str, Any], happenings: list[tuple[Progress | str, int]]
) -> None:
    for before, _, _, after in history(batch, happenings):
        if before["status"] != after["status"]:
            assert (before["status"], after["status"]) in MOVES
            assert after[f"{after['status']}_at"] is not None
        for stamp in STAMPS:
            assert before[stamp] is None or after[stamp] == before[stamp], stamp
        assert after["request_counts"]["total"] == before["request_counts"]["total"]
        if after["status"] == "completed":
            assert after["finalizing_at"] is not None
            assert after["finalizing_at"] <= after["completed_at"]
        assert after["expires_at"] == before["expires_at"]


@given(validated_batches(), events, progresses, st.integers(0, 20_000))
def test_a_step_is_pure_idempotent_and_none_exactly_when_nothing_changes(
    batch: dict[str, Any],
    happenings: list[tuple[Progress | str, int]],
    progress: Progress,
    now: int,
) -> None:
    for current in [batch, *(after for *_, after in history(batch, happenings))]:
        kept = copy.deepcopy(current)
        stepped = batch_state.step(current, progress, now)
        assert current == kept  # the input is untouched
        if stepped is None:
            continue
        assert stepped != current
        assert batch_state.step(stepped, progress, now) is None  # a second pass: nothing


@given(validated_batches(), events, progresses, st.integers(0, 20_000))
def test_a_moving_batch_ends_exactly_when_every_line_is_collected(
    batch: dict[str, Any],
    happenings: list[tuple[Progress | str, int]],
    progress: Progress,
    now: int,
) -> None:
    for current in [batch, *(after for *_, after in history(batch, happenings))]:
        after = moved(current, progress, now)
        if not batch_state.moving(current):
            assert after is current
            continue
        total = current["request_counts"]["total"]
        assert (after["status"] in TERMINAL) == (progress.collected >= total)
        assert after["usage"] == batch_state.usage(progress.input_tokens, progress.output_tokens)
        assert after["model"] == (progress.model or current["model"])
        if after["status"] in TERMINAL:
            # The collector's own counts and files: the lines the client will read.
            counts = {"total": total, "completed": progress.output_lines}
            assert after["request_counts"] == {**counts, "failed": progress.error_lines}
            assert (after["output_file_id"] is not None) == (progress.output_lines > 0)
            assert (after["error_file_id"] is not None) == (progress.error_lines > 0)
            stopping = current["status"] == "cancelling"
            assert (after["status"] == "completed") == (not stopping)
            assert (after["status"] == "expired") == bool(current.get("expired_by_window"))
        else:
            assert after["request_counts"]["completed"] == progress.completed
            assert after["output_file_id"] is None and after["error_file_id"] is None


@given(validated_batches(), events, progresses, st.integers(0, 20_000))
def test_a_batch_past_its_window_stops_as_expired(
    batch: dict[str, Any],
    happenings: list[tuple[Progress | str, int]],
    progress: Progress,
    now: int,
) -> None:
    for current in [batch, *(after for *_, after in history(batch, happenings))]:
        after = moved(current, progress, now)
        running = current["status"] in ("in_progress", "finalizing")
        unfinished = progress.collected < current["request_counts"]["total"]
        if running and unfinished and now >= current["expires_at"]:
            assert after["status"] == "cancelling" and after["expired_by_window"] is True
            assert after["cancelling_at"] == now
        elif now < current["expires_at"]:
            assert after.get("expired_by_window") == current.get("expired_by_window")
