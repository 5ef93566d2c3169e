"""The Responses API end to end: the real server, the real default model, OpenAI's SDK."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import httpx
import openai
import pydantic
import pytest

from tests.wire import check_event, check_response

from .conftest import ServerProcess

#: A grammar that lets the model finish quickly and for sure (status completed).
SHORT = {"grammar": {"type": "regex", "value": "(Hello|Hi)( there)?\\."}}


def sse_events(response: httpx.Response) -> tuple[list[dict[str, object]], list[str]]:
    """The JSON events of an SSE body, and the raw ``data:`` lines."""
    events: list[dict[str, object]] = []
    data_lines: list[str] = []
    event_name = None
    for line in response.iter_lines():
        if line.startswith("event: "):
            event_name = line.removeprefix("event: ")
        elif line.startswith("data: "):
            data = line.removeprefix("data: ")
            data_lines.append(data)
            if data != "[DONE]":
                event = json.loads(data)
                assert event["type"] == event_name  # the SSE event line names the type
                events.append(event)
    return events, data_lines


def test_create_returns_every_field(http: httpx.Client) -> None:
    body = http.post(
        "/v1/responses",
        json={"model": "my-model", "input": "Greet me.", "temperature": 0, **SHORT},
    ).json()
    check_response(body)
    assert body["status"] == "completed"
    assert body["model"] == "my-model"  # answers to any name, reports the one asked for
    for key in (
        "instructions",
        "previous_response_id",
        "incomplete_details",
        "error",
        "max_output_tokens",
        "max_tool_calls",
        "reasoning",
        "completed_at",
    ):
        assert key in body
    usage = body["usage"]
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"] > 0
    assert "cached_tokens" in usage["input_tokens_details"]
    assert usage["output_tokens_details"]["reasoning_tokens"] == 0
    assert body["output"][0]["content"][0]["text"] in {"Hello.", "Hi.", "Hello there.", "Hi there."}


def test_stream_event_order_and_done(http: httpx.Client) -> None:
    with http.stream(
        "POST", "/v1/responses", json={"input": "Greet me.", "stream": True, **SHORT}
    ) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events, data = sse_events(response)
    assert data[-1] == "[DONE]"
    types = [e["type"] for e in events]
    assert types[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert types[-5:] == [
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    numbers = [e["sequence_number"] for e in events]
    assert numbers == sorted(numbers) and len(set(numbers)) == len(numbers)
    delta = next(e for e in events if e["type"] == "response.output_text.delta")
    assert {"item_id", "output_index", "content_index"} <= delta.keys()
    text = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    assert text == events[-1]["response"]["output"][0]["content"][0]["text"]
    check_response(events[-1]["response"])
    for event in events:
        check_event(event)


def test_sdk_stream_helper_accepts_the_stream(client: openai.OpenAI) -> None:
    with client.responses.stream(model="default", input="Greet me.", extra_body=SHORT) as stream:
        for _ in stream:
            pass
        final = stream.get_final_response()
    assert final.status == "completed"
    assert final.output_text.startswith(("Hello", "Hi"))
    # A streamed response is stored like any other.
    assert client.responses.retrieve(final.id).output_text == final.output_text


def test_max_output_tokens_gives_incomplete(client: openai.OpenAI) -> None:
    response = client.responses.create(
        model="default", input="Tell me a very long story.", max_output_tokens=8
    )
    assert response.status == "incomplete"
    assert response.incomplete_details is not None
    assert response.incomplete_details.reason == "max_output_tokens"
    assert response.usage is not None and response.usage.output_tokens == 8


def wait_for_text(client: openai.OpenAI, response_id: str, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        current = client.responses.retrieve(response_id)
        if current.output_text:
            return current.output_text
        time.sleep(0.1)
    raise AssertionError("no output appeared")


#: A generation that cannot end before 3,000 tokens, whatever the machine's speed: the model's
#: end-of-generation tokens (SmolLM2's <|endoftext|>, <|im_end|>, <reponame>) are banned.
NEVER_ENDS = {"logit_bias": {"0": -100, "2": -100, "4": -100}}
LONG = {"input": "Write a very long story about a dragon.", "max_output_tokens": 3000, **NEVER_ENDS}


def start_long(client: openai.OpenAI) -> str:
    """A background response that is still generating when its first text appears."""
    created = client.responses.create(
        model="default",
        background=True,
        input="Write a very long story about a dragon.",
        max_output_tokens=3000,
        extra_body=NEVER_ENDS,
    )
    assert created.status == "queued"
    return created.id


def test_background_poll_and_cancel_stops_generation(client: openai.OpenAI) -> None:
    created_id = start_long(client)
    partial = wait_for_text(client, created_id)
    assert client.responses.retrieve(created_id).status == "in_progress"
    assert partial
    cancelled = client.responses.cancel(created_id)
    assert cancelled.status == "cancelled"
    stopped_at = cancelled.output_text
    time.sleep(1.0)
    later = client.responses.retrieve(created_id)
    assert later.status == "cancelled"
    assert later.output_text == stopped_at  # nothing generated after the cancel
    assert client.responses.cancel(created_id).status == "cancelled"  # idempotent


def test_cancel_errors(client: openai.OpenAI, http: httpx.Client) -> None:
    done = client.responses.create(model="default", input="Greet me.", extra_body=SHORT)
    not_background = http.post(f"/v1/responses/{done.id}/cancel")
    assert not_background.status_code == 400
    assert not_background.json()["error"]["type"] == "invalid_request_error"
    finished = client.responses.create(
        model="default", input="Greet me.", background=True, extra_body=SHORT
    )
    while client.responses.retrieve(finished.id).status in ("queued", "in_progress"):
        time.sleep(0.1)
    answer = http.post(f"/v1/responses/{finished.id}/cancel")
    assert answer.status_code == 400
    assert answer.json()["error"]["message"] == "Cannot cancel a completed response."
    with pytest.raises(openai.NotFoundError):
        client.responses.cancel("resp_does_not_exist")


def test_delete_during_generation_never_reappears(client: openai.OpenAI) -> None:
    created_id = start_long(client)
    wait_for_text(client, created_id)
    client.responses.delete(created_id)
    time.sleep(1.0)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(created_id)


def test_background_stream_and_resume(http: httpx.Client, client: openai.OpenAI) -> None:
    with http.stream(
        "POST",
        "/v1/responses",
        json={"input": "Greet me.", "background": True, "stream": True, **SHORT},
    ) as response:
        events, _ = sse_events(response)
    assert [e["type"] for e in events[:3]] == [
        "response.created",
        "response.queued",
        "response.in_progress",
    ]
    assert events[0]["response"]["status"] == "queued"
    response_id = events[0]["response"]["id"]
    with http.stream(
        "GET", f"/v1/responses/{response_id}", params={"stream": "true", "starting_after": 2}
    ) as replay:
        replayed, data = sse_events(replay)
    assert [e["sequence_number"] for e in replayed] == [e["sequence_number"] for e in events[3:]]
    assert data[-1] == "[DONE]"
    # The SDK reads the same replay.
    sdk_events = list(client.responses.retrieve(response_id, stream=True, starting_after=2))
    assert sdk_events[-1].type == "response.completed"


def test_disconnect_cancels_a_streamed_response(http: httpx.Client) -> None:
    with http.stream("POST", "/v1/responses", json={**LONG, "stream": True}) as response:
        lines = response.iter_lines()
        created = None
        for line in lines:
            if line.startswith("data: "):
                event = json.loads(line.removeprefix("data: "))
                created = created or event["response"]["id"]
                if event["type"] == "response.output_text.delta":
                    break
    # Leaving the block closed the connection mid-stream. The stored log, followed to its end,
    # ends with the run's terminal event (the run cannot finish on its own first).
    with http.stream("GET", f"/v1/responses/{created}", params={"stream": "true"}) as follow:
        events, _ = sse_events(follow)
    assert events[-1]["type"] == "response.cancelled"


def test_previous_response_id_chains_turns(client: openai.OpenAI) -> None:
    first = client.responses.create(
        model="default",
        input="My name is Ada.",
        instructions="Answer in one word.",
        extra_body=SHORT,
    )
    second = client.responses.create(
        model="default",
        input="What is my name?",
        previous_response_id=first.id,
        max_output_tokens=8,
    )
    assert second.previous_response_id == first.id
    assert second.instructions is None  # not carried over
    assert second.usage is not None and first.usage is not None
    # The second prompt holds the first turn, so it is longer than the first prompt.
    assert second.usage.input_tokens > first.usage.input_tokens
    with pytest.raises(openai.NotFoundError) as info:
        client.responses.create(model="default", input="hi", previous_response_id="resp_missing")
    assert info.value.body["param"] == "previous_response_id"  # type: ignore[index]


def test_follow_up_reuses_the_kv_cache(client: openai.OpenAI) -> None:
    first = client.responses.create(
        model="default", input="Tell me about cats.", max_output_tokens=8
    )
    second = client.responses.create(
        model="default", input="And dogs?", previous_response_id=first.id, max_output_tokens=4
    )
    assert second.usage is not None
    assert second.usage.input_tokens_details.cached_tokens > 0


def test_store_false_is_not_retrievable(client: openai.OpenAI) -> None:
    response = client.responses.create(
        model="default", input="Greet me.", store=False, extra_body=SHORT
    )
    assert response.status == "completed" and response.store is False
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(response.id)


def test_input_items_paginate(client: openai.OpenAI) -> None:
    items = [{"role": "user", "content": f"message {i}"} for i in range(5)]
    response = client.responses.create(
        model="default",
        input=items,
        extra_body=SHORT,  # type: ignore[arg-type]
    )
    page = client.responses.input_items.list(response.id, limit=2, order="asc")
    assert [item.content[0].text for item in page.data] == ["message 0", "message 1"]  # type: ignore[union-attr]
    assert page.has_more
    everything = [item.id for item in client.responses.input_items.list(response.id, order="asc")]
    assert len(everything) == 5 and len(set(everything)) == 5
    newest_first = client.responses.input_items.list(response.id)
    assert newest_first.data[0].id == everything[-1]


def test_replayed_output_items_are_valid_input(client: openai.OpenAI) -> None:
    first = client.responses.create(model="default", input="Greet me.", extra_body=SHORT)
    replay = [
        {"role": "user", "content": "Greet me."},
        *[item.model_dump(exclude_none=True) for item in first.output],
        {"type": "reasoning", "id": "rs_1", "summary": []},
        {"role": "user", "content": [{"type": "input_text", "text": "Again."}]},
    ]
    second = client.responses.create(
        model="default",
        input=replay,
        extra_body=SHORT,  # type: ignore[arg-type]
    )
    assert second.status == "completed"


class Person(pydantic.BaseModel):
    # Bounded, so the constrained answer always fits the token budget.
    name: str = pydantic.Field(max_length=24)
    age: int = pydantic.Field(ge=0, le=120)


def test_parse_with_json_schema_text_format(client: openai.OpenAI) -> None:
    parsed = client.responses.parse(
        model="default",
        input="Invent a person.",
        text_format=Person,
        temperature=1.0,
        max_output_tokens=120,
        extra_body={"seed": 7},
    )
    assert parsed.status == "completed"
    assert isinstance(parsed.output_parsed, Person)


def test_truncation(start_server: Callable[..., ServerProcess]) -> None:
    # A small context window keeps the truncated prompt quick to evaluate on a CPU.
    small = start_server("--n-ctx", "1024")
    turns = [
        {"role": "user" if i % 2 == 0 else "assistant", "content": f"turn {i} " + "lorem " * 60}
        for i in range(24)
    ] + [{"role": "user", "content": "Greet me."}]
    with httpx.Client(base_url=small.base_url, timeout=120) as http:
        refused = http.post("/v1/responses", json={"input": turns, **SHORT})
        assert refused.status_code == 400
        error = refused.json()["error"]
        assert error["code"] == "context_length_exceeded" and error["param"] == "input"
        truncated = http.post("/v1/responses", json={"input": turns, "truncation": "auto", **SHORT})
    assert truncated.status_code == 200, truncated.text
    body = truncated.json()
    assert body["status"] == "completed" and body["truncation"] == "auto"
    assert 0 < body["usage"]["input_tokens"] <= 1024
