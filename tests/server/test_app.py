"""The HTTP application in process, over a scripted engine: routes, answers and streams as
OpenAI's SDK reads them. (The real model is exercised in ``tests/e2e``.)"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import openai
import pytest
from blacksheep import Application

from exloop.engine.errors import GenerationFailed
from exloop.engine.protocol import GenerationRequest
from exloop.orchestrator.builtin import BuiltinFactory
from exloop.orchestrator.service import Orchestrator
from exloop.server.api_keys import ApiKeys
from exloop.server.app import AppSettings, build_app
from exloop.server.limits import Limits
from tests.orchestrator.scripted import ScriptedEngine, say

pytestmark = pytest.mark.anyio

ANSWER = "Hello there, friend."


@asynccontextmanager
async def running_app(
    engine: ScriptedEngine,
    api_key: str | None = None,
    limits: Limits | None = None,
    builtins: BuiltinFactory | None = None,
    grammar_timeout: float | None = None,
) -> AsyncIterator[Application]:
    async with Orchestrator(
        engine, model_name="served", builtins=builtins, grammar_timeout=grammar_timeout
    ) as orchestrator:
        keys = ApiKeys([api_key] if api_key else [])
        app = build_app(
            orchestrator, AppSettings("served", api_keys=keys, limits=limits or Limits())
        )
        await app.start()
        try:
            yield app
        finally:
            await app.stop()


@asynccontextmanager
async def http_client(
    script: str = ANSWER,
    *,
    api_key: str | None = None,
    delay: float = 0.0,
    limits: Limits | None = None,
    engine: ScriptedEngine | None = None,
    grammar_timeout: float | None = None,
) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the app over ``engine`` (by default one that says ``script``)."""
    engine = engine or ScriptedEngine([say(script)], token_delay=delay)
    async with running_app(engine, api_key, limits, grammar_timeout=grammar_timeout) as app:
        transport = httpx.ASGITransport(app)  # type: ignore[arg-type]
        async with httpx.AsyncClient(transport=transport, base_url="http://exloop") as client:
            yield client


def sse_events(body: str) -> list[tuple[str | None, str]]:
    """(event name, data) of each server-sent event."""
    events = []
    for block in body.strip().split("\n\n"):
        name = data = None
        for line in block.split("\n"):
            if line.startswith("event: "):
                name = line.removeprefix("event: ")
            elif line.startswith("data: "):
                data = line.removeprefix("data: ")
        assert data is not None, block
        events.append((name, data))
    return events


async def test_create_and_retrieve() -> None:
    async with http_client() as client:
        created = await client.post("/v1/responses", json={"input": "hi", "model": "gpt-x"})
        assert created.status_code == 200
        assert created.headers["content-type"] == "application/json"
        body = created.json()
        assert body["status"] == "completed" and body["model"] == "gpt-x"
        assert body["output"][0]["content"][0]["text"] == ANSWER
        again = await client.get(f"/v1/responses/{body['id']}")
        assert again.json() == body


async def test_stream_sends_named_events_then_done() -> None:
    async with http_client() as client:
        response = await client.post("/v1/responses", json={"input": "hi", "stream": True})
        assert response.headers["content-type"] == "text/event-stream"
        events = sse_events(response.text)
    assert events[-1] == (None, "[DONE]")
    payloads = [json.loads(data) for _, data in events[:-1]]
    assert [name for name, _ in events[:-1]] == [p["type"] for p in payloads]
    assert payloads[0]["type"] == "response.created"
    assert payloads[-1]["type"] == "response.completed"
    assert [p["sequence_number"] for p in payloads] == list(range(len(payloads)))
    text = "".join(p["delta"] for p in payloads if p["type"] == "response.output_text.delta")
    assert text == ANSWER


async def test_replay_from_a_sequence_number() -> None:
    async with http_client() as client:
        created = (await client.post("/v1/responses", json={"input": "hi"})).json()
        replay = await client.get(
            f"/v1/responses/{created['id']}", params={"stream": "true", "starting_after": 2}
        )
        numbers = [json.loads(d)["sequence_number"] for _, d in sse_events(replay.text)[:-1]]
        assert numbers[0] == 3 and numbers == sorted(numbers)
        bad = await client.get(
            f"/v1/responses/{created['id']}", params={"stream": "true", "starting_after": "x"}
        )
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "starting_after"


async def test_background_cancel_and_delete() -> None:
    async with http_client("word " * 200, delay=0.01) as client:
        created = await client.post("/v1/responses", json={"input": "hi", "background": True})
        body = created.json()
        assert body["status"] == "queued" and body["background"] is True
        cancelled = await client.post(f"/v1/responses/{body['id']}/cancel")
        assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
        deleted = await client.delete(f"/v1/responses/{body['id']}")
        assert deleted.json() == {"id": body["id"], "object": "response", "deleted": True}
        gone = await client.get(f"/v1/responses/{body['id']}")
        assert gone.status_code == 404


async def test_input_items_pages() -> None:
    async with http_client() as client:
        items = [{"role": "user", "content": f"turn {i}"} for i in range(3)]
        created = (await client.post("/v1/responses", json={"input": items})).json()
        url = f"/v1/responses/{created['id']}/input_items"
        listing = (await client.get(url)).json()
        assert listing["object"] == "list" and listing["has_more"] is False
        texts = [item["content"][0]["text"] for item in listing["data"]]
        assert texts == ["turn 2", "turn 1", "turn 0"]
        assert all(item["id"] for item in listing["data"])
        first = (await client.get(url, params={"order": "asc", "limit": 1})).json()
        assert first["has_more"] is True and first["first_id"] == first["last_id"]
        rest = (await client.get(url, params={"order": "asc", "after": first["last_id"]})).json()
        assert [i["content"][0]["text"] for i in rest["data"]] == ["turn 1", "turn 2"]


async def test_models_and_health() -> None:
    async with http_client() as client:
        models = (await client.get("/v1/models")).json()
        assert models["object"] == "list"
        assert [(m["id"], m["object"]) for m in models["data"]] == [("served", "model")]
        assert (await client.get("/v1/models/served")).json() == models["data"][0]
        missing = await client.get("/v1/models/other")
        assert missing.status_code == 404 and missing.json()["error"]["param"] == "model"
        health = await client.get("/health")
        assert health.status_code == 200
        assert health.json()["status"] == "ok"
        assert set(health.json()["engine"]) == {
            "running",
            "queued",
            "parallel",
            "cache_tokens_used",
            "cache_tokens",
        }


async def test_every_failure_is_an_error_object() -> None:
    async with http_client() as client:
        answers = [
            (await client.get("/nowhere"), 404),
            (await client.delete("/v1/models"), 405),
            (await client.post("/v1/responses", content=b"{nope"), 400),
            (await client.post("/v1/responses", json={"input": "x", "top_p": 9}), 400),
            (await client.get("/v1/responses/resp_missing"), 404),
        ]
    for response, status in answers:
        assert response.status_code == status
        assert response.headers["content-type"] == "application/json"
        assert set(response.json()["error"]) == {"message", "type", "param", "code"}


async def test_api_key() -> None:
    async with http_client(api_key="sesame") as client:
        assert (await client.get("/health")).status_code == 200
        missing = await client.get("/v1/models")
        assert missing.status_code == 401
        assert missing.json()["error"]["code"] == "invalid_api_key"
        ok = await client.get("/v1/models", headers={"Authorization": "Bearer sesame"})
        assert ok.status_code == 200


@asynccontextmanager
async def sdk(script: str = ANSWER) -> AsyncIterator[openai.AsyncOpenAI]:
    async with (
        http_client(script) as http,
        openai.AsyncOpenAI(
            base_url="http://exloop/v1", api_key="k", http_client=http, max_retries=0
        ) as client,
    ):
        yield client


async def test_sdk_reads_responses_and_their_stream() -> None:
    async with sdk() as client:
        response = await client.responses.create(model="m", input="hi")
        assert response.output_text == ANSWER
        async with client.responses.stream(model="m", input="hi") as stream:
            deltas = [e.delta async for e in stream if e.type == "response.output_text.delta"]
            final = await stream.get_final_response()
        assert "".join(deltas) == ANSWER and final.status == "completed"


async def test_sdk_reads_chat_completions() -> None:
    async with sdk() as client:
        completion = await client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hi"}]
        )
        assert completion.choices[0].message.content == ANSWER
        assert completion.choices[0].finish_reason == "stop"
        fingerprint = completion.system_fingerprint
        assert fingerprint is not None and fingerprint.startswith("fp_")
        chunks = [
            c
            async for c in await client.chat.completions.create(
                model="m",
                messages=[{"role": "user", "content": "hi"}],
                stream=True,
                stream_options={"include_usage": True},
            )
        ]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert {c.system_fingerprint for c in chunks} == {fingerprint}
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == ANSWER
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None


async def test_a_body_past_the_limit_is_413_declared_or_streamed() -> None:
    async with http_client(limits=Limits(max_body_bytes=1000)) as client:
        body = json.dumps({"input": "x" * 2000}).encode()
        declared = await client.post(
            "/v1/responses", content=body, headers={"content-type": "application/json"}
        )

        async def chunks() -> AsyncIterator[bytes]:
            for start in range(0, len(body), 100):
                yield body[start : start + 100]

        streamed = await client.post(
            "/v1/chat/completions", content=chunks(), headers={"content-type": "application/json"}
        )
        fits = await client.post("/v1/responses", json={"input": "x" * 500})
    for response in (declared, streamed):
        assert response.status_code == 413
        assert response.json()["error"]["code"] == "request_too_large"
        assert "1000 bytes" in response.json()["error"]["message"]
    assert fits.status_code == 200


@pytest.mark.parametrize(
    ("headers", "code"),
    [
        ({"content-type": "text/plain"}, "unsupported_media_type"),
        ({"content-type": "application/x-www-form-urlencoded"}, "unsupported_media_type"),
        (
            {"content-type": "application/json", "content-encoding": "gzip"},
            "unsupported_content_encoding",
        ),
    ],
)
async def test_bodies_that_are_not_plain_json_are_415(headers: dict[str, str], code: str) -> None:
    async with http_client() as client:
        for path in ("/v1/responses", "/v1/chat/completions"):
            response = await client.post(path, content=b'{"input": "hi"}', headers=headers)
            assert response.status_code == 415, response.text
            assert response.json()["error"]["code"] == code


async def test_json_media_types_and_no_content_type_are_read() -> None:
    async with http_client() as client:
        for headers in (
            {"content-type": "application/json; charset=utf-8"},
            {"content-type": "application/vnd.api+json"},
            {},
        ):
            response = await client.post(
                "/v1/responses", content=b'{"input": "hi"}', headers=headers
            )
            assert response.status_code == 200, response.text


async def test_a_failed_chat_stream_sends_one_error_then_done() -> None:
    def broken(request: GenerationRequest) -> str:
        raise GenerationFailed("the backend fell over")

    async with running_app(ScriptedEngine([broken])) as app:
        transport = httpx.ASGITransport(app)  # type: ignore[arg-type]
        async with httpx.AsyncClient(transport=transport, base_url="http://exloop") as client:
            response = await client.post(
                "/v1/chat/completions",
                json={
                    "model": "m",
                    "messages": [{"role": "user", "content": "hi"}],
                    "stream": True,
                },
            )
    data = [data for _, data in sse_events(response.text)]
    assert data[-1] == "[DONE]"
    errors = [json.loads(d)["error"] for d in data[:-1] if "error" in json.loads(d)]
    assert errors == [
        {
            "message": "the backend fell over",
            "type": "server_error",
            "param": None,
            "code": "server_error",
        }
    ]
    assert data[-2] == json.dumps({"error": errors[0]}, separators=(",", ":"))
