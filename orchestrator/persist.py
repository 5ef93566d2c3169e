"""Carries live records into the store in batches, off the token path.

Generating a token only appends an event to the record in memory. The writer wakes every
``interval`` (at once when a response finishes), encodes every tracked record that changed
(its whole record and its new events) and hands the batch to the store in one call, so a
store write is per batch, never per token. A finished record is written before its creator,
its stream or anyone else sees it end (``record.persisted``), so a client that saw the end
can chain on it or fetch it from any replica.

A write the store refuses (the response was deleted or taken over elsewhere) stops the run. A
store that fails is retried on the next wake; the record stays in this process meanwhile.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import anyio

from .codec import RecordCodec
from .errors import StoreError
from .items import Item
from .record import ResponseRecord
from .store import RecordWrite, ResponseStore

log = logging.getLogger("exloop.orchestrator")


@dataclass
class _Tracked:
    record: ResponseRecord
    #: Events the store holds.
    saved: int
    #: Whether the store has the record at all yet.
    created: bool = False


class RecordWriter:
    """Batches changes of the records it tracks into the store."""

    def __init__(
        self,
        store: ResponseStore,
        codec: RecordCodec,
        *,
        interval: float = 0.05,
        on_released: Callable[[ResponseRecord], None] = lambda record: None,
    ) -> None:
        self._store = store
        self._codec = codec
        self._interval = interval
        #: Called once a record is no longer tracked (saved finished, refused or deleted).
        self._on_released = on_released
        self._tracked: dict[str, _Tracked] = {}
        self._lock = anyio.Lock()
        self._urgent = anyio.Event()

    def __len__(self) -> int:
        return len(self._tracked)

    async def add(self, record: ResponseRecord, *, stored_events: int | None = None) -> None:
        """Write ``record`` now and track it, so that its id is durable before anyone learns
        it; raises StoreError if the store cannot take it. ``stored_events`` is set for a
        record taken over from the store, which holds that many of its events already."""
        created = stored_events is not None
        tracked = _Tracked(record, saved=stored_events or 0, created=created)
        async with self._lock:
            write = self._changes(tracked)
            saved = record.log.next_sequence_number
            refused = await self._store.save([write]) if write is not None else set()
            self._tracked[record.id] = tracked
            self._settle(tracked, write, saved, refused)
        self._urgent.set()  # the loop may be idle, waiting for a first record

    def finished(self) -> None:
        """A tracked record reached its end: write soon, without waiting for the interval."""
        self._urgent.set()

    async def run(self) -> None:
        """Write changes until cancelled."""
        while True:
            with anyio.move_on_after(self._interval if self._tracked else math.inf):
                await self._urgent.wait()
            self._urgent = anyio.Event()
            try:
                await self.flush()
            except Exception:
                # A bug must not stop every later write; the records stay tracked.
                log.exception("writing responses failed")

    async def flush(self) -> None:
        """Write every change now, in one batch."""
        async with self._lock:
            writes: list[tuple[_Tracked, RecordWrite, int]] = []
            for tracked in self._tracked.values():
                write = self._changes(tracked)
                if write is not None:
                    writes.append((tracked, write, tracked.record.log.next_sequence_number))
            if not writes:
                return
            try:
                refused = await self._store.save([write for _, write, _ in writes])
            except StoreError as exc:
                log.error("writing %d responses failed (retrying): %s", len(writes), exc.message)
                for tracked, write, _ in writes:
                    if write.done:
                        tracked.record.persisted.set()  # served from here meanwhile
                return
            for tracked, write, saved in writes:
                self._settle(tracked, write, saved, refused)

    def _settle(
        self, tracked: _Tracked, write: RecordWrite | None, saved: int, refused: set[str]
    ) -> None:
        """Note what the store now holds; stop tracking a finished or refused record."""
        if write is None:
            return
        tracked.created = True
        tracked.saved = saved
        if write.id in refused:
            log.info("response %s was deleted or taken over elsewhere", write.id)
            tracked.record.cancel_scope.cancel()
            self._release(write.id)
        elif write.done:
            self._release(write.id)

    def _changes(self, tracked: _Tracked) -> RecordWrite | None:
        record, codec = tracked.record, self._codec
        events = record.log.since(tracked.saved)
        if tracked.created and not events:
            return None
        # Input items are named from the start, output items once they are final.
        item_ids: tuple[str, ...] = ()
        if not tracked.created:
            item_ids += _ids(record.input_items)
        if record.done:
            item_ids += _ids(record.output)
        return RecordWrite(
            id=record.id,
            record=codec.encode(record),
            fixed=None if tracked.created else codec.encode_fixed(record),
            events=tuple(codec.encode_event(event) for event in events),
            first_event=tracked.saved,
            done=record.done,
            item_ids=item_ids,
        )

    async def forget(self, response_id: str) -> None:
        """Stop writing a response (it is being deleted); waits out a write in progress, so
        that nothing writes it back after the caller deletes it."""
        async with self._lock:
            self._release(response_id)

    async def close(self) -> None:
        """A last write of everything tracked (shielded: the server is stopping)."""
        with anyio.CancelScope(shield=True):
            await self.flush()

    def _release(self, response_id: str) -> None:
        tracked = self._tracked.pop(response_id, None)
        if tracked is not None:
            tracked.record.persisted.set()
            self._on_released(tracked.record)


def _ids(items: Sequence[Item]) -> tuple[str, ...]:
    return tuple(item_id for item in items if (item_id := getattr(item, "id", None)))
