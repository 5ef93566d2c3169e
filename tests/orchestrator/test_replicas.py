"""Orchestrators sharing a store: durability across a restart, the writer's guarantees, and
two replicas on one real Redis (scripted engine, so each test takes a moment)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import anyio
import anyio.abc
import pytest
import redis.asyncio as aioredis

from exloop.orchestrator import events as ev
from exloop.orchestrator.errors import ResponseNotFound, StoreError
from exloop.orchestrator.items import InputText, Message
from exloop.orchestrator.memory_store import MemoryStore
from exloop.orchestrator.redis_store import RedisStore
from exloop.orchestrator.resource import Response
from exloop.orchestrator.service import Orchestrator, RunHandle
from exloop.orchestrator.spec import RunSpec
from exloop.orchestrator.sqlite_store import SqliteStore
from exloop.orchestrator.store import ResponseStore
from tests.fixtures.redis import RedisServer

from .scripted import ScriptedEngine, say

pytestmark = pytest.mark.anyio


def spec(text: str = "hi", **kwargs: object) -> RunSpec:
    return RunSpec(
        input=(Message(role="user", content=[InputText(text)]),),
        model="m",
        **kwargs,  # type: ignore[arg-type]
    )


@asynccontextmanager
async def replica(store: ResponseStore, engine: ScriptedEngine) -> AsyncIterator[Orchestrator]:
    async with store, Orchestrator(engine, model_name="m", store=store) as orchestrator:
        yield orchestrator


@asynccontextmanager
async def doomed(store: ResponseStore, engine: ScriptedEngine) -> AsyncIterator[Orchestrator]:
    """A replica in its own task, for a test that then cuts its store off to play a crash
    (a dead process writes nothing more)."""
    async with anyio.create_task_group() as tg:

        async def run(*, task_status: anyio.abc.TaskStatus[Orchestrator]) -> None:
            async with replica(store, engine) as orchestrator:
                task_status.started(orchestrator)
                await anyio.sleep_forever()

        yield await tg.start(run)
        tg.cancel_scope.cancel()


async def first_delta(handle: RunHandle) -> None:
    """Return once the run has streamed text (so it is mid-generation)."""
    async for event in handle.events():
        if isinstance(event, ev.OutputTextDelta):
            return


async def test_the_end_is_stored_before_anyone_sees_it(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "r.db")
    async with replica(store, ScriptedEngine([say("All done here.")])) as orch:
        handle = await orch.create(spec())
        final = await handle.wait()
        stored = await store.load(handle.id)
        assert stored is not None and stored.replica is None
        events = [event async for event in handle.events()]
        assert stored.events == len(events)
    # Read back by a new process: the same response, the same events.
    async with replica(SqliteStore(tmp_path / "r.db"), ScriptedEngine([say("")])) as again:
        assert await again.retrieve(handle.id) == final
        replayed = [event async for event in await again.subscribe(handle.id)]
        assert replayed == events
        tail = [event async for event in await again.subscribe(handle.id, starting_after=3)]
        assert tail == events[4:]


async def test_responses_left_running_end_failed_on_restart(tmp_path: Path) -> None:
    engine = ScriptedEngine([say("done."), say("z" * 3000)], token_delay=0.01)
    first = SqliteStore(tmp_path / "r.db")
    async with doomed(first, engine) as crashed:
        done = await (await crashed.create(spec())).wait()
        running = await crashed.create(spec(background=True))
        await first_delta(running)
        await anyio.sleep(0.1)  # a few flushes of partial output
        # The process dies: nothing more reaches the file (the connection just closes).
        first._close()
        await check_restart(tmp_path, running.id, done)


async def check_restart(tmp_path: Path, running: str, done: Response) -> None:
    async with replica(SqliteStore(tmp_path / "r.db"), ScriptedEngine([say("")])) as orch:
        failed = await orch.retrieve(running)
        assert failed.status == "failed"
        assert failed.error is not None and failed.error.code == "server_restarted"
        assert failed.output and failed.output[0].status == "incomplete"
        events = [event async for event in await orch.subscribe(running)]
        assert [type(e) for e in events[-2:]] == [ev.ErrorEvent, ev.ResponseFailed]
        assert [e.sequence_number for e in events] == list(range(len(events)))
        assert await orch.retrieve(done.id) == done


async def test_delete_while_a_write_is_due_never_brings_it_back() -> None:
    store = MemoryStore()
    engine = ScriptedEngine([say("w" * 3000)], token_delay=0.002)
    async with replica(store, engine) as orch:
        handle = await orch.create(spec(background=True))
        await first_delta(handle)
        await orch.delete(handle.id)
        await handle.wait()
        await anyio.sleep(0.2)  # several flush intervals
        assert await store.load(handle.id) is None
        with pytest.raises(ResponseNotFound):
            await orch.retrieve(handle.id)


async def test_two_replicas_share_responses(redis_server: RedisServer) -> None:
    engine_a = ScriptedEngine([say("alpha " * 400)], token_delay=0.005)
    engine_b = ScriptedEngine([say("beta.")])
    async with AsyncExitStack() as stack:
        a = await stack.enter_async_context(replica(RedisStore(redis_server.url), engine_a))
        b = await stack.enter_async_context(replica(RedisStore(redis_server.url), engine_b))
        handle = await a.create(spec("first", background=True))
        await first_delta(handle)
        # B reads it while A runs it: GET, input items, the live stream. The run went
        # in_progress when its job started; A stores changes in batches, so write them now.
        await a._writer.flush()  # noqa: SLF001
        assert (await b.retrieve(handle.id)).status == "in_progress"
        assert [item.id for item in await b.input_items(handle.id)] == [
            item.id for item in await a.input_items(handle.id)
        ]
        followed = [event async for event in await b.subscribe(handle.id, starting_after=1)]
        final = await handle.wait()
        assert followed == [event async for event in handle.events(starting_after=1)]
        assert await b.retrieve(handle.id) == final
        # Chaining on B sees A's turn.
        follow_up = await (await b.create(spec("second", previous_response_id=handle.id))).wait()
        assert follow_up.status == "completed"
        prompt = engine_b.jobs[-1].request.prompt
        assert "alpha" in str(prompt)


async def test_cancel_and_delete_reach_the_owning_replica(redis_server: RedisServer) -> None:
    engine_a = ScriptedEngine([say("x" * 30000)], token_delay=0.002)
    async with AsyncExitStack() as stack:
        a = await stack.enter_async_context(replica(RedisStore(redis_server.url), engine_a))
        b = await stack.enter_async_context(replica(RedisStore(redis_server.url), engine_a))
        handle = await a.create(spec(background=True))
        await first_delta(handle)
        cancelled = await b.cancel(handle.id)
        assert cancelled.status == "cancelled"
        assert engine_a.jobs[0].cancelled
        assert (await a.retrieve(handle.id)).status == "cancelled"

        other = await a.create(spec(background=True))
        await first_delta(other)
        await b.delete(other.id)
        final = await other.wait()
        assert final.status == "cancelled"
        await anyio.sleep(0.2)  # A's writer had its chance to write it back
        for orch in (a, b):
            with pytest.raises(ResponseNotFound):
                await orch.retrieve(other.id)


async def test_a_dead_replica_s_work_fails_on_another(redis_server: RedisServer) -> None:
    engine = ScriptedEngine([say("q" * 30000)], token_delay=0.002)
    store_a = RedisStore(redis_server.url, heartbeat_timeout=0.5)
    async with (
        doomed(store_a, engine) as a,
        replica(RedisStore(redis_server.url, heartbeat_timeout=0.5), engine) as b,
    ):
        handle = await a.create(spec(background=True))
        await first_delta(handle)
        # A is cut off mid-run: no more writes, no heartbeat.
        alive, store_a._redis = store_a._redis, aioredis.Redis.from_url("redis://127.0.0.1:1/0")
        await alive.aclose()
        events = [event async for event in await b.subscribe(handle.id, starting_after=0)]
        assert isinstance(events[-1], ev.ResponseFailed)
        failed = await b.retrieve(handle.id)
        assert failed.error is not None and failed.error.code == "server_restarted"


async def test_a_store_that_is_down_refuses_new_work(redis_server: RedisServer) -> None:
    engine = ScriptedEngine([say("fine.")])
    async with replica(RedisStore(redis_server.url), engine) as orch:
        done = await (await orch.create(spec())).wait()
        redis_server.stop()
        with pytest.raises(StoreError):
            await orch.create(spec())
        with pytest.raises(StoreError):
            await orch.retrieve(done.id)
        assert engine.submitted == 1  # nothing ran unstored
