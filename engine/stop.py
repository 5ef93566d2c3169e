"""Turning generated token bytes into text that never shows a stop sequence.

Backend-neutral: a backend pushes each token's bytes (or text) in and emits what comes out.
Two things are held back until they resolve: bytes of an incomplete UTF-8 character (a token
may end in the middle of one), and text that could be the start of a stop sequence (a stop
sequence may be split across tokens, so ``"</st"`` waits until ``"op>"`` or something else
arrives).
"""

from __future__ import annotations

import codecs
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class StopMatch:
    """A stop sequence was found: ``text`` is what precedes it and may still be emitted."""

    text: str
    sequence: str


class StopScanner:
    """Scans streamed text for stop sequences, holding back possible partial matches."""

    def __init__(self, stops: Sequence[str]) -> None:
        self._stops = tuple(stops)
        self._held = ""

    def feed(self, text: str) -> str | StopMatch:
        """The text now safe to emit, or the match that ends generation.

        When several sequences match, the one starting earliest wins (then the longest).
        """
        if not self._stops:
            return text
        buffer = self._held + text
        match = self._earliest_match(buffer)
        if match is not None:
            self._held = ""
            return match
        hold = self._partial_suffix_length(buffer)
        self._held = buffer[len(buffer) - hold :]
        return buffer[: len(buffer) - hold]

    def flush(self) -> str:
        """The held text, once generation ended without completing a stop sequence."""
        held, self._held = self._held, ""
        return held

    def _earliest_match(self, buffer: str) -> StopMatch | None:
        best: tuple[int, int, str] | None = None
        for stop in self._stops:
            index = buffer.find(stop)
            if index >= 0 and (best is None or (index, -len(stop)) < (best[0], best[1])):
                best = (index, -len(stop), stop)
        if best is None:
            return None
        return StopMatch(text=buffer[: best[0]], sequence=best[2])

    def _partial_suffix_length(self, buffer: str) -> int:
        """Length of the longest suffix of ``buffer`` that is a proper prefix of a stop."""
        longest = 0
        for stop in self._stops:
            for length in range(min(len(stop) - 1, len(buffer)), longest, -1):
                if buffer.endswith(stop[:length]):
                    longest = length
                    break
        return longest


class TextStream:
    """Token bytes in, emit-ready text out: incremental UTF-8 decoding plus stop scanning."""

    def __init__(self, stops: Sequence[str]) -> None:
        # errors="replace": a model can emit byte sequences that are not UTF-8 at all; they
        # become U+FFFD rather than failing the job.
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._scanner = StopScanner(stops)
        #: The stop sequence that ended the text, once one matched.
        self.stopped_by: str | None = None

    def push(self, piece: bytes) -> str:
        """Decode one token's bytes; returns text to emit (possibly empty).

        After a stop sequence matched, :attr:`stopped_by` is set and the caller must stop
        generating; the returned text is what preceded the stop sequence.
        """
        result = self._scanner.feed(self._decoder.decode(piece))
        if isinstance(result, StopMatch):
            self.stopped_by = result.sequence
            return result.text
        return result

    def finish(self) -> str:
        """Everything still held back, at the end of generation without a stop match."""
        tail = self._decoder.decode(b"", final=True)
        result = self._scanner.feed(tail)
        if isinstance(result, StopMatch):
            self.stopped_by = result.sequence
            return result.text
        return result + self._scanner.flush()
