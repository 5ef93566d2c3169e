"""Every kind of object and event the server sends, over HTTP from the app (scripted engine),
as OpenAI's published schema, its SDK and Open Responses read them."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest

from exloop.engine.errors import GenerationFailed
from exloop.engine.protocol import GenerationRequest
from exloop.orchestrator.builtin import BuiltinTool
from tests.orchestrator.scripted import Script, ScriptedEngine, say
from tests.orchestrator.test_service import Lookup, tool_or_answer
from tests.wire import check_chat_chunk, check_chat_completion, check_event, check_response

from .test_app import running_app, sse_events

pytestmark = pytest.mark.anyio

LOOKUP = {"type": "function", "name": "lookup", "parameters": {"type": "object"}}
CHAT_LOOKUP = {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}
HI = [{"role": "user", "content": "hi"}]


def broken(request: GenerationRequest) -> str:
    raise GenerationFailed("the backend fell over")


@asynccontextmanager
async def client_for(script: Script, *, web: bool = False) -> AsyncIterator[httpx.AsyncClient]:
    tools: list[BuiltinTool] = [Lookup()] if web else []
    engine = ScriptedEngine([script])
    async with running_app(engine, builtins=lambda _spec: tools) as app:
        transport = httpx.ASGITransport(app)  # type: ignore[arg-type]
        async with httpx.AsyncClient(transport=transport, base_url="http://exloop") as client:
            yield client


def events_of(response: httpx.Response) -> list[dict[str, Any]]:
    data = [data for _, data in sse_events(response.text)]
    assert data[-1] == "[DONE]"
    return [json.loads(d) for d in data[:-1]]


RESPONSES: dict[str, tuple[Script, dict[str, Any], bool]] = {
    "text": (say("Hello."), {}, False),
    "verbosity": (say("Hello."), {"text": {"verbosity": "high"}}, False),
    "function call": (tool_or_answer, {"tools": [LOOKUP], "parallel_tool_calls": False}, False),
    "incomplete": (say("one two three four"), {"max_output_tokens": 2}, False),
    "failed": (broken, {}, False),
    "background": (say("Hello."), {"background": True}, False),
    "web search": (tool_or_answer, {"max_tool_calls": 1}, True),
}


@pytest.mark.parametrize("case", RESPONSES)
async def test_responses_and_their_events(case: str) -> None:
    script, fields, web = RESPONSES[case]
    body = {"model": "m", "input": "hi", **fields}
    async with client_for(script, web=web) as client:
        streamed = events_of(await client.post("/v1/responses", json={**body, "stream": True}))
        for event in streamed:
            check_event(event)
        final = streamed[-1]["response"]
        check_response(final)
        if not body.get("background"):
            whole = (await client.post("/v1/responses", json=body)).json()
            check_response(whole)
        stored = (await client.get(f"/v1/responses/{final['id']}")).json()
        check_response(stored)
    assert final["text"]["verbosity"] == fields.get("text", {}).get("verbosity", "medium")
    assert final["parallel_tool_calls"] is fields.get("parallel_tool_calls", True)
    assert final["max_tool_calls"] == fields.get("max_tool_calls")


CHATS: dict[str, tuple[Script, dict[str, Any]]] = {
    "text": (say("Hello."), {}),
    "tool calls": (tool_or_answer, {"tools": [CHAT_LOOKUP], "parallel_tool_calls": False}),
    "length": (say("one two three four"), {"max_tokens": 2}),
}


@pytest.mark.parametrize("case", CHATS)
async def test_chat_completions_and_chunks(case: str) -> None:
    script, fields = CHATS[case]
    body = {"model": "m", "messages": HI, **fields}
    async with client_for(script) as client:
        completion = (await client.post("/v1/chat/completions", json=body)).json()
        stream = {**body, "stream": True, "stream_options": {"include_usage": True}}
        chunks = events_of(await client.post("/v1/chat/completions", json=stream))
    check_chat_completion(completion)
    for chunk in chunks:
        check_chat_chunk(chunk)
    message = completion["choices"][0]["message"]
    assert message["annotations"] == [] and message["refusal"] is None
    assert ("tool_calls" in message) is (case == "tool calls")
    fingerprints = {completion["system_fingerprint"], *(c["system_fingerprint"] for c in chunks)}
    assert len(fingerprints) == 1 and fingerprints.pop().startswith("fp_")


async def test_a_failed_chat_is_an_error_object() -> None:
    async with client_for(broken) as client:
        answer = await client.post("/v1/chat/completions", json={"model": "m", "messages": HI})
    assert answer.status_code == 500
    assert set(answer.json()["error"]) == {"message", "type", "param", "code"}
