from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from services.ingest.admission.backpressure import admit
from services.ingest.admission.ledger import JobLedger

counts = st.integers(0, 10_000)


@given(counts, st.integers(1, 10_000), counts, st.integers(1, 10_000))
def test_admitted_exactly_when_both_bounds_hold(
    backlog: int, backlog_limit: int, queued: int, queue_limit: int
) -> None:
    admission = admit(backlog, backlog_limit, queued, queue_limit)
    assert admission.admitted == (backlog < backlog_limit and queued < queue_limit)
    if not admission.admitted:
        assert admission.reason in {"backlog", "producer_queue"}
        assert admission.detail


def test_ledger_refuses_duplicates_and_forgets_the_oldest_job() -> None:
    ledger = JobLedger(max_jobs=2)
    assert ledger.claim("a", "1")
    assert not ledger.claim("a", "1")
    ledger.release("a", ["1"])
    assert ledger.claim("a", "1")
    ledger.claim("b", "1")
    ledger.claim("c", "1")  # "a" is the least recently used: forgotten
    assert ledger.count("a") == 0
    assert ledger.count("c") == 1
