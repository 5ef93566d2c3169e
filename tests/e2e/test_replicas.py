"""Two real servers on one real Redis: whatever one runs, the other answers for (GET,
input_items, the live stream, chaining, cancel, DELETE), and takes over when it dies."""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx
import openai
import pytest
from openai.types.responses import Response

from tests.fixtures.redis import RedisServer

from .conftest import REQUEST_TIMEOUT, ServerProcess
from .test_responses import SHORT, sse_events, wait_for_text

Start = Callable[..., ServerProcess]
Sdk = Callable[[ServerProcess], openai.OpenAI]
Endless = Callable[[openai.OpenAI], Response]


def replicas(start_server: Start, redis: RedisServer) -> tuple[ServerProcess, ServerProcess]:
    flags = ("--store", redis.url, "--replica-timeout", "2")
    return start_server(*flags), start_server(*flags)


def test_a_response_on_one_replica_is_served_by_the_other(
    sdk: Sdk, start_server: Start, redis_server: RedisServer, endless: Endless
) -> None:
    a, b = replicas(start_server, redis_server)
    on_a, on_b = sdk(a), sdk(b)
    running = endless(on_a)
    # A writes what it generates to the store every 50 ms: B sees text that A showed a moment
    # before once that write is in.
    wait_for_text(on_b, running.id)
    partial = on_b.responses.retrieve(running.id)
    assert partial.status == "in_progress" and partial.output_text
    assert on_b.responses.input_items.list(running.id).data == (
        on_a.responses.input_items.list(running.id).data
    )
    # B follows the live stream from event 2 while A generates; a cancel sent to B stops A.
    resume = f"/v1/responses/{running.id}?stream=true&starting_after=2"
    with (
        httpx.Client(base_url=b.base_url, timeout=REQUEST_TIMEOUT) as http,
        http.stream("GET", resume) as s,
    ):
        lines = s.iter_lines()
        first = next(line for line in lines if line.startswith("data: "))
        assert '"sequence_number":3' in first
        cancelled = on_b.responses.cancel(running.id)
        rest = [line for line in lines if line.startswith("data: ")]
    assert cancelled.status == "cancelled"
    assert rest[-1] == "data: [DONE]" and '"response.cancelled"' in rest[-2]
    stopped = on_a.responses.retrieve(running.id)
    assert stopped.status == "cancelled"
    time.sleep(1.0)
    assert on_a.responses.retrieve(running.id).output_text == stopped.output_text

    # A finished response created on A chains on B, and B's replay equals A's stream.
    with (
        httpx.Client(base_url=a.base_url, timeout=REQUEST_TIMEOUT) as http,
        http.stream(
            "POST", "/v1/responses", json={"input": "Greet me.", "stream": True, **SHORT}
        ) as answer,
    ):
        streamed, _ = sse_events(answer)
    first_id = str(streamed[0]["response"]["id"])  # type: ignore[index]
    with (
        httpx.Client(base_url=b.base_url, timeout=REQUEST_TIMEOUT) as http,
        http.stream("GET", f"/v1/responses/{first_id}?stream=true") as answer,
    ):
        assert sse_events(answer)[0] == streamed
    chained = on_b.responses.create(
        model="default", input="Again.", previous_response_id=first_id, extra_body=SHORT
    )
    assert chained.status == "completed"
    assert on_a.responses.retrieve(chained.id).previous_response_id == first_id


def test_delete_on_one_replica_stops_the_other(
    sdk: Sdk, start_server: Start, redis_server: RedisServer, endless: Endless
) -> None:
    a, b = replicas(start_server, redis_server)
    on_a, on_b = sdk(a), sdk(b)
    running = endless(on_a)
    wait_for_text(on_a, running.id)
    on_b.responses.delete(running.id)
    time.sleep(1.0)
    for client in (on_a, on_b):
        with pytest.raises(openai.NotFoundError):
            client.responses.retrieve(running.id)
    # A is free again: its engine is not stuck on the deleted response.
    assert on_a.responses.create(model="default", input="Hi.", extra_body=SHORT).output_text


def test_a_killed_replica_s_work_fails_on_the_other(
    sdk: Sdk, start_server: Start, redis_server: RedisServer, endless: Endless
) -> None:
    a, b = replicas(start_server, redis_server)
    on_a, on_b = sdk(a), sdk(b)
    running = endless(on_a)
    wait_for_text(on_a, running.id)
    a.kill()
    deadline = time.monotonic() + 60
    while (current := on_b.responses.retrieve(running.id)).status == "in_progress":
        assert time.monotonic() < deadline, "B never took over A's response"
        time.sleep(0.2)
    assert current.status == "failed"
    assert current.error is not None and current.error.model_dump()["code"] == "server_restarted"
