"""The incremental reader every format's parser is built on.

A format writes its call syntax as straight-line code: a generator that pulls characters with
the helpers below (:meth:`CallReader._char`, :meth:`CallReader._expect`, ...). When the
buffered text runs out, the generator suspends at a bare ``yield`` and resumes on the next
:meth:`~CallReader.feed`, so chunk boundaries may fall anywhere without the format noticing.
Between calls the reader passes text through, holding back only a suffix that could still
become a trigger.

Positions are kept relative to ``_pos`` (the first unconsumed character), so the consumed
prefix can be dropped after every feed: each character is scanned once, never re-parsed.

A freeform (custom) tool's call is the last of its output, and its raw input is the rest of
the output (see :mod:`.grammar`): :meth:`CallReader._freeform_input` streams it, holding back
only a tail that may still turn out to be the format's closing text.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Generator
from typing import TypeAlias, TypeVar

from .base import ArgumentsDelta, CallEnd, CallStart, ParseEvent, TextChunk, ToolCallParseError

T = TypeVar("T")
#: A step that may suspend for more input and finally returns a ``T``.
Step: TypeAlias = Generator[None, None, T]

_WHITESPACE = " \t\r\n"
# Characters of a JSON number or literal (true, false, null); the value is checked at its end.
_SCALAR = frozenset("-+.0123456789eEtruefalsn")


class CallReader:
    """Base of the parsers: passes text through and hands each trigger to :meth:`_call`.

    Subclasses implement :meth:`_call`, which starts with ``_pos`` at the trigger (not yet
    consumed) and reads one call, or several in a row, emitting events with :meth:`_start`,
    :meth:`_arguments` and :meth:`_end`. Errors are raised as :class:`ToolCallParseError`;
    the reader stops there and :meth:`finish` re-raises the error.
    """

    def __init__(self, triggers: tuple[str, ...], freeform: Collection[str] = ()) -> None:
        self._triggers = triggers
        #: Names of the tools whose calls take raw input.
        self._freeform = frozenset(freeform)
        self._longest = max(len(t) for t in triggers)
        self._buf = ""
        self._pos = 0
        self._final = False
        self._events: list[ParseEvent] = []
        self._error: ToolCallParseError | None = None
        self._calls = 0
        self._open: str | None = None
        self._run = self._main()

    def feed(self, text: str) -> list[ParseEvent]:
        if text and self._error is None:
            self._buf += text
            self._step()
        return self._take()

    def finish(self) -> list[ParseEvent]:
        self._final = True
        if self._error is None:
            self._step()
        events = self._take()
        if self._error is not None:
            raise self._error
        return events

    # -- to implement -------------------------------------------------------------------

    def _call(self, trigger: str) -> Step[None]:
        raise NotImplementedError

    # -- driving ------------------------------------------------------------------------

    def _step(self) -> None:
        try:
            next(self._run)
        except StopIteration:
            pass
        except ToolCallParseError as exc:
            self._error = exc
        # Drop what is consumed; every offset a suspended step holds is relative to _pos.
        self._buf = self._buf[self._pos :]
        self._pos = 0

    def _take(self) -> list[ParseEvent]:
        events, self._events = self._events, []
        return events

    def _main(self) -> Step[None]:
        while True:
            trigger = yield from self._text()
            if trigger is None:
                return
            yield from self._call(trigger)

    def _text(self) -> Step[str | None]:
        """Pass text through up to the next trigger; ``None`` at the end of the output."""
        while True:
            found = min(
                ((i, t) for t in self._triggers if (i := self._buf.find(t, self._pos)) >= 0),
                default=None,
                key=lambda hit: (hit[0], -len(hit[1])),
            )
            if found is not None:
                self._emit_text(self._buf[self._pos : found[0]])
                self._pos = found[0]
                return found[1]
            end = len(self._buf) if self._final else len(self._buf) - self._partial_trigger()
            self._emit_text(self._buf[self._pos : end])
            self._pos = end
            if self._final:
                return None
            yield

    def _partial_trigger(self) -> int:
        """Length of the longest buffer suffix that a trigger starts with."""
        available = len(self._buf) - self._pos
        for size in range(min(self._longest - 1, available), 0, -1):
            tail = self._buf[-size:]
            if any(t.startswith(tail) for t in self._triggers):
                return size
        return 0

    # -- events -------------------------------------------------------------------------

    def _emit_text(self, text: str) -> None:
        if text:
            self._events.append(TextChunk(text))

    def _start(self, name: str) -> None:
        self._open = name
        self._events.append(CallStart(self._calls, name))

    def _end(self, arguments: str) -> None:
        if self._open is None:
            raise ToolCallParseError("call arguments came before the tool name")
        self._events.append(CallEnd(self._calls, self._open, arguments))
        self._calls += 1
        self._open = None

    # -- reading ------------------------------------------------------------------------

    def _fail(self, expected: str) -> ToolCallParseError:
        got = self._buf[self._pos : self._pos + 20]
        where = f"found {got!r}" if got else "the output ended"
        return ToolCallParseError(f"Malformed tool call: expected {expected}, {where}.")

    def _char(self, offset: int = 0) -> Step[str]:
        """The character ``offset`` places ahead, without consuming it; ``""`` at the end."""
        while self._pos + offset >= len(self._buf):
            if self._final:
                return ""
            yield
        return self._buf[self._pos + offset]

    def _skip_whitespace(self) -> Step[None]:
        while (c := (yield from self._char())) and c in _WHITESPACE:
            self._pos += 1

    def _expect(self, literal: str) -> Step[None]:
        for expected in literal:
            if (yield from self._char()) != expected:
                raise self._fail(repr(literal))
            self._pos += 1

    def _at(self, literal: str) -> Step[bool]:
        """Whether ``literal`` comes next, without consuming it."""
        for offset, expected in enumerate(literal):
            if (yield from self._char(offset)) != expected:
                return False
        return True

    def _optional(self, separator: str) -> Step[bool]:
        """Consume whitespace and ``separator`` if the separator comes next; otherwise
        consume nothing (the whitespace stays text)."""
        offset = 0
        while (c := (yield from self._char(offset))) and c in _WHITESPACE:
            offset += 1
        if c != separator:
            return False
        self._pos += offset + 1
        return True

    def _string(self) -> Step[str]:
        """A JSON string, decoded."""
        if (yield from self._char()) != '"':
            raise self._fail("a JSON string")
        text = yield from self._scan_value(stream=False)
        value: str = json.loads(text)
        return value

    def _object(self, *, stream: bool) -> Step[str]:
        """A JSON object's text; with ``stream`` its text goes out as ArgumentsDelta as it
        arrives."""
        if (yield from self._char()) != "{":
            raise self._fail("a JSON object")
        return (yield from self._scan_value(stream=stream))

    def _value(self) -> Step[str]:
        """Any JSON value's text."""
        return (yield from self._scan_value(stream=False))

    def _scan_value(self, *, stream: bool) -> Step[str]:
        """Find where the JSON value at ``_pos`` ends by tracking strings, escapes and
        nesting depth; check it with ``json.loads`` once, at its end."""
        first = yield from self._char()
        if not first:
            raise self._fail("a JSON value")
        scalar = first not in '{["'
        depth = 0
        in_string = escaped = done = False
        scanned = emitted = 0
        while not done:
            buf, start = self._buf, self._pos
            while start + scanned < len(buf):
                c = buf[start + scanned]
                if scalar:
                    if c not in _SCALAR:
                        done = True
                        break
                    scanned += 1
                    continue
                scanned += 1
                if in_string:
                    if escaped:
                        escaped = False
                    elif c == "\\":
                        escaped = True
                    elif c == '"':
                        in_string = False
                        done = depth == 0
                elif c == '"':
                    in_string = True
                elif c in "{[":
                    depth += 1
                elif c in "}]":
                    depth -= 1
                    done = depth == 0
                if done:
                    break
            if stream and scanned > emitted:
                self._events.append(
                    ArgumentsDelta(self._calls, buf[start + emitted : start + scanned])
                )
                emitted = scanned
            if done:
                break
            if self._final:
                if scalar:
                    break
                raise self._fail("the rest of the JSON value")
            yield
        text = self._buf[self._pos : self._pos + scanned]
        try:
            json.loads(text)
        except json.JSONDecodeError:
            raise self._fail("valid JSON") from None
        self._pos += scanned
        return text

    def _envelope(self, argument_keys: tuple[str, ...], *, freeform: bool = False) -> Step[bool]:
        """One call as a JSON object ``{"name": ..., <argument key>: {...}}``: the name must
        come before the arguments (so CallStart can precede the deltas); other keys (such as
        an ``id``) are skipped.

        With ``freeform``, an object without arguments naming a freeform tool opens that
        tool's call: returns True, and the caller reads its input (:meth:`_freeform_input`).
        """
        yield from self._expect("{")
        name: str | None = None
        arguments: str | None = None
        while True:
            yield from self._skip_whitespace()
            key = yield from self._string()
            yield from self._skip_whitespace()
            yield from self._expect(":")
            yield from self._skip_whitespace()
            if key == "name" and name is None:
                name = yield from self._string()
                self._start(name)
            elif key in argument_keys and arguments is None:
                if name is None:
                    raise self._fail('"name" before the arguments')
                arguments = yield from self._object(stream=True)
            else:
                yield from self._value()
            yield from self._skip_whitespace()
            c = yield from self._char()
            self._pos += 1
            if c == "}":
                break
            if c != ",":
                self._pos -= 1
                raise self._fail("',' or '}'")
        if arguments is None:
            if freeform and name in self._freeform:
                return True
            raise self._fail(f"the call's {argument_keys[0]!r}")
        self._end(arguments)
        return False

    def _newline(self) -> Step[None]:
        """Consume one newline if it comes next."""
        if (yield from self._char()) == "\n":
            self._pos += 1

    def _freeform_input(self, after: str) -> Step[None]:
        """The raw input of the open freeform call: the rest of the output, less ``after``
        when the output ends with it. Streams as ArgumentsDelta; a tail that may still be the
        final ``after`` is held back until more text shows it is input."""
        text = ""
        while True:
            pending = self._buf[self._pos :]
            if self._final:
                if after and pending.endswith(after):
                    pending = pending[: -len(after)]
                ready = pending
            else:
                ready = pending[: len(pending) - _held(pending, after)]
            if ready:
                self._events.append(ArgumentsDelta(self._calls, ready))
                text += ready
            if self._final:
                self._pos = len(self._buf)
                self._end(text)
                return
            self._pos += len(ready)
            yield


def _held(text: str, after: str) -> int:
    """Length of the longest tail of ``text`` that begins ``after`` (all of it included)."""
    for size in range(min(len(after), len(text)), 0, -1):
        if text.endswith(after[:size]):
            return size
    return 0
