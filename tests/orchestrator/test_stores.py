"""Every store (memory, SQLite, a real Redis) against one contract: records and events in and
out, the item index, deletes, retention by age, count and bytes, and refused writes."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Protocol

import anyio
import pytest
import redis

from exloop.orchestrator.errors import StoreError
from exloop.orchestrator.memory_store import MemoryStore
from exloop.orchestrator.redis_store import RedisStore
from exloop.orchestrator.sqlite_store import SqliteStore
from exloop.orchestrator.store import RecordWrite, ResponseStore, Retention
from tests.fixtures.redis import RedisServer

pytestmark = pytest.mark.anyio


class Clock:
    """A settable clock, so retention is tested without waiting."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


class MakeStore(Protocol):
    def __call__(
        self, retention: Retention | None = None, clock: Clock | None = None
    ) -> ResponseStore: ...


@pytest.fixture(params=["memory", "sqlite", "redis"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> MakeStore:
    kind: str = request.param

    def make(retention: Retention | None = None, clock: Clock | None = None) -> ResponseStore:
        retention, clock = retention or Retention(), clock or Clock()
        if kind == "memory":
            return MemoryStore(retention, clock=clock)
        if kind == "sqlite":
            return SqliteStore(tmp_path / "r.db", retention, clock=clock)
        redis: RedisServer = request.getfixturevalue("redis_server")
        return RedisStore(redis.url, retention, clock=clock)

    return make


def write(
    rid: str,
    events: list[bytes],
    *,
    first: int = 0,
    done: bool = False,
    record: bytes = b"{}",
    items: tuple[str, ...] = (),
) -> RecordWrite:
    # The fixed part goes with a response's first write only.
    fixed = b"{}" if first == 0 else None
    return RecordWrite(rid, record, fixed, tuple(events), first, done, items)


async def kept(store: ResponseStore, ids: list[str]) -> list[str]:
    return [rid for rid in ids if await store.load(rid) is not None]


async def collect(events: AsyncIterator[bytes]) -> list[bytes]:
    return [event async for event in events]


async def test_records_events_and_items(make_store: MakeStore) -> None:
    async with make_store() as store:
        assert await store.save([write("r1", [b"e0", b"e1"], items=("msg_a",))]) == set()
        stored = await store.load("r1")
        assert stored is not None
        assert (stored.record, stored.fixed) == (b"{}", b"{}")
        assert (stored.events, stored.replica) == (2, store.replica)
        # A later batch adds events and replaces the record; a resent event is not doubled.
        await store.save([write("r1", [b"e1", b"e2", b"e3"], first=1, done=True, record=b"[1]")])
        stored = await store.load("r1")
        assert stored is not None
        assert (stored.record, stored.events, stored.replica) == (b"[1]", 4, None)
        assert await collect(store.events("r1", -1)) == [b"e0", b"e1", b"e2", b"e3"]
        assert await collect(store.events("r1", 1)) == [b"e2", b"e3"]
        assert await store.response_of_item("msg_a") == "r1"
        assert await store.response_of_item("msg_b") is None
        assert await store.load("r2") is None


async def test_delete_removes_everything_and_refuses_later_writes(make_store: MakeStore) -> None:
    async with make_store() as store:
        await store.save([write("r1", [b"e0"], items=("msg_a",))])
        removed = await store.delete("r1")
        assert removed is not None and removed.replica == store.replica
        assert await store.load("r1") is None
        assert await collect(store.events("r1", -1)) == []
        assert await store.response_of_item("msg_a") is None
        assert await store.delete("r1") is None
        # The run that still held it cannot write it back.
        assert await store.save([write("r1", [b"e1"], first=1)]) == {"r1"}
        assert await store.load("r1") is None


async def test_count_is_running_and_finished_responses(make_store: MakeStore) -> None:
    async with make_store(Retention(max_responses=2)) as store:
        assert await store.count() == 0
        await store.save([write("r1", [b"e0"]), write("r2", [b"e0"], done=True)])
        assert await store.count() == 2
        # Retention keeps the count at its cap, and a delete lowers it.
        await store.save([write("r3", [b"e0"], done=True)])
        assert await store.count() == 2
        await store.delete("r1")
        assert await store.count() == 1


async def test_a_finished_response_takes_no_more_writes(make_store: MakeStore) -> None:
    async with make_store() as store:
        await store.save([write("r1", [b"e0"], done=True)])
        assert await store.save([write("r1", [b"e1"], first=1)]) == {"r1"}


async def test_ttl_drops_finished_responses_never_running_ones(make_store: MakeStore) -> None:
    clock = Clock()
    async with make_store(Retention(ttl=100), clock) as store:
        await store.save([write("old", [b"e"], done=True), write("running", [b"e"])])
        clock.now += 50
        await store.save([write("new", [b"e"], done=True)])
        clock.now += 60  # "old" is 110 s past its end, "new" 60 s
        assert await store.load("old") is None  # expired on read already
        await store.upkeep()
        assert await store.load("old") is None
        assert await store.load("new") is not None
        assert await store.load("running") is not None
        clock.now += 10_000
        await store.upkeep()
        assert await store.load("new") is None
        assert await store.load("running") is not None


async def test_count_cap_evicts_the_oldest_finished(make_store: MakeStore) -> None:
    clock = Clock()
    async with make_store(Retention(max_responses=3), clock) as store:
        await store.save([write("running", [b"e"])])
        for n in range(5):
            clock.now += 1
            await store.save([write(f"done{n}", [b"e"], done=True, items=(f"item{n}",))])
        kept = [
            rid for rid in ["running", *(f"done{n}" for n in range(5))] if await store.load(rid)
        ]
        assert kept == ["running", "done3", "done4"]
        assert await store.response_of_item("item0") is None
        assert await store.response_of_item("item4") == "done4"


async def test_byte_cap_evicts_the_oldest_finished(make_store: MakeStore) -> None:
    clock = Clock()
    async with make_store(Retention(max_bytes=2500), clock) as store:
        await store.save([write("running", [b"x" * 1000])])  # counts, but is never evicted
        for n in range(4):
            clock.now += 1
            await store.save([write(f"done{n}", [b"y" * 500], done=True)])
        kept = [
            rid for rid in ["running", *(f"done{n}" for n in range(4))] if await store.load(rid)
        ]
        # 1004 + 504 per finished response: two finished ones fit under 2500 bytes.
        assert kept == ["running", "done2", "done3"]


async def test_one_response_larger_than_the_cap_is_not_kept(make_store: MakeStore) -> None:
    async with make_store(Retention(max_bytes=1000)) as store:
        await store.save([write("huge", [b"z" * 5000], done=True)])
        assert await store.load("huge") is None
        await store.save([write("small", [b"z" * 10], done=True)])
        assert await store.load("small") is not None


async def test_sqlite_restart_claims_what_a_dead_process_left_running(tmp_path: Path) -> None:
    path = tmp_path / "r.db"
    first = SqliteStore(path)
    async with first:
        await first.save([write("left", [b"e0", b"e1"]), write("done", [b"e"], done=True)])
    second = SqliteStore(path)
    async with second:
        orphans = await second.claim_orphans()
        assert [(o.events, o.replica) for o in orphans] == [(2, first.replica)]
        assert await second.claim_orphans() == []  # claimed once
        # The new owner ends it.
        assert await second.save([write("left", [b"end"], first=2, done=True)]) == set()
        assert await collect(second.events("left", -1)) == [b"e0", b"e1", b"end"]


async def test_sqlite_file_is_one_process_s(tmp_path: Path) -> None:
    async with SqliteStore(tmp_path / "r.db"):
        with pytest.raises(StoreError, match="in use by another exloop process"):
            async with SqliteStore(tmp_path / "r.db"):
                pass


async def test_sqlite_file_from_a_newer_exloop_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "r.db"
    async with SqliteStore(path):
        pass
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("UPDATE schema_version SET version = version + 1")
    db.close()
    with pytest.raises(StoreError, match="newer than this exloop knows"):
        async with SqliteStore(path):
            pass


async def test_redis_with_a_newer_layout_is_refused(redis_server: RedisServer) -> None:
    with redis.Redis.from_url(redis_server.url) as client:
        client.set("exloop:layout", 99)
    with pytest.raises(StoreError, match="newer than this exloop knows"):
        async with RedisStore(redis_server.url):
            pass


async def test_redis_replicas_claim_a_gone_replica_s_work(redis_server: RedisServer) -> None:
    a = RedisStore(redis_server.url, heartbeat_timeout=0.5)
    b = RedisStore(redis_server.url, heartbeat_timeout=0.5)
    async with b:
        await a.__aenter__()
        await a.save([write("r1", [b"e0"])])
        assert await b.alive(a.replica)
        assert await b.claim_orphans() == []  # a is alive
        assert await b.claim("r1", a.replica) is None
        # a dies without a word: its heartbeat expires.
        await a._redis.aclose()
        while await b.alive(a.replica):
            await anyio.sleep(0.1)
        claimed = await b.claim_orphans()
        assert [(c.events, c.replica) for c in claimed] == [(1, b.replica)]
        # a comes back (after a long pause, say): its writes are refused, b's are taken.
        back = RedisStore(redis_server.url)
        back.replica = a.replica
        async with back:
            assert await back.save([write("r1", [b"late"], first=1)]) == {"r1"}
        assert await b.save([write("r1", [b"failed"], first=1, done=True)]) == set()
        assert await collect(b.events("r1", -1)) == [b"e0", b"failed"]
