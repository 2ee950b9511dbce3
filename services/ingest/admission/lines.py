"""Split a streamed body into numbered lines without holding more than one line."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RawLine:
    """One line of the upload; `data` is None when the line was over the size limit."""

    number: int
    data: bytes | None
    size: int


class LineSplitter:
    """Feeds byte chunks in, yields complete lines; blank lines are skipped."""

    def __init__(self, max_line_bytes: int, first_line: int = 1) -> None:
        self._max = max_line_bytes
        self._buffer = bytearray()
        self._oversize = 0  # bytes of an over-long line seen so far, 0 when none
        self._next_number = first_line

    def feed(self, chunk: bytes) -> list[RawLine]:
        lines: list[RawLine] = []
        start = 0
        while True:
            newline = chunk.find(b"\n", start)
            if newline < 0:
                self._keep(chunk[start:])
                return lines
            self._keep(chunk[start:newline])
            line = self._take()
            if line is not None:
                lines.append(line)
            start = newline + 1

    def finish(self) -> list[RawLine]:
        line = self._take()
        return [line] if line is not None else []

    def _keep(self, piece: bytes) -> None:
        if self._oversize:
            self._oversize += len(piece)
        elif len(self._buffer) + len(piece) > self._max:
            # Past the limit the line is dropped from memory; only its size is counted.
            self._oversize = len(self._buffer) + len(piece)
            self._buffer.clear()
        else:
            self._buffer += piece

    def _take(self) -> RawLine | None:
        number = self._next_number
        if self._oversize:
            line = RawLine(number, None, self._oversize)
            self._oversize = 0
        else:
            data = bytes(self._buffer).rstrip(b"\r")
            self._buffer.clear()
            if not data.strip():
                # Blank lines still count, so numbers match the caller's file.
                self._next_number += 1
                return None
            line = RawLine(number, data, len(data))
        self._next_number += 1
        return line
