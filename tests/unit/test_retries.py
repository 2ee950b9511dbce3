"""Back-off for Kafka retries and which lines a Batch API retry pass sends (pure)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from services.ingest.api.batch_api import PassLines
from services.kafka.retries import backoff_s

failures = st.integers(min_value=1, max_value=10_000)
draws = st.floats(min_value=0, max_value=1)


@given(failures, draws)
def test_backoff_is_capped_and_never_below_half_its_ceiling(n: int, draw: float) -> None:
    wait = backoff_s(n, initial_s=0.5, cap_s=30.0, draw=draw)
    ceiling = min(30.0, 0.5 * 2 ** (n - 1)) if n < 64 else 30.0
    assert ceiling / 2 <= wait <= ceiling <= 30.0


@given(failures)
def test_backoff_ceilings_never_shrink(n: int) -> None:
    assert backoff_s(n + 1) >= backoff_s(n)


def test_a_pass_sends_the_failed_lines_and_those_not_reached() -> None:
    only_failed = PassLines(None, frozenset({3, 7}))
    assert [n for n in range(1, 20) if only_failed.wants(n)] == [3, 7]
    after_429 = PassLines(10, frozenset({2}))
    assert [n for n in range(1, 13) if after_429.wants(n)] == [2, 10, 11, 12]
    assert PassLines(None, frozenset()).done


@st.composite
def passes(draw: st.DrawFn) -> list[tuple[float | None, set[int]]]:
    """Per pass: where a 429 cuts it (a fraction of its lines, or None) and which of the
    lines it sends fail delivery (by position); a last pass without faults."""
    faults = draw(
        st.lists(
            st.tuples(
                st.one_of(st.none(), st.floats(min_value=0, max_value=1)),
                st.sets(st.integers(min_value=0, max_value=40), max_size=8),
            ),
            max_size=6,
        )
    )
    return [*faults, (None, set())]


@given(passes())
def test_every_line_is_accepted_once_whatever_the_passes_meet(
    script: list[tuple[float | None, set[int]]],
) -> None:
    lines = range(1, 41)
    accepted: list[int] = []
    todo = PassLines(resume=1, retry=frozenset())
    for cut, failing in script:
        sent = [n for n in lines if todo.wants(n)]
        refused_at = None
        if cut is not None and sent:
            index = int(cut * (len(sent) - 1))
            refused_at, sent = sent[index], sent[:index]
        failed = [n for i, n in enumerate(sent) if i in failing]
        accepted += [n for n in sent if n not in failed]
        todo = todo.next(refused_at, failed)
        if todo.done:
            break
    assert sorted(accepted) == sorted(set(accepted)), "a line was sent again after acceptance"
    assert todo.done and sorted(accepted) == list(lines)
