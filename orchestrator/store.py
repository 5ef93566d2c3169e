"""Where responses live between requests: an interface and a bounded in-memory store.

Records are live objects while their run goes on, so ``GET`` mid-flight sees the partial
output. The store bounds itself by age (TTL) and count; it never evicts a response that is
still running.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Protocol

from .items import Item
from .record import ResponseRecord


class ResponseStore(Protocol):
    """Storage of response records by id."""

    def __len__(self) -> int:
        """How many responses are stored."""
        ...

    def put(self, record: ResponseRecord) -> None: ...

    def get(self, response_id: str) -> ResponseRecord | None: ...

    def delete(self, response_id: str) -> ResponseRecord | None:
        """Remove and return the record (None when unknown)."""
        ...

    def find_item(self, item_id: str, owner: str | None) -> Item | None:
        """An input or output item of a stored response that ``owner`` created, by its id."""
        ...


class MemoryStore:
    """Records in process memory, oldest first, under a TTL and a count cap."""

    def __init__(self, *, ttl_seconds: float = 24 * 3600, max_responses: int = 10_000) -> None:
        self._ttl = ttl_seconds
        self._max = max_responses
        self._records: OrderedDict[str, tuple[float, ResponseRecord]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._records)

    def put(self, record: ResponseRecord) -> None:
        self._evict()
        self._records[record.id] = (time.monotonic(), record)

    def get(self, response_id: str) -> ResponseRecord | None:
        self._evict()
        entry = self._records.get(response_id)
        return entry[1] if entry else None

    def delete(self, response_id: str) -> ResponseRecord | None:
        entry = self._records.pop(response_id, None)
        return entry[1] if entry else None

    def find_item(self, item_id: str, owner: str | None) -> Item | None:
        for _, record in reversed(self._records.values()):
            if record.owner != owner:
                continue
            for item in (*record.input_items, *record.output):
                if getattr(item, "id", None) == item_id:
                    return item
        return None

    def _evict(self) -> None:
        """Drop finished records past their TTL, then the oldest finished past the cap."""
        now = time.monotonic()
        expired = [
            rid for rid, (at, rec) in self._records.items() if rec.done and now - at > self._ttl
        ]
        for rid in expired:
            del self._records[rid]
        excess = len(self._records) - self._max + 1
        if excess > 0:
            oldest_done = [rid for rid, (_, rec) in self._records.items() if rec.done][:excess]
            for rid in oldest_done:
                del self._records[rid]
