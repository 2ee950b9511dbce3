"""Job progress counting (pure): replays never count twice; the view adds up."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from services.scheduler import jobs


@given(st.lists(st.tuples(st.integers(0, 50), st.booleans()), max_size=80))
def test_replayed_offsets_are_counted_once(events: list[tuple[int, bool]]) -> None:
    entry = None
    counted_offsets: dict[int, bool] = {}
    for offset, failed in events:
        updated = jobs.counted(
            entry, offset, completed=int(not failed), failed=int(failed), now_ms=1
        )
        if updated is not None:
            entry = updated
            counted_offsets[offset] = failed
    expected_failed = sum(counted_offsets.values())
    if entry is None:
        assert counted_offsets == {}
        return
    assert entry["completed"] + entry["failed"] == len(counted_offsets)
    assert entry["failed"] == expected_failed
    assert entry["last_offset"] == max(counted_offsets)


def test_job_is_completed_when_sealed_and_every_request_has_an_outcome() -> None:
    record = {"accepted": 5, "rejected": 2, "sealed": True, "tenant": "t"}
    results = [{"completed": 3, "failed": 1}]
    dead = [{"completed": 0, "failed": 1}]
    view = jobs.job_view("j", record, results, dead)
    assert view["state"] == "completed"
    assert (view["total"], view["completed"], view["failed"]) == (5, 3, 2)
    unsealed = jobs.job_view("j", {**record, "sealed": False}, results, dead)
    assert unsealed["state"] == "in_progress"
    assert jobs.job_view("j", None, [], [])["state"] == "unknown"


def test_entries_expire_after_retention_since_their_last_change() -> None:
    assert not jobs.expired(updated_ms=1_000, now_ms=2_000, retention_ms=1_000)
    assert jobs.expired(updated_ms=1_000, now_ms=2_001, retention_ms=1_000)
    assert jobs.job_of(jobs.entry_key("a|b", 3)) == "a|b"
