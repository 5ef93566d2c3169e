"""Requests waiting for a place in the batch, as clients see them: a background response reads
``queued`` until the engine takes its job, ``/health`` shows the queue, and prompts already in
the cache are reported as cached tokens."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import httpx
import openai

from .conftest import REQUEST_TIMEOUT, ServerProcess

#: SmolLM2's end-of-generation tokens; banning them keeps a stream going to max_tokens.
END_OF_TURN = {"0": -100, "2": -100, "4": -100}


def test_a_background_response_is_queued_until_the_engine_starts_it(
    start_server: Callable[..., ServerProcess],
) -> None:
    server = start_server("--parallel", "1")
    with httpx.Client(base_url=server.base_url, timeout=REQUEST_TIMEOUT) as http:
        # The one place in the batch is taken by a stream that cannot end on its own.
        blocker = {
            "model": "m",
            "messages": [{"role": "user", "content": "Write a very long story."}],
            "max_tokens": 2000,
            "logit_bias": END_OF_TURN,
            "stream": True,
        }
        with http.stream("POST", "/v1/chat/completions", json=blocker) as stream:
            lines = stream.iter_lines()
            next(line for line in lines if line.startswith("data: {"))
            created = http.post(
                "/v1/responses",
                json={"input": "Say hi.", "background": True, "max_output_tokens": 8},
            ).json()
            assert created["status"] == "queued"
            waiting = http.get(f"/v1/responses/{created['id']}").json()
            assert waiting["status"] == "queued"
            # Its job reaches the engine's queue as soon as the response's run starts.
            engine = wait_for(http, lambda load: load["queued"] == 1)
            assert (engine["running"], engine["parallel"]) == (1, 1)
        # The blocker's client went away: its job ends, and the queued response starts.
        with http.stream("GET", f"/v1/responses/{created['id']}?stream=true") as replay:
            events = [
                json.loads(line.removeprefix("data: "))
                for line in replay.iter_lines()
                if line.startswith("data: {")
            ]
    types = [event["type"] for event in events]
    assert types[:3] == ["response.created", "response.queued", "response.in_progress"]
    assert events[2]["response"]["status"] == "in_progress"
    assert types[-1] in {"response.completed", "response.incomplete"}


def test_health_shows_the_engine_load(http: httpx.Client) -> None:
    engine = http.get("/health").json()["engine"]
    assert engine["parallel"] == 8
    assert 0 <= engine["cache_tokens_used"] <= engine["cache_tokens"]
    assert engine["cache_tokens"] >= 8192


def test_a_follow_up_reports_the_cached_conversation(client: openai.OpenAI) -> None:
    notes = " ".join(f"Note {i}: the meeting moved to room {i + 100}." for i in range(40))
    first = client.responses.create(
        input=f"{notes}\n\nWhere is the meeting?", temperature=0, max_output_tokens=16
    )
    follow = client.responses.create(
        input="And when?", previous_response_id=first.id, temperature=0, max_output_tokens=8
    )
    assert first.usage is not None and follow.usage is not None
    cached = follow.usage.input_tokens_details.cached_tokens
    # Everything of the first turn but its last few tokens comes from the cache.
    assert first.usage.input_tokens - 4 <= cached < follow.usage.input_tokens


def wait_for(http: httpx.Client, ready: Callable[[dict[str, int]], bool]) -> dict[str, int]:
    """The engine load from ``/health`` once ``ready`` holds (a short poll)."""
    deadline = time.monotonic() + REQUEST_TIMEOUT
    while True:
        load: dict[str, int] = http.get("/health").json()["engine"]
        if ready(load) or time.monotonic() > deadline:
            return load
        time.sleep(0.05)
