"""Stop sequences never leak, whatever the chunking; UTF-8 is held until complete."""

from __future__ import annotations

import pytest

from exloop.engine.stop import StopMatch, StopScanner, TextStream


def _feed_all(scanner: StopScanner, chunks: list[str]) -> tuple[str, str | None]:
    out = ""
    for chunk in chunks:
        result = scanner.feed(chunk)
        if isinstance(result, StopMatch):
            return out + result.text, result.sequence
        out += result
    return out + scanner.flush(), None


@pytest.mark.parametrize("size", [1, 2, 3, 5, 100])
def test_stop_split_at_every_position_never_leaks(size: int) -> None:
    text = "Hello world </stop> and more"
    chunks = [text[i : i + size] for i in range(0, len(text), size)]
    assert _feed_all(StopScanner(["</stop>"]), chunks) == ("Hello world ", "</stop>")


def test_partial_stop_is_held_then_released() -> None:
    scanner = StopScanner(["STOP"])
    assert scanner.feed("abc ST") == "abc "
    assert scanner.feed("OOP") == "STOOP"
    assert scanner.feed("S") == ""
    assert scanner.flush() == "S"


def test_earliest_stop_wins_then_longest() -> None:
    assert StopScanner(["b", "abc"]).feed("xabcb") == StopMatch("x", "abc")
    assert StopScanner(["ab", "abc"]).feed("xabc") == StopMatch("x", "abc")


def test_no_stops_passes_text_through() -> None:
    assert StopScanner([]).feed("anything") == "anything"


def test_text_stream_holds_incomplete_utf8() -> None:
    stream = TextStream([])
    euro = "€".encode()
    assert stream.push(b"a" + euro[:1]) == "a"
    assert stream.push(euro[1:2]) == ""
    assert stream.push(euro[2:]) == "€"
    assert stream.finish() == ""


def test_text_stream_replaces_invalid_bytes_at_the_end() -> None:
    stream = TextStream([])
    assert stream.push(b"ok\xe2\x82") == "ok"
    assert stream.finish() == "\ufffd"


def test_text_stream_stop_spanning_pieces() -> None:
    stream = TextStream(["<end>"])
    emitted = [stream.push(piece) for piece in (b"one <e", b"n", b"d> two")]
    assert "".join(emitted) == "one "
    assert stream.stopped_by == "<end>"
