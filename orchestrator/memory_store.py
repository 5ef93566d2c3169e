"""The in-process store (``--store memory``): encoded records in dicts, gone with the process.

It keeps the bytes the durable stores would write, so its byte bound measures what it really
holds, and it behaves as they do in every other respect.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from types import TracebackType

from .store import Clock, RecordWrite, Retention, SingleProcess, Stored, evictions


@dataclass
class _Entry:
    record: bytes
    fixed: bytes
    events: list[bytes] = field(default_factory=list)
    event_bytes: int = 0
    done: bool = False
    item_ids: set[str] = field(default_factory=set)

    @property
    def size(self) -> int:
        return len(self.record) + len(self.fixed) + self.event_bytes


class MemoryStore(SingleProcess):
    """Records in process memory under a :class:`~.store.Retention`."""

    def __init__(self, retention: Retention | None = None, *, clock: Clock = time.time) -> None:
        super().__init__()
        self._retention = retention or Retention()
        self._clock = clock
        self._entries: dict[str, _Entry] = {}
        #: Finished responses, oldest first, with the time they finished.
        self._finished: OrderedDict[str, float] = OrderedDict()
        self._items: dict[str, str] = {}
        self._bytes = 0

    async def __aenter__(self) -> MemoryStore:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def size(self) -> int:
        """Bytes of the records and events held."""
        return self._bytes

    async def save(self, writes: Sequence[RecordWrite]) -> set[str]:
        refused: set[str] = set()
        for write in writes:
            entry = self._entries.get(write.id)
            if entry is None and write.fixed is None:
                refused.add(write.id)  # deleted or evicted meanwhile
                continue
            if entry is not None and entry.done:
                refused.add(write.id)
                continue
            if entry is None:
                entry = self._entries[write.id] = _Entry(b"", write.fixed or b"")
            self._bytes -= entry.size
            entry.record = write.record
            for offset, event in enumerate(write.events):
                if write.first_event + offset == len(entry.events):
                    entry.events.append(event)
                    entry.event_bytes += len(event)
            self._bytes += entry.size
            for item_id in write.item_ids:
                self._items[item_id] = write.id
                entry.item_ids.add(item_id)
            if write.done:
                entry.done = True
                self._finished[write.id] = self._clock()
        self._evict()
        return refused

    async def load(self, response_id: str) -> Stored | None:
        self._evict()
        entry = self._entries.get(response_id)
        if entry is None:
            return None
        return Stored(
            entry.record, entry.fixed, len(entry.events), None if entry.done else self.replica
        )

    async def events(self, response_id: str, after: int) -> AsyncIterator[bytes]:
        entry = self._entries.get(response_id)
        for event in entry.events[after + 1 :] if entry else ():
            yield event

    async def delete(self, response_id: str) -> Stored | None:
        entry = self._drop(response_id)
        if entry is None:
            return None
        return Stored(
            entry.record, entry.fixed, len(entry.events), None if entry.done else self.replica
        )

    async def response_of_item(self, item_id: str) -> str | None:
        return self._items.get(item_id)

    async def count(self) -> int:
        return len(self._entries)

    async def upkeep(self) -> None:
        self._evict()

    async def claim_orphans(self) -> list[Stored]:
        return []  # nothing outlives the process that ran it

    def _evict(self) -> None:
        finished = ((rid, at, self._entries[rid].size) for rid, at in self._finished.items())
        for response_id in evictions(
            finished,
            count=len(self._entries),
            size=self._bytes,
            retention=self._retention,
            now=self._clock(),
        ):
            self._drop(response_id)

    def _drop(self, response_id: str) -> _Entry | None:
        entry = self._entries.pop(response_id, None)
        if entry is None:
            return None
        self._finished.pop(response_id, None)
        self._bytes -= entry.size
        for item_id in entry.item_ids:
            self._items.pop(item_id, None)
        return entry
