from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from services.ingest.admission.lines import LineSplitter, RawLine


def split(data: bytes, cuts: list[int], max_bytes: int = 1000) -> list[RawLine]:
    splitter = LineSplitter(max_bytes)
    lines: list[RawLine] = []
    previous = 0
    for cut in sorted(cuts):
        lines += splitter.feed(data[previous:cut])
        previous = cut
    lines += splitter.feed(data[previous:])
    return lines + splitter.finish()


line_text = st.text(
    alphabet=st.characters(blacklist_characters="\n\r", blacklist_categories=["Cs"]), max_size=30
)


@given(st.lists(line_text, max_size=20), st.lists(st.integers(0, 800), max_size=10))
def test_chunking_never_changes_the_lines(texts: list[str], cuts: list[int]) -> None:
    data = "\n".join(texts).encode()
    lines = split(data, [c for c in cuts if c <= len(data)])
    expected = [
        (number, text.encode())
        for number, text in enumerate(texts, start=1)
        if text.encode().strip()
    ]
    assert [(line.number, line.data) for line in lines] == expected


def test_an_over_long_line_is_reported_by_size_and_the_next_line_survives() -> None:
    data = b"short\n" + b"x" * 50 + b"\nafter\r\n"
    lines = split(data, [3, 20, 40], max_bytes=10)
    assert [(line.number, line.data, line.size) for line in lines] == [
        (1, b"short", 5),
        (2, None, 50),
        (3, b"after", 5),
    ]
