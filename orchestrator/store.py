"""Where responses live between requests: the store interface, its retention, and the choice
of store by URL.

A store keeps, per response, the encoded record (:mod:`.codec`) and its event log, indexed by
response id and by the ids of its items. Records arrive in batches from the
:class:`~.persist.RecordWriter`; the store bounds itself by age, count and bytes and never
evicts a response that is still running.

Each process is a *replica* with its own id. A running response belongs to the replica that
runs it; when that replica is gone (a restart on the same SQLite file, a dead process in a
Redis deployment) another claims its responses and ends them ``failed``. Stores shared by
several replicas (Redis) also carry events live between them and deliver cancel signals to the
owning replica.

    store           shared   durable   live events and signals across processes
    memory          no       no        not needed
    sqlite:PATH     no       yes       not needed (one process holds the file)
    redis://...     yes      yes       Redis Streams and pub/sub
"""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Protocol

import anyio

#: A clock in seconds since the epoch (shared by replicas, unlike a monotonic one).
Clock = Callable[[], float]


@dataclass(frozen=True, slots=True)
class Retention:
    """How long and how much the store keeps. Running responses are never evicted."""

    #: Seconds a finished response is kept after it finished.
    ttl: float = 30 * 24 * 3600
    #: Stored responses at most; beyond it the oldest finished ones go.
    max_responses: int = 100_000
    #: Bytes of stored records and events at most; beyond it the oldest finished ones go.
    max_bytes: int = 1 << 30


def evictions(
    oldest_first: Iterable[tuple[str, float, int]],
    *,
    count: int,
    size: int,
    retention: Retention,
    now: float,
) -> list[str]:
    """Which finished responses go: those past the TTL, then the oldest while the store holds
    more than ``max_responses`` or ``max_bytes``.

    ``oldest_first`` yields finished responses as (id, finished at, bytes), oldest first;
    ``count`` and ``size`` are the store's totals, running responses included (so they count
    against the bounds but are never chosen).
    """
    chosen: list[str] = []
    cutoff = now - retention.ttl
    for response_id, finished_at, nbytes in oldest_first:
        over = count > retention.max_responses or size > retention.max_bytes
        if finished_at >= cutoff and not over:
            break
        chosen.append(response_id)
        count -= 1
        size -= nbytes
    return chosen


@dataclass(frozen=True, slots=True)
class Stored:
    """A response as the store holds it."""

    #: The encoded state (what changes as it runs) and fixed part (see RecordCodec).
    record: bytes
    fixed: bytes
    #: Events stored (the next sequence number).
    events: int
    #: The replica running it; None once it finished.
    replica: str | None


@dataclass(frozen=True, slots=True)
class RecordWrite:
    """One response's changes since its last write: its state, its new events (and on the
    first write its fixed part)."""

    id: str
    record: bytes
    #: The fixed part, on the response's first write only (None after).
    fixed: bytes | None
    #: Encoded events, numbered from ``first_event``.
    events: tuple[bytes, ...]
    first_event: int
    #: The response reached a terminal state; ``events`` end with its terminal event.
    done: bool
    #: Ids of the response's items that ``item_reference`` inputs may name.
    item_ids: tuple[str, ...] = ()


def new_replica_id() -> str:
    return f"replica_{secrets.token_hex(8)}"


class ResponseStore(Protocol):
    """Storage of response records and their event logs, for one replica."""

    #: This process's replica id.
    replica: str
    #: Seconds between calls of :meth:`upkeep` (and claims of orphans).
    upkeep_interval: float

    async def __aenter__(self) -> ResponseStore:
        """Open (and migrate) the store; refuse one written by a newer exloop."""
        ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    async def save(self, writes: Sequence[RecordWrite]) -> set[str]:
        """Store a batch; returns the ids refused because the response was deleted, or
        finished or claimed by another replica (their run should stop)."""
        ...

    async def load(self, response_id: str) -> Stored | None:
        """The response, or None when unknown, deleted or expired."""
        ...

    def events(self, response_id: str, after: int) -> AsyncIterator[bytes]:
        """Events after sequence number ``after``; where another replica still runs the
        response, new ones follow live (the caller stops at the terminal event)."""
        ...

    async def delete(self, response_id: str) -> Stored | None:
        """Remove the response, its events and item index; returns what it was."""
        ...

    async def response_of_item(self, item_id: str) -> str | None:
        """The id of the stored response holding an item."""
        ...

    async def count(self) -> int:
        """How many responses are stored, running ones included."""
        ...

    async def upkeep(self) -> None:
        """Periodic work: announce this replica alive, evict what retention says."""
        ...

    async def claim_orphans(self) -> list[Stored]:
        """Running responses of replicas that are gone, now claimed by this one (to end)."""
        ...

    async def claim(self, response_id: str, replica: str) -> Stored | None:
        """Take over one response of a gone ``replica``; None if it is not orphaned."""
        ...

    async def alive(self, replica: str) -> bool:
        """Whether ``replica`` still runs (its heartbeat is fresh)."""
        ...

    async def signal(self, replica: str, response_id: str) -> None:
        """Ask ``replica`` to stop running a response (a cancel or delete elsewhere)."""
        ...

    def signals(self) -> AsyncIterator[str]:
        """Ids of responses other replicas asked this one to stop."""
        ...


class SingleProcess:
    """What a store that one process holds answers about replicas: every running response is
    this process's own, so nothing is signalled and no other replica is alive."""

    #: Retention is also checked on every read; this pass reclaims the space.
    upkeep_interval = 60.0

    def __init__(self) -> None:
        self.replica = new_replica_id()

    async def claim(self, response_id: str, replica: str) -> Stored | None:
        return None  # orphans are all claimed at start (claim_orphans)

    async def alive(self, replica: str) -> bool:
        return replica == self.replica

    async def signal(self, replica: str, response_id: str) -> None:
        return None

    async def signals(self) -> AsyncIterator[str]:
        await anyio.sleep_forever()
        yield ""  # pragma: no cover (never reached; makes this an async generator)


def open_store(
    url: str,
    retention: Retention,
    *,
    heartbeat_timeout: float = 10.0,
    clock: Clock = time.time,
) -> ResponseStore:
    """The store ``url`` names: ``memory``, ``sqlite:PATH`` or ``redis://HOST:PORT/DB``
    (``rediss://`` and ``unix://`` too). Raises ValueError for anything else."""
    if url == "memory":
        from .memory_store import MemoryStore

        return MemoryStore(retention, clock=clock)
    if url.startswith("sqlite:"):
        path = url.removeprefix("sqlite:").removeprefix("//")
        if not path:
            raise ValueError("sqlite: needs a file path, as in sqlite:/var/lib/exloop/r.db")
        from .sqlite_store import SqliteStore

        return SqliteStore(Path(path).expanduser(), retention, clock=clock)
    if url.startswith(("redis://", "rediss://", "unix://")):
        from .redis_store import RedisStore

        return RedisStore(url, retention, heartbeat_timeout=heartbeat_timeout, clock=clock)
    raise ValueError(f"unknown store {url!r}: use memory, sqlite:PATH or redis://HOST:PORT/DB")
