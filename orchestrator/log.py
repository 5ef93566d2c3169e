"""A response's event log: the one record that SSE subscribers, GET and replays read."""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio

from .events import TERMINAL_EVENTS, StreamEvent


class EventLog:
    """Append-only, sequence-numbered events with any number of followers.

    Followers replay what is there and then wait for more, until a terminal event. Sequence
    numbers are the positions in the log, starting at 0, so ``starting_after=N`` resumes
    exactly after event N.

    A log taken up again from the store (a response another process left running) starts at
    ``start``: it holds only the events appended since, and numbers them from there on.
    """

    def __init__(self, start: int = 0) -> None:
        self._start = start
        self._events: list[StreamEvent] = []
        #: What waiting followers wait on; made by the first of them (most appends have none
        #: waiting: a response nobody streams, or several events of one step).
        self._grew: anyio.Event | None = None

    @property
    def next_sequence_number(self) -> int:
        """How many events the response has, counting those before ``start``."""
        return self._start + len(self._events)

    @property
    def closed(self) -> bool:
        return bool(self._events) and isinstance(self._events[-1], TERMINAL_EVENTS)

    def since(self, sequence_number: int) -> list[StreamEvent]:
        """The events from ``sequence_number`` on (those held here)."""
        return self._events[max(0, sequence_number - self._start) :]

    def append(self, event: StreamEvent) -> None:
        if event.sequence_number != self.next_sequence_number:
            raise ValueError(
                f"event {event.sequence_number} appended at position {self.next_sequence_number}"
            )
        if self.closed:
            raise ValueError("the event log is closed")
        self._events.append(event)
        # Wake every waiting follower; the next wait makes a fresh Event.
        if self._grew is not None:
            self._grew.set()
            self._grew = None

    async def follow(self, starting_after: int | None = None) -> AsyncIterator[StreamEvent]:
        """Every event after ``starting_after`` (all of them when None), live, up to and
        including the terminal event."""
        position = max(0, (-1 if starting_after is None else starting_after) + 1 - self._start)
        while True:
            while position < len(self._events):
                event = self._events[position]
                position += 1
                yield event
                if isinstance(event, TERMINAL_EVENTS):
                    return
            if self.closed:
                return
            if self._grew is None:
                self._grew = anyio.Event()
            await self._grew.wait()
