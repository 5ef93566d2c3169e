"""A client that goes away: over a real socket (uvicorn in process, scripted engine), a dropped
stream cancels its run unless the response is a background one."""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import anyio
import httpx
import pytest
import uvicorn

from exloop.orchestrator.service import Orchestrator
from exloop.server.app import AppSettings, build_app
from tests.orchestrator.scripted import ScriptedEngine, say

pytestmark = pytest.mark.anyio

#: Waits here end on events; this bound only turns a bug that would hang into a failure.
HANG_GUARD = 60


@asynccontextmanager
async def serving() -> AsyncIterator[tuple[httpx.AsyncClient, ScriptedEngine]]:
    """The app on a real socket. Its engine's jobs stop after their first token until the
    test sets ``engine.hold``: a run is certainly still going when a client drops."""
    engine = ScriptedEngine([say("word " * 30)], hold=anyio.Event())
    # Bound and listening before the server starts: no other process can take the port in
    # between, and early connections wait in the backlog until the server accepts them.
    with socket.create_server(("127.0.0.1", 0)) as sock:
        port = sock.getsockname()[1]
        async with Orchestrator(engine, model_name="served") as orchestrator:
            app = build_app(orchestrator, AppSettings("served"))
            server = uvicorn.Server(uvicorn.Config(app, lifespan="on", log_level="warning"))
            async with anyio.create_task_group() as tg:
                tg.start_soon(server.serve, [sock])
                async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
                    yield client, engine
                server.should_exit = True


async def first_events(
    client: httpx.AsyncClient, method: str, url: str, count: int, **kwargs: Any
) -> list[dict[str, Any]]:
    """Read ``count`` events of a stream, then drop the connection."""
    events: list[dict[str, Any]] = []
    async with client.stream(method, url, **kwargs) as response:
        assert response.headers["content-type"] == "text/event-stream"
        async for line in response.aiter_lines():
            if line.startswith("data: {"):
                events.append(json.loads(line.removeprefix("data: ")))
                if len(events) == count:
                    break
    return events


async def final_event(client: httpx.AsyncClient, response_id: str) -> str:
    """The type of the response's terminal event: its stored log, followed to the end."""
    with anyio.fail_after(HANG_GUARD):
        events = await first_events(
            client, "GET", f"/v1/responses/{response_id}", -1, params={"stream": "true"}
        )
    return str(events[-1]["type"])


async def test_dropping_a_stream_cancels_its_run() -> None:
    async with serving() as (client, engine):
        events = await first_events(
            client, "POST", "/v1/responses", 5, json={"input": "hi", "stream": True}
        )
        assert events[-1]["type"] == "response.output_text.delta"
        response_id = events[0]["response"]["id"]
        assert await final_event(client, response_id) == "response.cancelled"
        assert engine.jobs[0].cancelled


async def test_dropping_a_chat_stream_cancels_its_run() -> None:
    async with serving() as (client, engine):
        await first_events(
            client,
            "POST",
            "/v1/chat/completions",
            2,
            json={
                "model": "m",
                "messages": [{"role": "user", "content": "hi"}],
                "stream": True,
            },
        )
        job = await engine.job(0)
        with anyio.fail_after(HANG_GUARD):
            await job.ended.wait()
        assert job.cancelled


async def test_a_background_response_outlives_its_streams() -> None:
    async with serving() as (client, engine):
        events = await first_events(
            client,
            "POST",
            "/v1/responses",
            3,
            json={
                "input": "hi",
                "stream": True,
                "background": True,
            },
        )
        response_id = events[0]["response"]["id"]
        replay = await first_events(
            client,
            "GET",
            f"/v1/responses/{response_id}",
            2,
            params={"stream": "true", "starting_after": 1},
        )
        assert replay[0]["sequence_number"] == 2
        # Both streams are gone while the run is held after its first token; let it go on.
        assert engine.hold is not None
        engine.hold.set()
        assert await final_event(client, response_id) == "response.completed"
        assert not engine.jobs[0].cancelled


async def test_dropping_a_waiting_request_cancels_its_run() -> None:
    async with serving() as (client, engine), anyio.create_task_group() as tg:
        tg.start_soon(partial(client.post, "/v1/responses", json={"input": "hi"}))
        job = await engine.job(0)
        await job.first_token.wait()
        tg.cancel_scope.cancel()  # the client gives up: its connection closes
    with anyio.fail_after(HANG_GUARD):
        await job.ended.wait()
    assert job.cancelled


async def test_start_up_fails_loudly_without_blacksheeps_receive_channel(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Disconnects are noticed through the ASGI receive channel BlackSheep keeps on a
    request's content; a BlackSheep without it must stop the server at start-up, not leave
    every dropped stream running."""

    class WithoutReceive:
        def __init__(self, receive: object) -> None:
            self.body = None

    monkeypatch.setattr("blacksheep.contents.ASGIContent", WithoutReceive)
    monkeypatch.setattr("exloop.server.streaming.ASGIContent", WithoutReceive, raising=False)
    async with Orchestrator(ScriptedEngine([say("hi")]), model_name="served") as orchestrator:
        with pytest.raises(RuntimeError, match="disconnect"):
            build_app(orchestrator, AppSettings("served"))
