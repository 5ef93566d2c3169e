"""Compaction end to end: ``POST /v1/responses/compact`` through OpenAI's SDK, the compacted
items as the next input, and ``context_management`` compacting inside a response."""

from __future__ import annotations

from typing import Any, cast

import httpx
import openai
from openai.types.responses import CompactedResponse, ResponseCompactionItem

from tests.wire import check_event, check_response

from .test_responses import SHORT, sse_events

HISTORY: list[Any] = [
    {"role": "user", "content": "My name is Ada and I like tea."},
    {"type": "function_call", "call_id": "call_1", "name": "lookup", "arguments": "{}"},
    {"type": "function_call_output", "call_id": "call_1", "output": "Tea: a drink."},
    {"role": "assistant", "content": "Nice to meet you, Ada."},
    {"role": "user", "content": "What do I like?"},
]


def test_compact_returns_the_user_messages_and_a_compaction_item(client: openai.OpenAI) -> None:
    compacted = client.responses.compact(model="m", input=HISTORY, instructions="Be brief.")
    assert isinstance(compacted, CompactedResponse)
    assert compacted.object == "response.compaction"
    *users, item = compacted.output
    assert [u.type for u in users] == ["message", "message"]
    assert [u.role for u in users] == ["user", "user"]  # type: ignore[union-attr]
    assert isinstance(item, ResponseCompactionItem) and item.encrypted_content
    assert "Ada" not in item.encrypted_content
    assert compacted.usage.output_tokens > 0 and compacted.usage.input_tokens > 0
    # The compacted window is the next turn's input, passed on as the SDK hands it back (its
    # output type knows only assistant messages, so it warns when dumping the user's).
    window: list[Any] = [o.to_dict(warnings=False) for o in compacted.output]
    assert window[0]["content"][0]["type"] == "input_text"
    following = client.responses.create(
        model="m",
        input=[*window, {"role": "user", "content": "Hi."}],
        extra_body=SHORT,
    )
    assert following.status == "completed"


def test_compact_errors_name_the_field(http: httpx.Client) -> None:
    empty = http.post("/v1/responses/compact", json={"model": "m"})
    assert empty.status_code == 400 and empty.json()["error"]["param"] == "input"
    forged = {
        "type": "compaction",
        "id": "cmp_x",
        "encrypted_content": "exl1.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
    }
    answer = http.post("/v1/responses", json={"input": [HISTORY[0], forged], **SHORT})
    assert answer.status_code == 400
    error = answer.json()["error"]
    assert error["param"] == "input[1].encrypted_content" and "cmp_x" in error["message"]
    unknown = http.post(
        "/v1/responses",
        json={"input": "Hi.", "context_management": [{"type": "forget"}], **SHORT},
    )
    assert unknown.status_code == 400
    assert unknown.json()["error"]["param"] == "context_management[0].type"
    low = http.post(
        "/v1/responses",
        json={
            "input": "Hi.",
            "context_management": [{"type": "compaction", "compact_threshold": 10}],
            **SHORT,
        },
    )
    assert low.status_code == 400
    assert low.json()["error"]["param"] == "context_management[0].compact_threshold"


def test_context_management_compacts_inside_the_stream(http: httpx.Client) -> None:
    long_history = [*HISTORY[:3], {"role": "assistant", "content": "tea " * 300}, HISTORY[4]]
    body = {
        "input": long_history,
        "stream": True,
        "store": False,
        "context_management": [{"type": "compaction", "compact_threshold": 300}],
        "max_output_tokens": 600,
        **SHORT,
    }
    with http.stream("POST", "/v1/responses", json=body) as response:
        assert response.status_code == 200
        raw, _ = sse_events(response)
    events = cast(list[dict[str, Any]], raw)
    for event in events:
        check_event(event)
    types = [event["type"] for event in events]
    at = types.index("response.compaction.compacting")
    assert types[at - 1 : at + 2] == [
        "response.output_item.added",
        "response.compaction.compacting",
        "response.output_item.done",
    ]
    final = events[-1]["response"]
    check_response(final)
    assert [item["type"] for item in final["output"]] == ["compaction", "message"]
    assert final["output"][1]["content"][0]["text"].startswith(("Hello", "Hi"))
