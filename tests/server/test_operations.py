"""The operations pieces in process: key ids, request ids, CORS decisions, the JSON log line,
the OpenAPI document, and keep-alives on a stream followed from another replica. (Their
end-to-end tests are in ``tests/e2e/test_operations.py``.)"""

from __future__ import annotations

import json
import logging
from contextlib import AsyncExitStack

import anyio
import httpx
import pytest
from openapi_spec_validator import validate

from exloop.orchestrator.items import InputText, Message
from exloop.orchestrator.redis_store import RedisStore
from exloop.orchestrator.service import Orchestrator
from exloop.orchestrator.spec import RunSpec
from exloop.server.api_keys import ApiKeys, key_id
from exloop.server.app import AppSettings, build_app, operations
from exloop.server.gateway import CorsPolicy, Gateway, request_id
from exloop.server.logs import REQUEST_ID, JsonFormatter, fields
from exloop.server.metrics import Metrics
from exloop.server.openapi import openapi_document
from exloop.server.streaming import KEEPALIVE
from tests.fixtures.redis import RedisServer
from tests.orchestrator.scripted import ScriptedEngine, say


def test_keys_are_known_by_their_ids() -> None:
    keys = ApiKeys(["sk-one", "sk-two", "sk-one", ""])
    assert len(keys) == 2
    assert keys.identify(b"sk-two") == key_id("sk-two") != key_id("sk-one")
    assert keys.identify(b"sk-three") is None and keys.identify(b"") is None
    assert "sk-one" not in key_id("sk-one") and "sk-one" not in repr(keys)
    assert not ApiKeys()


def test_request_ids_are_cleaned_and_bounded() -> None:
    assert request_id([(b"x-request-id", b"abc-123")]) == b"abc-123"
    assert request_id([(b"x-request-id", b"a\r\nb <c>" + b"d" * 200)]) == b"abc" + b"d" * 125
    made = request_id([(b"x-request-id", b"\x00\n")])
    assert made.startswith(b"req_") and len(made) == 36
    assert request_id([]) != request_id([])


def test_cors_policy() -> None:
    assert CorsPolicy.of([]) is None
    policy = CorsPolicy.of(["https://a.example/", " https://b.example"])
    assert policy is not None
    assert policy.allows(b"https://a.example") == b"https://a.example"
    assert policy.allows(b"https://c.example") is None
    anyone = CorsPolicy.of(["*"])
    assert anyone is not None and anyone.allows(b"https://c.example") == b"*"


def test_json_log_lines_carry_the_request_id_and_fields() -> None:
    record = logging.LogRecord("exloop.server", logging.INFO, __file__, 1, "request", None, None)
    record.__dict__.update(fields(status=200, path="/v1/models"))
    record.request_id = "trace-1"
    line = json.loads(JsonFormatter().format(record))
    assert line["event"] == "request" and line["request_id"] == "trace-1"
    assert line["level"] == "info" and line["status"] == 200 and line["path"] == "/v1/models"
    assert line["time"].endswith("Z")
    assert REQUEST_ID.get() is None


def test_openapi_document_validates_and_covers_every_route() -> None:
    settings = AppSettings("served", api_keys=ApiKeys(["k"]), metrics=Metrics())
    table = [operation for operation, _ in operations(settings)]
    document = openapi_document(table, title="exloop", version="1", secured=True)
    validate(document)
    served = {(op.method.lower(), op.path) for op in table}
    described = {(method, path) for path, ops in document["paths"].items() for method in ops}
    assert served == described
    assert document["paths"]["/health"]["get"]["security"] == []
    # Input items are documented as the item types the entries become.
    schemas = document["components"]["schemas"]
    assert "Message" in json.dumps(schemas["ResponsesRequest"]["properties"]["input"])
    assert "ItemPage" in schemas


@pytest.mark.anyio
async def test_gateway_answers_while_loading_then_passes_requests_on() -> None:
    gateway = Gateway(metrics=Metrics())
    transport = httpx.ASGITransport(gateway)
    async with httpx.AsyncClient(transport=transport, base_url="http://exloop") as client:
        loading = await client.get("/health")
        assert loading.status_code == 503 and loading.json() == {"status": "loading"}
        refused = await client.get("/v1/models", headers={"X-Request-Id": "r1"})
        assert refused.status_code == 503 and refused.headers["x-request-id"] == "r1"
        assert refused.json()["error"]["code"] == "model_loading"
        async with Orchestrator(ScriptedEngine([say("hi")]), model_name="served") as orchestrator:
            app = build_app(orchestrator, AppSettings("served"))
            await app.start()  # type: ignore[no-untyped-call]
            gateway.open(app)
            ready = await client.get("/health")
            assert ready.status_code == 200 and ready.headers["x-request-id"].startswith("req_")


@pytest.mark.anyio
async def test_keep_alive_on_a_stream_followed_from_another_replica(
    redis_server: RedisServer,
) -> None:
    """Replica A runs a response that stalls after its first token; a client follows it
    through replica B (the events come from Redis) and gets keep-alive comments meanwhile."""
    hold = anyio.Event()
    engine = ScriptedEngine([say("Followed from elsewhere.")], hold=hold)
    async with AsyncExitStack() as stack:
        a, b = [
            await stack.enter_async_context(
                Orchestrator(
                    engine,
                    model_name="served",
                    store=await stack.enter_async_context(RedisStore(redis_server.url)),
                )
            )
            for _ in range(2)
        ]
        app = build_app(b, AppSettings("served", sse_keepalive=0.05))
        await app.start()  # type: ignore[no-untyped-call]
        stack.push_async_callback(app.stop)
        text = (Message(role="user", content=[InputText("hi")]),)
        handle = await a.create(RunSpec(input=text, model="served", background=True))
        await (await engine.job(0)).first_token.wait()

        sent: list[bytes] = []
        kept_alive = anyio.Event()

        async def watched(scope: dict[str, object], receive: object, send: object) -> None:
            async def sending(message: dict[str, object]) -> None:
                body = message.get("body", b"")
                if isinstance(body, bytes) and body:
                    sent.append(body)
                    if body == KEEPALIVE:
                        kept_alive.set()
                await send(message)  # type: ignore[operator]

            await app(scope, receive, sending)

        transport = httpx.ASGITransport(watched)  # type: ignore[arg-type]
        async with (
            httpx.AsyncClient(transport=transport, base_url="http://exloop") as client,
            anyio.create_task_group() as tg,
        ):
            tg.start_soon(client.get, f"/v1/responses/{handle.id}?stream=true")
            with anyio.fail_after(60):  # a bound for a broken build; it passes in moments
                await kept_alive.wait()
            hold.set()
        stream = b"".join(sent).decode()
        assert stream.index(KEEPALIVE.decode()) < stream.index("response.completed")
        assert stream.count("event: response.completed") == 1
