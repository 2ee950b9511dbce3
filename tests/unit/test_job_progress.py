"""Job progress counting (pure): a restart from any checkpoint counts every outcome once."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from services.scheduler import jobs
from services.scheduler.jobs import JobCount, PartitionTally

# One partition's records: (job, failed), or None for an undecodable record.
records = st.lists(
    st.one_of(st.none(), st.tuples(st.sampled_from(["a", "b", "c"]), st.booleans())), max_size=60
)


def feed(tally: PartitionTally, log: list[tuple[str, bool] | None], start: int) -> None:
    for offset in range(start, len(log)):
        record = log[offset]
        if record is None:
            tally.skip_to(offset + 1)
        else:
            tally.add(offset, record[0], failed=record[1], now_ms=offset)


def expected(log: list[tuple[str, bool] | None]) -> dict[str, tuple[int, int]]:
    counts: dict[str, tuple[int, int]] = {}
    for record in log:
        if record is not None:
            done, failed = counts.get(record[0], (0, 0))
            counts[record[0]] = (done + (not record[1]), failed + record[1])
    return counts


def as_pairs(tally: PartitionTally) -> dict[str, tuple[int, int]]:
    return {j: (c.completed, c.failed) for j, c in tally.jobs.items()}


@given(records, st.data())
def test_a_crash_after_any_checkpoint_then_a_replay_counts_each_record_once(
    log: list[tuple[str, bool] | None], data: st.DataObject
) -> None:
    saved_at = data.draw(st.integers(0, len(log)))
    crashed_at = data.draw(st.integers(saved_at, len(log)))
    before = PartitionTally()
    feed(before, log[:saved_at], 0)
    checkpoint = before.to_json()
    feed(before, log[:crashed_at], saved_at)  # counted after the checkpoint, then lost

    restored = PartitionTally.from_json(checkpoint)
    # The consumer resumes at the checkpoint's offset; a rewind re-delivers from 0.
    rewind = data.draw(st.booleans())
    feed(restored, log, 0 if rewind else restored.next_offset)
    assert as_pairs(restored) == expected(log)
    assert restored.next_offset == len(log)


def test_an_offset_already_counted_is_refused() -> None:
    tally = PartitionTally()
    assert tally.add(4, "j", failed=False, now_ms=1)
    assert not tally.add(4, "j", failed=True, now_ms=2)
    assert not tally.add(2, "j", failed=True, now_ms=2)
    assert as_pairs(tally) == {"j": (1, 0)} and tally.next_offset == 5


def test_idle_jobs_are_swept_after_retention_since_their_last_change() -> None:
    tally = PartitionTally()
    tally.add(0, "old", failed=False, now_ms=1_000)
    tally.add(1, "new", failed=False, now_ms=5_000)
    assert tally.sweep(now_ms=6_000, retention_ms=2_000) == ["old"]
    assert list(tally.jobs) == ["new"] and tally.next_offset == 2


def test_job_is_completed_when_sealed_and_every_request_has_an_outcome() -> None:
    record = {"accepted": 5, "rejected": 2, "sealed": True, "tenant": "t"}
    results = [JobCount(completed=3, failed=1)]
    dead = [JobCount(failed=1)]
    view = jobs.job_view("j", record, results, dead)
    assert view["state"] == "completed"
    assert (view["total"], view["completed"], view["failed"]) == (5, 3, 2)
    unsealed = jobs.job_view("j", {**record, "sealed": False}, results, dead)
    assert unsealed["state"] == "in_progress"
    assert jobs.job_view("j", None, [], [])["state"] == "unknown"
