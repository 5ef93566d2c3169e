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
    """

    def __init__(self) -> None:
        self._events: list[StreamEvent] = []
        self._grew = anyio.Event()

    def __len__(self) -> int:
        return len(self._events)

    @property
    def next_sequence_number(self) -> int:
        return len(self._events)

    @property
    def closed(self) -> bool:
        return bool(self._events) and isinstance(self._events[-1], TERMINAL_EVENTS)

    def append(self, event: StreamEvent) -> None:
        if event.sequence_number != len(self._events):
            raise ValueError(
                f"event {event.sequence_number} appended at position {len(self._events)}"
            )
        if self.closed:
            raise ValueError("the event log is closed")
        self._events.append(event)
        # Wake every follower; each new wait gets a fresh Event.
        self._grew.set()
        self._grew = anyio.Event()

    async def follow(self, starting_after: int | None = None) -> AsyncIterator[StreamEvent]:
        """Every event after ``starting_after`` (all of them when None), live, up to and
        including the terminal event."""
        position = 0 if starting_after is None else starting_after + 1
        while True:
            while position < len(self._events):
                event = self._events[position]
                position += 1
                yield event
                if isinstance(event, TERMINAL_EVENTS):
                    return
            if self.closed:
                return
            await self._grew.wait()
