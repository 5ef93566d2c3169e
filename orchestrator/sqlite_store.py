"""The durable single-process store (``--store sqlite:PATH``, the default).

One SQLite file in WAL mode, opened with an exclusive lock: one exloop process serves it, and
a second one started on the same file stops at once with a message (several replicas share a
Redis store instead). Because the lock proves no other process runs, every response the file
holds as running at start was left by a dead process: :meth:`claim_orphans` hands them over to
be ended ``failed``.

All SQLite calls run on worker threads, one at a time, over one connection; the writer batches
a whole flush into one transaction. Tables carry a schema version (the ``schema_version``
table) and :data:`MIGRATIONS` bring an older file up to date; a file from a newer exloop is
refused with a clear error rather than misread.
"""

from __future__ import annotations

import functools
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import TypeVar

import anyio

from .errors import StoreError
from .store import Clock, RecordWrite, Retention, SingleProcess, Stored, evictions

T = TypeVar("T")

#: Each entry brings the file from version i to i + 1. Append, never edit.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE responses (
        id TEXT PRIMARY KEY,
        record BLOB NOT NULL,
        fixed BLOB NOT NULL,
        events INTEGER NOT NULL,
        event_bytes INTEGER NOT NULL,
        bytes INTEGER NOT NULL,
        replica TEXT,
        finished_at REAL
    );
    CREATE INDEX responses_finished ON responses (finished_at) WHERE finished_at IS NOT NULL;
    CREATE INDEX responses_running ON responses (replica) WHERE finished_at IS NULL;
    CREATE TABLE events (
        response_id TEXT NOT NULL,
        seq INTEGER NOT NULL,
        event BLOB NOT NULL,
        PRIMARY KEY (response_id, seq)
    ) WITHOUT ROWID;
    CREATE TABLE items (
        id TEXT PRIMARY KEY,
        response_id TEXT NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX items_response ON items (response_id);
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)


class SqliteStore(SingleProcess):
    """Responses in one SQLite file, for one process."""

    def __init__(
        self, path: Path, retention: Retention | None = None, *, clock: Clock = time.time
    ) -> None:
        super().__init__()
        self.path = path
        self._retention = retention or Retention()
        self._clock = clock
        self._db: sqlite3.Connection | None = None
        self._limiter = anyio.CapacityLimiter(1)
        self._count = 0
        self._bytes = 0

    # -- opening --------------------------------------------------------------------------

    async def __aenter__(self) -> SqliteStore:
        await self._run(self._open)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._run(self._close)

    def _open(self) -> None:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not self.path.exists():
            # Stored responses hold prompts and answers: readable by this user only.
            os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600))
        try:
            db = sqlite3.connect(
                self.path, timeout=0, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as exc:
            raise StoreError(f"Cannot open the response store {self.path}: {exc}") from exc
        try:
            db.execute("PRAGMA locking_mode = EXCLUSIVE")
            db.execute("PRAGMA journal_mode = WAL")
            db.execute("PRAGMA synchronous = NORMAL")
            self._migrate(db)
        except sqlite3.OperationalError as exc:
            db.close()
            if "locked" in str(exc):
                raise StoreError(
                    f"The response store {self.path} is in use by another exloop process. A "
                    "SQLite store serves one process; give each its own file, or share a "
                    "Redis store (--store redis://...) between replicas."
                ) from exc
            raise StoreError(f"Cannot open the response store {self.path}: {exc}") from exc
        except sqlite3.DatabaseError as exc:
            db.close()
            raise StoreError(f"{self.path} is not a usable SQLite database: {exc}") from exc
        self._count, self._bytes = db.execute(
            "SELECT count(*), coalesce(sum(bytes), 0) FROM responses"
        ).fetchone()
        self._db = db

    def _migrate(self, db: sqlite3.Connection) -> None:
        db.execute("BEGIN IMMEDIATE")  # also takes the exclusive lock now, not at first write
        try:
            db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            row = db.execute("SELECT max(version) FROM schema_version").fetchone()
            version = row[0] or 0
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"The response store {self.path} has schema version {version}, newer than "
                    f"this exloop knows ({SCHEMA_VERSION}): it was written by a newer exloop. "
                    "Upgrade exloop, or point --store at another file."
                )
            for target in range(version + 1, SCHEMA_VERSION + 1):
                for statement in MIGRATIONS[target - 1].split(";"):
                    if statement.strip():
                        db.execute(statement)
                db.execute("DELETE FROM schema_version")
                db.execute("INSERT INTO schema_version (version) VALUES (?)", (target,))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def _close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    async def _run(self, call: Callable[[], T]) -> T:
        """``call`` on a worker thread, one at a time; SQLite errors become StoreError."""
        try:
            return await anyio.to_thread.run_sync(call, limiter=self._limiter)
        except sqlite3.Error as exc:
            raise StoreError(f"The response store failed: {exc}") from exc

    @property
    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise StoreError("The response store is not open.")
        return self._db

    # -- writing --------------------------------------------------------------------------

    async def save(self, writes: Sequence[RecordWrite]) -> set[str]:
        return await self._run(functools.partial(self._save, writes))

    def _transaction(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """``work`` in one write transaction; the counters are re-read if it fails."""
        db = self._conn
        db.execute("BEGIN IMMEDIATE")
        try:
            result = work(db)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            self._count, self._bytes = db.execute(
                "SELECT count(*), coalesce(sum(bytes), 0) FROM responses"
            ).fetchone()
            raise
        return result

    def _save(self, writes: Sequence[RecordWrite]) -> set[str]:
        def save(db: sqlite3.Connection) -> set[str]:
            refused = {write.id for write in writes if not self._save_one(db, write)}
            if any(write.done for write in writes):
                self._evict(db)
            return refused

        return self._transaction(save)

    def _save_one(self, db: sqlite3.Connection, write: RecordWrite) -> bool:
        row = db.execute(
            "SELECT events, event_bytes, bytes, finished_at, length(fixed) FROM responses "
            "WHERE id = ?",
            (write.id,),
        ).fetchone()
        if (row is None and write.fixed is None) or (row is not None and row[3] is not None):
            return False  # deleted or evicted meanwhile, or already finished
        stored, event_bytes, old_size, _, fixed_size = row or (0, 0, 0, None, 0)
        new = [
            (write.id, write.first_event + i, event)
            for i, event in enumerate(write.events)
            if write.first_event + i >= stored
        ]
        db.executemany("INSERT INTO events (response_id, seq, event) VALUES (?, ?, ?)", new)
        event_bytes += sum(len(event) for _, _, event in new)
        size = len(write.record) + (fixed_size or len(write.fixed or b"")) + event_bytes
        columns: dict[str, object] = {
            "record": write.record,
            "events": max(stored, write.first_event + len(write.events)),
            "event_bytes": event_bytes,
            "bytes": size,
            "replica": None if write.done else self.replica,
            "finished_at": self._clock() if write.done else None,
        }
        if row is None:
            columns |= {"id": write.id, "fixed": write.fixed}
            names = ", ".join(columns)
            db.execute(
                f"INSERT INTO responses ({names}) VALUES ({', '.join('?' * len(columns))})",
                tuple(columns.values()),
            )
        else:
            assignments = ", ".join(f"{name} = ?" for name in columns)
            db.execute(
                f"UPDATE responses SET {assignments} WHERE id = ?",
                (*columns.values(), write.id),
            )
        db.executemany(
            "INSERT OR REPLACE INTO items (id, response_id) VALUES (?, ?)",
            [(item_id, write.id) for item_id in write.item_ids],
        )
        self._count += row is None
        self._bytes += size - old_size
        return True

    def _evict(self, db: sqlite3.Connection) -> None:
        cursor = db.execute(
            "SELECT id, finished_at, bytes FROM responses WHERE finished_at IS NOT NULL "
            "ORDER BY finished_at"
        )
        try:
            chosen = evictions(
                cursor,
                count=self._count,
                size=self._bytes,
                retention=self._retention,
                now=self._clock(),
            )
        finally:
            cursor.close()
        for response_id in chosen:
            self._drop(db, response_id)

    def _drop(self, db: sqlite3.Connection, response_id: str) -> Stored | None:
        row = db.execute(
            "SELECT record, fixed, events, replica, bytes FROM responses WHERE id = ?",
            (response_id,),
        ).fetchone()
        if row is None:
            return None
        db.execute("DELETE FROM events WHERE response_id = ?", (response_id,))
        db.execute("DELETE FROM items WHERE response_id = ?", (response_id,))
        db.execute("DELETE FROM responses WHERE id = ?", (response_id,))
        self._count -= 1
        self._bytes -= row[4]
        return Stored(*row[:4])

    # -- reading --------------------------------------------------------------------------

    async def load(self, response_id: str) -> Stored | None:
        return await self._run(functools.partial(self._load, response_id))

    def _load(self, response_id: str) -> Stored | None:
        row = self._conn.execute(
            "SELECT record, fixed, events, replica, finished_at FROM responses WHERE id = ?",
            (response_id,),
        ).fetchone()
        if row is None or (row[4] is not None and row[4] < self._clock() - self._retention.ttl):
            return None
        return Stored(*row[:4])

    async def events(self, response_id: str, after: int) -> AsyncIterator[bytes]:
        rows = await self._run(
            lambda: self._conn.execute(
                "SELECT event FROM events WHERE response_id = ? AND seq > ? ORDER BY seq",
                (response_id, after),
            ).fetchall()
        )
        for (event,) in rows:
            yield event

    async def delete(self, response_id: str) -> Stored | None:
        return await self._run(
            lambda: self._transaction(functools.partial(self._drop, response_id=response_id))
        )

    async def response_of_item(self, item_id: str) -> str | None:
        row = await self._run(
            lambda: self._conn.execute(
                "SELECT response_id FROM items WHERE id = ?", (item_id,)
            ).fetchone()
        )
        return str(row[0]) if row else None

    async def count(self) -> int:
        return self._count  # kept in step with the file, which this process alone holds

    # -- replicas: the lock proves any other replica is gone ------------------------------

    async def upkeep(self) -> None:
        await self._run(lambda: self._transaction(self._evict))

    async def claim_orphans(self) -> list[Stored]:
        def claim(db: sqlite3.Connection) -> list[Stored]:
            rows = db.execute(
                "SELECT record, fixed, events, replica FROM responses "
                "WHERE finished_at IS NULL AND replica != ?",
                (self.replica,),
            ).fetchall()
            db.execute(
                "UPDATE responses SET replica = ? WHERE finished_at IS NULL AND replica != ?",
                (self.replica, self.replica),
            )
            return [Stored(*row) for row in rows]

        return await self._run(lambda: self._transaction(claim))
