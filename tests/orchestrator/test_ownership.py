"""A response belongs to the API key that created it (``owner``): to any other owner it is as
unknown as a missing one, on every path that names it, in this process, after a restart on
the same SQLite file, and on another replica of a shared Redis store. Also what the metrics
read: runs queued and running, responses stored."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import anyio
import pytest

from exloop.orchestrator.errors import InvalidRequest, ResponseNotFound
from exloop.orchestrator.items import InputText, Item, ItemReference, Message
from exloop.orchestrator.memory_store import MemoryStore
from exloop.orchestrator.redis_store import RedisStore
from exloop.orchestrator.service import Orchestrator, RunCounts
from exloop.orchestrator.spec import RunSpec
from exloop.orchestrator.sqlite_store import SqliteStore
from exloop.orchestrator.store import ResponseStore
from tests.fixtures.redis import RedisServer

from .scripted import ScriptedEngine, say

pytestmark = pytest.mark.anyio

ALICE, BOB = "key_alice", "key_bob"


def spec(text: str = "hi", **kwargs: object) -> RunSpec:
    return RunSpec(
        input=(Message(role="user", content=[InputText(text)]),),
        model="m",
        **kwargs,  # type: ignore[arg-type]
    )


def referring(item_id: str) -> RunSpec:
    return RunSpec(input=(ItemReference(id=item_id),), model="m")


def only_id(items: list[Item]) -> str:
    [item] = items
    item_id = getattr(item, "id", None)
    assert isinstance(item_id, str)
    return item_id


@asynccontextmanager
async def replica(store: ResponseStore, engine: ScriptedEngine) -> AsyncIterator[Orchestrator]:
    async with store, Orchestrator(engine, model_name="m", store=store) as orchestrator:
        yield orchestrator


async def refused_to(orch: Orchestrator, owner: str | None, response_id: str, item: str) -> None:
    """Every path that names the response answers ``owner`` as if it did not exist."""
    with pytest.raises(ResponseNotFound):
        await orch.retrieve(response_id, owner=owner)
    with pytest.raises(ResponseNotFound):
        await orch.subscribe(response_id, owner=owner)
    with pytest.raises(ResponseNotFound):
        await orch.input_items(response_id, owner=owner)
    with pytest.raises(ResponseNotFound):
        await orch.cancel(response_id, owner=owner)
    with pytest.raises(ResponseNotFound):
        await orch.delete(response_id, owner=owner)
    with pytest.raises(ResponseNotFound) as chained:
        await orch.create(spec(previous_response_id=response_id), owner=owner)
    assert chained.value.param == "previous_response_id"
    with pytest.raises(ResponseNotFound):
        await orch.count_input_tokens(spec(previous_response_id=response_id), owner=owner)
    with pytest.raises(ResponseNotFound):
        await orch.compact(spec(previous_response_id=response_id), owner=owner)
    with pytest.raises(InvalidRequest) as referenced:
        await orch.create(referring(item), owner=owner)
    assert referenced.value.param == "input[0].id"


async def allowed_to(orch: Orchestrator, owner: str, response_id: str, item: str) -> None:
    """The owner reads, follows, chains on and refers to it."""
    assert (await orch.retrieve(response_id, owner=owner)).status == "completed"
    assert [event async for event in await orch.subscribe(response_id, owner=owner)]
    assert only_id(await orch.input_items(response_id, owner=owner)) == item
    chained = await orch.create(spec("more", previous_response_id=response_id), owner=owner)
    assert (await chained.wait()).status == "completed"
    again = await orch.create(referring(item), owner=owner)
    assert (await again.wait()).status == "completed"


async def test_another_owner_sees_nothing() -> None:
    async with replica(MemoryStore(), ScriptedEngine([say("Yes.")])) as orch:
        handle = await orch.create(spec(), owner=ALICE)
        await handle.wait()
        item_id = only_id(await orch.input_items(handle.id, owner=ALICE))
        for stranger in (BOB, None):  # another key, or no key at all
            await refused_to(orch, stranger, handle.id, item_id)
        await allowed_to(orch, ALICE, handle.id, item_id)
        await orch.delete(handle.id, owner=ALICE)
        with pytest.raises(ResponseNotFound):
            await orch.retrieve(handle.id, owner=ALICE)


async def test_ownership_is_stored_and_survives_a_restart(tmp_path: Path) -> None:
    async with replica(SqliteStore(tmp_path / "r.db"), ScriptedEngine([say("Yes.")])) as orch:
        handle = await orch.create(spec(), owner=ALICE)
        await handle.wait()
        item_id = only_id(await orch.input_items(handle.id, owner=ALICE))
    # A new process on the same file: the record (and its owner) come from the store.
    async with replica(SqliteStore(tmp_path / "r.db"), ScriptedEngine([say("Ok.")])) as again:
        await refused_to(again, BOB, handle.id, item_id)
        await allowed_to(again, ALICE, handle.id, item_id)


async def test_ownership_holds_on_another_replica(redis_server: RedisServer) -> None:
    async with AsyncExitStack() as stack:
        engine = ScriptedEngine([say("Yes.")])
        a = await stack.enter_async_context(replica(RedisStore(redis_server.url), engine))
        b = await stack.enter_async_context(replica(RedisStore(redis_server.url), engine))
        handle = await a.create(spec(), owner=ALICE)
        await handle.wait()
        item_id = only_id(await a.input_items(handle.id, owner=ALICE))
        await refused_to(b, BOB, handle.id, item_id)
        await allowed_to(b, ALICE, handle.id, item_id)


async def test_run_counts_for_the_metrics() -> None:
    hold = anyio.Event()
    engine = ScriptedEngine([say("a long answer " * 20)], hold=hold)
    async with replica(MemoryStore(), engine) as orch:
        assert orch.counts() == RunCounts(queued=0, running=0, stored=0)
        background = await orch.create(spec(background=True))
        # Accepted, and its task not started yet: queued.
        assert (orch.counts().queued, orch.counts().running) == (1, 0)
        await (await engine.job(0)).first_token.wait()
        unstored = await orch.create(spec(store=False))
        await (await engine.job(1)).first_token.wait()
        assert (orch.counts().queued, orch.counts().running) == (0, 2)
        # The stored count is read from the store when asked (the unstored run is not there).
        assert await orch.count_stored() == 1
        assert orch.counts().stored == 1
        hold.set()
        await background.wait()
        await unstored.wait()
        assert (orch.counts().queued, orch.counts().running) == (0, 0)
        await (await orch.create(spec())).wait()
        assert await orch.count_stored() == 2
