"""The operations surface end to end, over real HTTP against ``exloop serve`` with the default
model: metrics, request ids and JSON logs, API keys and response ownership, CORS, SSE
keep-alive, readiness, input token counting, the configuration file and the OpenAPI document.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openapi_spec_validator import validate
from prometheus_client.parser import text_string_to_metric_families

from tests.fixtures.web import WebFixture

from .conftest import REQUEST_TIMEOUT, ServerProcess

ALPHA, BETA = "sk-alpha-7f3e91", "sk-beta-0c22d8"
ORIGIN = "https://app.example"
#: A phrase to look for in the log: the prompt must not be there unless asked for.
SECRET_PROMPT = "Describe the lighthouse of Zorbulon in one line."
QUICK: dict[str, Any] = {"temperature": 0, "max_output_tokens": 8}
#: A forced web search: room for the search call, a short answer.
SEARCH: dict[str, Any] = {
    "input": "What causes the ocean tides?",
    "web_search_options": {"search_context_size": "low"},
    "temperature": 0,
    "max_output_tokens": 120,
}


@pytest.fixture(scope="module")
def slow_web() -> Iterator[WebFixture]:
    with WebFixture() as fixture:
        yield fixture


@pytest.fixture(scope="module")
def ops(slow_web: WebFixture) -> Iterator[ServerProcess]:
    """Two keys, JSON logs, one CORS origin, quick keep-alives, a search engine that takes
    three seconds to answer, and asyncio's own event loop (the shared server runs uvloop)."""
    with ServerProcess(
        "--api-key", ALPHA, "--api-key", BETA, "--log-format", "json",
        "--cors-origins", ORIGIN, "--sse-keepalive", "0.25", "--max-tool-rounds", "1",
        "--search-provider", "searxng", "--searxng-url", slow_web.url("/delay/3/searxng"),
        "--fetch-allow-private", "--loop", "asyncio",
    ) as server:  # fmt: skip
        yield server


def as_key(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def alpha(ops: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=ops.base_url, headers=as_key(ALPHA), timeout=REQUEST_TIMEOUT) as c:
        yield c


@pytest.fixture
def beta(ops: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=ops.base_url, headers=as_key(BETA), timeout=REQUEST_TIMEOUT) as c:
        yield c


def log_entries(server: ServerProcess) -> list[dict[str, Any]]:
    """The JSON log's entries (every line must be one JSON object)."""
    return [json.loads(line) for line in server.log().splitlines() if line.strip()]


# -- metrics --------------------------------------------------------------------------------

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def samples(text: str) -> Samples:
    """Every sample of a Prometheus exposition, parsed with prometheus-client's own parser."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(parsed: Samples, name: str, **labels: str) -> float:
    return parsed.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_move_with_requests_and_parse(ops: ServerProcess, alpha: httpx.Client) -> None:
    assert httpx.get(f"{ops.base_url}/metrics").status_code == 401  # behind the key
    before = samples(alpha.get("/metrics").text)
    created = alpha.post("/v1/responses", json={"input": "Say hi.", **QUICK})
    assert created.status_code == 200
    usage = created.json()["usage"]
    streamed = {"input": "Say hi.", "stream": True, **QUICK}
    with alpha.stream("POST", "/v1/responses", json=streamed) as r:
        assert r.status_code == 200 and list(r.iter_lines())
    assert alpha.get("/v1/responses/resp_unknown").status_code == 404
    metrics = alpha.get("/metrics")
    assert metrics.headers["content-type"].startswith("text/plain")
    after = samples(metrics.text)

    def grew(name: str, by: float = 1, labels: dict[str, str] | None = None) -> bool:
        labels = labels or {}
        return value(after, name, **labels) - value(before, name, **labels) >= by

    created_ok = {"endpoint": "/v1/responses", "method": "POST", "status": "200"}
    assert grew("exloop_http_requests_total", 2, created_ok)
    missing = {"endpoint": "/v1/responses/{response_id}", "method": "GET", "status": "404"}
    assert grew("exloop_http_requests_total", 1, missing)
    duration = {"endpoint": "/v1/responses", "method": "POST"}
    assert grew("exloop_http_request_duration_seconds_count", 2, duration)
    assert grew("exloop_time_to_first_token_seconds_count", 2)
    assert grew("exloop_inter_token_latency_seconds_count", 2)
    assert grew("exloop_completion_tokens_total", usage["output_tokens"])
    assert grew("exloop_prompt_tokens_total", usage["input_tokens"])
    assert grew("exloop_responses_total", 2, {"status": "incomplete"})
    assert value(after, "exloop_stored_responses") >= 2
    assert ("exloop_jobs_queued", ()) in after and ("exloop_jobs_running", ()) in after
    # The engine's load: the default batch, and the prefix cache holds what just ran.
    assert ("exloop_engine_jobs_running", ()) in after
    assert ("exloop_engine_jobs_queued", ()) in after
    assert value(after, "exloop_engine_parallel") == 8
    assert (
        0
        < value(after, "exloop_engine_cache_tokens_used")
        <= value(after, "exloop_engine_cache_tokens")
    )
    assert ("exloop_cached_tokens_total", ()) in after
    for name, _ in after:
        assert name.startswith("exloop_")


# -- request ids and logs ---------------------------------------------------------------


def test_request_ids_round_trip_and_tag_every_log_line(
    ops: ServerProcess, alpha: httpx.Client
) -> None:
    sent = alpha.post(
        "/v1/responses",
        json={"input": SECRET_PROMPT, **QUICK},
        headers={"X-Request-Id": "trace-4242"},
    )
    assert sent.headers["x-request-id"] == "trace-4242"
    response_id = sent.json()["id"]
    # Unsafe characters are dropped and the length bounded; without one, one is made.
    unsafe = "a b\u00e9<c>".encode("latin-1") + b"x" * 300
    odd = alpha.get("/v1/models", headers=[(b"X-Request-Id", unsafe)])
    assert odd.headers["x-request-id"] == "abc" + "x" * 125
    made = alpha.get("/v1/models").headers["x-request-id"]
    assert made.startswith("req_") and len(made) > 20
    # Every answer carries one, errors and unauthenticated ones too.
    assert httpx.get(f"{ops.base_url}/v1/models").headers["x-request-id"]
    assert alpha.get("/nowhere").headers["x-request-id"]

    entries = log_entries(ops)
    tagged = [entry for entry in entries if entry["request_id"] == "trace-4242"]
    events = {entry["event"] for entry in tagged}
    assert {"request", "response finished"} <= events
    finished = next(entry for entry in tagged if entry["event"] == "response finished")
    assert finished["response_id"] == response_id and finished["output_tokens"] > 0
    for entry in entries:
        assert {"time", "level", "logger", "request_id", "event"} <= entry.keys()
    # Prompts, outputs and keys stay out of the log.
    text = ops.log()
    assert SECRET_PROMPT not in text
    assert ALPHA not in text and BETA not in text


# -- API keys: each key sees only its own responses --------------------------------------


def test_a_response_belongs_to_the_key_that_created_it(
    alpha: httpx.Client, beta: httpx.Client
) -> None:
    created = alpha.post("/v1/responses", json={"input": "Say hi.", **QUICK}).json()
    rid = created["id"]
    item_id = created["output"][0]["id"]
    running = alpha.post(
        "/v1/responses",
        json={"input": "Write a long story.", "background": True, "max_output_tokens": 2000},
    ).json()

    def not_found(answer: httpx.Response) -> None:
        assert answer.status_code == 404, answer.text
        assert answer.json()["error"]["code"] == "not_found"

    not_found(beta.get(f"/v1/responses/{rid}"))
    not_found(beta.get(f"/v1/responses/{rid}/input_items"))
    not_found(beta.get(f"/v1/responses/{rid}", params={"stream": "true"}))
    not_found(beta.post(f"/v1/responses/{running['id']}/cancel"))
    # Its owner reaches it (cancelled, or refused as finished if the story was short).
    cancelled = alpha.post(f"/v1/responses/{running['id']}/cancel")
    assert cancelled.status_code in (200, 400), cancelled.text
    assert cancelled.status_code == 400 or cancelled.json()["status"] == "cancelled"
    not_found(beta.delete(f"/v1/responses/{rid}"))
    follow_up = {"input": "And again.", "previous_response_id": rid, **QUICK}
    not_found(beta.post("/v1/responses", json=follow_up))
    not_found(beta.post("/v1/responses/input_tokens", json=follow_up))
    not_found(beta.post("/v1/responses/compact", json={"previous_response_id": rid}))
    reference = {"input": [{"type": "item_reference", "id": item_id}], **QUICK}
    refused = beta.post("/v1/responses", json=reference)
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "input[0].id"

    # The owner still has all of it.
    assert alpha.get(f"/v1/responses/{rid}").json()["id"] == rid
    assert alpha.get(f"/v1/responses/{rid}/input_items").status_code == 200
    assert alpha.post("/v1/responses", json=follow_up).status_code == 200
    assert alpha.post("/v1/responses", json=reference).status_code == 200
    assert alpha.delete(f"/v1/responses/{rid}").json()["deleted"] is True


def test_keys_are_checked_and_public_routes_stay_open(ops: ServerProcess) -> None:
    with httpx.Client(base_url=ops.base_url, timeout=60) as anonymous:
        for path in ("/v1/models", "/metrics", "/v1/responses/resp_x"):
            answer = anonymous.get(path, headers=as_key("sk-wrong"))
            assert answer.status_code == 401, path
            assert answer.json()["error"]["code"] == "invalid_api_key"
        for path in ("/v1/responses", "/v1/responses/compact", "/v1/responses/input_tokens"):
            answer = anonymous.post(path, json={"input": "hi"})
            assert answer.status_code == 401, path
        for path in ("/health", "/docs", "/openapi.json"):
            assert anonymous.get(path).status_code == 200, path
    with openai.OpenAI(base_url=f"{ops.base_url}/v1", api_key=BETA, max_retries=0) as sdk:
        assert sdk.models.list().data


# -- CORS ---------------------------------------------------------------------------------


def test_cors_preflight_and_answers(ops: ServerProcess, alpha: httpx.Client) -> None:
    preflight = httpx.options(
        f"{ops.base_url}/v1/responses",
        headers={
            "Origin": ORIGIN,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )
    assert preflight.status_code == 204
    assert preflight.headers["access-control-allow-origin"] == ORIGIN
    assert "POST" in preflight.headers["access-control-allow-methods"]
    assert "authorization" in preflight.headers["access-control-allow-headers"]
    stranger = httpx.options(
        f"{ops.base_url}/v1/responses",
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
    )
    assert stranger.status_code == 403
    assert "access-control-allow-origin" not in stranger.headers
    answer = alpha.get("/v1/models", headers={"Origin": ORIGIN})
    assert answer.headers["access-control-allow-origin"] == ORIGIN
    assert "x-request-id" in answer.headers["access-control-expose-headers"]
    assert "access-control-allow-origin" not in alpha.get("/v1/models").headers


def test_no_cors_by_default(server: ServerProcess) -> None:
    preflight = httpx.options(
        f"{server.base_url}/v1/responses",
        headers={"Origin": ORIGIN, "Access-Control-Request-Method": "POST"},
    )
    assert preflight.status_code == 405
    assert "access-control-allow-origin" not in preflight.headers


def test_an_open_server_says_so_at_start(server: ServerProcess, ops: ServerProcess) -> None:
    assert "no API key set" in server.log()
    assert "no API key set" not in ops.log()


def test_the_event_loop_is_uvloop_unless_asked_otherwise(
    server: ServerProcess, ops: ServerProcess
) -> None:
    assert "event loop: uvloop" in server.log()
    assert "event loop: asyncio" in [entry["event"] for entry in log_entries(ops)]


# -- SSE keep-alive -----------------------------------------------------------------------


def test_keep_alive_comments_while_a_search_runs(ops: ServerProcess, alpha: httpx.Client) -> None:
    before = samples(alpha.get("/metrics").text)
    lines: list[str] = []
    with alpha.stream("POST", "/v1/responses", json={**SEARCH, "stream": True}) as response:
        lines = list(response.iter_lines())
    searching = lines.index("event: response.web_search_call.searching")
    completed = lines.index("event: response.web_search_call.completed")
    # The search engine takes three seconds; a comment goes out every quarter second.
    assert ": keep-alive" in lines[searching:completed]
    assert lines[-1] == "data: [DONE]" or lines[-2] == "data: [DONE]"

    # The search and its page reads were timed, and the call counted.
    after = samples(alpha.get("/metrics").text)
    searches = "exloop_web_search_duration_seconds_count"
    assert value(after, searches) - value(before, searches) == 1
    assert value(after, "exloop_web_search_duration_seconds_sum") >= 3
    fetches = "exloop_page_fetch_duration_seconds_count"
    assert value(after, fetches) > value(before, fetches)
    calls = {"outcome": "completed", "tool": "web_search"}
    assert (
        value(after, "exloop_tool_calls_total", **calls)
        - value(before, "exloop_tool_calls_total", **calls)
        == 1
    )
    # OpenAI's SDK reads the same stream, comments and all.
    with (
        openai.OpenAI(base_url=f"{ops.base_url}/v1", api_key=ALPHA, max_retries=0) as sdk,
        sdk.responses.create(
            model="m",
            input=SEARCH["input"],
            stream=True,
            extra_body={"web_search_options": SEARCH["web_search_options"]},
            temperature=0,
            max_output_tokens=SEARCH["max_output_tokens"],
        ) as events,
    ):
        types = [event.type for event in events]
    assert "response.web_search_call.completed" in types
    assert types[-1] in ("response.completed", "response.incomplete")


# -- token counting -----------------------------------------------------------------------


def test_input_tokens_count_what_a_create_uses(alpha: httpx.Client) -> None:
    tool = {
        "type": "function",
        "name": "get_weather",
        "description": "Weather of a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    }
    request = {"input": "Is it raining in Oslo?", "instructions": "Be brief.", "tools": [tool]}
    counted = alpha.post("/v1/responses/input_tokens", json=request)
    assert counted.status_code == 200
    body = counted.json()
    assert body["object"] == "response.input_tokens"
    created = alpha.post("/v1/responses", json={**request, "tool_choice": "none", **QUICK}).json()
    plain = {"input": "Is it raining in Oslo?", "instructions": "Be brief."}
    plain_count = alpha.post("/v1/responses/input_tokens", json=plain).json()["input_tokens"]
    # tool_choice none shows the model no tools: the same count as without them.
    assert created["usage"]["input_tokens"] == plain_count
    assert body["input_tokens"] > plain_count  # the tool's definition takes tokens
    follow = alpha.post(
        "/v1/responses/input_tokens",
        json={"input": "And in Bergen?", "previous_response_id": created["id"]},
    ).json()
    assert follow["input_tokens"] > plain_count
    bad = alpha.post("/v1/responses/input_tokens", json={"input": 3})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "input"


# -- readiness ----------------------------------------------------------------------------


def test_the_port_opens_before_the_model_loads(
    start_server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    gate = tmp_path / "go"
    server = start_server("--load-after", str(gate), wait_ready=False)
    with httpx.Client(base_url=server.base_url, timeout=60) as http:
        health = http.get("/health")
        assert health.status_code == 503 and health.json() == {"status": "loading"}
        api = http.post("/v1/responses", json={"input": "hi"})
        assert api.status_code == 503
        assert api.json()["error"]["code"] == "model_loading"
        assert api.headers["x-request-id"]
        gate.touch()
        while (health := http.get("/health")).status_code == 503:
            pass
        assert health.status_code == 200 and health.json()["status"] == "ok"
        assert http.post("/v1/responses", json={"input": "hi", **QUICK}).status_code == 200
    log = server.log()
    assert "loading the model" in log and "model loaded in" in log


# -- the configuration file ---------------------------------------------------------------


def test_config_file_with_environment_and_flags(
    start_server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    config = tmp_path / "exloop.toml"
    config.write_text(
        "port = 1\n"  # the test's --port flag wins
        'served-model-name = "from-file"\n'  # EXLOOP_SERVED_MODEL_NAME wins
        'api-key = ["sk-file-key"]\n'
        "metrics-public = true\n"
        "log-requests = true\n"
        'log-format = "json"\n'
    )
    server = start_server("--config", str(config), env={"EXLOOP_SERVED_MODEL_NAME": "from-env"})
    with httpx.Client(base_url=server.base_url, timeout=REQUEST_TIMEOUT) as http:
        assert http.get("/v1/models").status_code == 401
        models = http.get("/v1/models", headers=as_key("sk-file-key")).json()
        assert models["data"][0]["id"] == "from-env"
        assert http.get("/metrics").status_code == 200  # metrics-public from the file
        asked = {"input": SECRET_PROMPT, **QUICK}
        http.post("/v1/responses", headers=as_key("sk-file-key"), json=asked)
    finished = [e for e in log_entries(server) if e["event"] == "response finished"]
    assert finished and finished[-1]["input"] == [{"role": "user", "text": SECRET_PROMPT}]
    assert finished[-1]["output"]


def test_unknown_config_keys_stop_the_server(tmp_path: Path) -> None:
    config = tmp_path / "exloop.toml"
    config.write_text("max-tool-round = 3\n")
    run = subprocess.run(
        [sys.executable, "-m", "exloop.server.cli", "serve", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        env=os.environ.copy(),
    )
    assert run.returncode == 2
    assert "unknown setting 'max-tool-round'" in run.stderr


# -- OpenAPI ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small() -> Iterator[ServerProcess]:
    """A server with a small context."""
    with ServerProcess("--n-ctx", "384") as server:
        yield server


def test_openapi_document_is_valid_and_served_with_docs(small: ServerProcess) -> None:
    document = httpx.get(f"{small.base_url}/openapi.json").json()
    validate(document)
    assert document["openapi"].startswith("3.1")
    paths = document["paths"]
    for path, method in [
        ("/v1/responses", "post"),
        ("/v1/responses/input_tokens", "post"),
        ("/v1/responses/{response_id}", "get"),
        ("/v1/responses/{response_id}", "delete"),
        ("/v1/responses/{response_id}/cancel", "post"),
        ("/v1/responses/{response_id}/input_items", "get"),
        ("/v1/chat/completions", "post"),
        ("/v1/models", "get"),
        ("/metrics", "get"),
    ]:
        assert method in paths[path], (path, method)
    schemas = document["components"]["schemas"]
    assert "ResponsesRequest" in schemas and "ChatRequest" in schemas and "Response" in schemas
    docs = httpx.get(f"{small.base_url}/docs")
    assert docs.headers["content-type"].startswith("text/html")
    assert "/v1/responses/input_tokens" in docs.text and "<script" not in docs.text
