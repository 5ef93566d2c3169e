"""A client that goes away: over a real socket (uvicorn in process, scripted engine), a dropped
stream cancels its run unless the response is a background one."""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx
import pytest
import uvicorn

from exloop.orchestrator.service import Orchestrator
from exloop.server.app import AppSettings, build_app
from tests.orchestrator.scripted import ScriptedEngine, say

pytestmark = pytest.mark.anyio

#: Long enough (400 tokens, 10 ms each) that nothing finishes on its own during a test.
LONG = "word " * 1200


@asynccontextmanager
async def serving() -> AsyncIterator[tuple[httpx.AsyncClient, ScriptedEngine]]:
    engine = ScriptedEngine([say(LONG)], token_delay=0.01)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    async with Orchestrator(engine, model_name="served") as orchestrator:
        app = build_app(orchestrator, AppSettings("served"))
        server = uvicorn.Server(
            uvicorn.Config(
                app,
                host="127.0.0.1",
                port=port,
                lifespan="on",
                log_level="warning",
            )
        )
        async with anyio.create_task_group() as tg:
            tg.start_soon(server.serve)
            while not server.started:
                await anyio.sleep(0.01)
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


async def status_soon(client: httpx.AsyncClient, response_id: str, wanted: str) -> str:
    """The response's status once it is ``wanted``, or after a second."""
    status = ""
    with anyio.move_on_after(1.0):
        while status != wanted:
            status = (await client.get(f"/v1/responses/{response_id}")).json()["status"]
            await anyio.sleep(0.02)
    return status


async def test_dropping_a_stream_cancels_its_run() -> None:
    async with serving() as (client, engine):
        events = await first_events(
            client, "POST", "/v1/responses", 6, json={"input": "hi", "stream": True}
        )
        response_id = events[0]["response"]["id"]
        assert await status_soon(client, response_id, "cancelled") == "cancelled"
        assert engine.jobs[0].cancelled


async def test_dropping_a_chat_stream_cancels_its_run() -> None:
    async with serving() as (client, engine):
        await first_events(
            client,
            "POST",
            "/v1/chat/completions",
            3,
            json={
                "model": "m",
                "messages": [{"role": "user", "content": "hi"}],
                "stream": True,
            },
        )
        with anyio.fail_after(1.0):
            while not engine.jobs[0].cancelled:
                await anyio.sleep(0.02)


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
        await anyio.sleep(0.2)
        assert (await client.get(f"/v1/responses/{response_id}")).json()["status"] == (
            "in_progress"
        )
        assert not engine.jobs[0].cancelled
        cancelled = await client.post(f"/v1/responses/{response_id}/cancel")
        assert cancelled.json()["status"] == "cancelled"


async def test_dropping_a_waiting_request_cancels_its_run() -> None:
    async with serving() as (client, engine):
        with pytest.raises(httpx.ReadTimeout):
            await client.post("/v1/responses", json={"input": "hi"}, timeout=0.3)
        with anyio.fail_after(1.0):
            while not engine.jobs[0].cancelled:
                await anyio.sleep(0.02)


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
