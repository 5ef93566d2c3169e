"""Custom tools, namespaces, allowed_tools, tool search and deferred tools end to end: OpenAI's
SDK against the real server and the real default model.

The model is tiny, so tests force the calls they need with ``tool_choice`` and check what the
server guarantees (items, events, grammars, which tools are callable), never the model's
judgement.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import httpx
import jsonschema
import openai
from openai.types.chat import ChatCompletion
from openai.types.responses import (
    NamespaceTool,
    Response,
    ResponseCustomToolCall,
    ResponseFunctionToolCall,
    ResponseToolSearchCall,
    ResponseToolSearchOutputItem,
    ToolChoiceAllowed,
    ToolChoiceCustom,
)
from openresponses_types import types as open_responses

from tests.wire import check_event, check_response

#: A context-free grammar with a bounded depth, so that even a rambling model finishes.
SUM_GRAMMAR = r"""
start: term (" + " term){0,3}
term: NUMBER | "(" NUMBER " * " NUMBER ")"
NUMBER: /[0-9]{1,3}/
"""
SUM = re.compile(r"(\d{1,3}|\(\d{1,3} \* \d{1,3}\))( \+ (\d{1,3}|\(\d{1,3} \* \d{1,3}\))){0,3}")
CALC: dict[str, Any] = {
    "type": "custom",
    "name": "calc",
    "description": "Evaluates a sum of products.",
    "format": {"type": "grammar", "syntax": "lark", "definition": SUM_GRAMMAR},
}
CODE: dict[str, Any] = {
    "type": "custom",
    "name": "ticket",
    "description": "Opens a ticket by its code.",
    "format": {"type": "grammar", "syntax": "regex", "definition": r"[A-Z]{3}-[0-9]{2}"},
}
NOTE: dict[str, Any] = {"type": "custom", "name": "note", "format": {"type": "text"}}
LOOKUP_SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 20}},
    "required": ["name"],
    "additionalProperties": False,
}
CRM: dict[str, Any] = {
    "type": "namespace",
    "name": "crm",
    "description": "Customer records.",
    "tools": [
        {
            "type": "function",
            "name": "lookup",
            "description": "Find a customer by name.",
            "parameters": LOOKUP_SCHEMA,
        },
        CODE,
    ],
}
WEATHER: dict[str, Any] = {
    "type": "function",
    "name": "get_weather",
    "description": "Weather forecast for a city.",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 20}},
        "required": ["city"],
        "additionalProperties": False,
    },
    "strict": True,
    "defer_loading": True,
}
EMAIL: dict[str, Any] = {
    "type": "function",
    "name": "send_email",
    "description": "Send an email message.",
    "parameters": {"type": "object", "properties": {"to": {"type": "string"}}},
    "defer_loading": True,
}
WEATHER_QUESTION = "What is the weather in Paris?"
#: A fixed seed: each test's sampling is the same on every run.
SEED: dict[str, Any] = {"seed": 7}


def create(client: openai.OpenAI, **body: Any) -> Response:
    """``responses.create`` with the request as plain JSON-like values."""
    response: Response = client.responses.create(model="default", **body)
    return response


def sampled(client: openai.OpenAI, seeds: int, **body: Any) -> Iterator[tuple[int, Response]]:
    """The same request sampled at temperature 1 under ``seeds`` different seeds: what a
    grammar guarantees must hold for every one of them."""
    for seed in range(seeds):
        yield seed, create(client, temperature=1.0, extra_body={"seed": seed}, **body)


def chat(client: openai.OpenAI, **body: Any) -> ChatCompletion:
    completion: ChatCompletion = client.chat.completions.create(model="default", **body)
    return completion


def status(item: ResponseCustomToolCall) -> object:
    """A custom call's status (sent by OpenAI and exloop alike, absent from the SDK's type)."""
    return item.to_dict().get("status")


def custom_calls(response: Response) -> list[ResponseCustomToolCall]:
    return [item for item in response.output if isinstance(item, ResponseCustomToolCall)]


def function_calls(response: Response) -> list[ResponseFunctionToolCall]:
    return [item for item in response.output if isinstance(item, ResponseFunctionToolCall)]


def sse(http: httpx.Client, body: dict[str, Any]) -> list[dict[str, Any]]:
    """The events of a streamed create, each checked against the SDK's event union, Open
    Responses (where it defines them) and OpenAI's published schema; the final response too."""
    events = []
    with http.stream("POST", "/v1/responses", json={**body, "stream": True}) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                event = json.loads(line.removeprefix("data: "))
                check_event(event)
                events.append(event)
    check_response(events[-1]["response"])
    return events


def test_custom_tool_input_always_parses_under_its_lark_grammar(client: openai.OpenAI) -> None:
    for seed, response in sampled(
        client,
        5,
        input="Add three and four.",
        tools=[CALC],
        tool_choice={"type": "custom", "name": "calc"},
        max_output_tokens=100,
    ):
        (call,) = custom_calls(response)
        assert call.name == "calc" and status(call) == "completed", seed
        assert SUM.fullmatch(call.input), (seed, call.input)
        assert call.call_id.startswith("call_") and (call.id or "").startswith("ctc_")
        assert isinstance(response.tool_choice, ToolChoiceCustom)


def test_regex_and_text_formats(client: openai.OpenAI) -> None:
    response = create(
        client,
        input="Open a ticket.",
        tools=[CODE, NOTE],
        tool_choice={"type": "custom", "name": "ticket"},
        max_output_tokens=40,
        extra_body={"seed": 3},
    )
    (call,) = custom_calls(response)
    assert re.fullmatch(r"[A-Z]{3}-[0-9]{2}", call.input)
    # Any text: the tiny model may not stop on its own, so the input is whatever it wrote
    # within the budget, and the call is incomplete when the budget cut it.
    response = create(
        client,
        input="Write a note saying hello.",
        tools=[NOTE],
        tool_choice="required",
        max_output_tokens=24,
        extra_body={"seed": 3},
    )
    (note,) = custom_calls(response)
    assert note.name == "note" and note.input
    assert status(note) == ("incomplete" if response.status == "incomplete" else "completed")


def test_custom_call_streams_input_events_in_order(
    http: httpx.Client, client: openai.OpenAI
) -> None:
    body: dict[str, Any] = {
        "input": "Open a ticket.",
        "tools": [CODE],
        "tool_choice": {"type": "custom", "name": "ticket"},
        "max_output_tokens": 40,
    }
    events = sse(http, {**body, **SEED})
    types = [e["type"] for e in events]
    added = types.index("response.output_item.added")
    done = types.index("response.custom_tool_call_input.done")
    deltas = [e for e in events if e["type"] == "response.custom_tool_call_input.delta"]
    assert deltas and added < types.index("response.custom_tool_call_input.delta") < done
    assert types[done + 1 : done + 3] == ["response.output_item.done", "response.completed"]
    item = events[-1]["response"]["output"][0]
    assert item["type"] == "custom_tool_call" and item["status"] == "completed"
    assert "".join(d["delta"] for d in deltas) == events[done]["input"] == item["input"]
    assert {d["item_id"] for d in deltas} == {item["id"]}
    Response.model_validate(events[-1]["response"])
    # The SDK's stream helper, which enforces the ordering rules, accepts the stream too.
    with client.responses.stream(model="default", extra_body=SEED, **body) as stream:
        for _ in stream:
            pass
        final = stream.get_final_response()
    (call,) = custom_calls(final)
    assert re.fullmatch(r"[A-Z]{3}-[0-9]{2}", call.input)


def test_custom_call_round_trip_with_its_output(client: openai.OpenAI) -> None:
    first = create(
        client,
        input="Open a ticket.",
        tools=[CODE],
        tool_choice={"type": "custom", "name": "ticket"},
        max_output_tokens=40,
        extra_body=SEED,
    )
    (call,) = custom_calls(first)
    second = create(
        client,
        previous_response_id=first.id,
        input=[{"type": "custom_tool_call_output", "call_id": call.call_id, "output": "Opened."}],
        tools=[CODE],
        tool_choice="none",
        max_output_tokens=16,
        extra_body=SEED,
    )
    assert second.output and second.output[-1].type == "message"
    (stored,) = client.responses.input_items.list(second.id).data
    assert stored.type == "custom_tool_call_output" and stored.id.startswith("ctco_")
    # Replaying the whole history works the same way (the call as the client got it).
    replayed = create(
        client,
        input=[
            {"role": "user", "content": "Open a ticket."},
            call.model_dump(exclude_none=True),
            {"type": "custom_tool_call_output", "call_id": call.call_id, "output": "Opened."},
        ],
        tools=[CODE],
        tool_choice="none",
        max_output_tokens=16,
        extra_body=SEED,
    )
    assert replayed.output[-1].type == "message"


def test_namespaced_calls_carry_their_namespace(client: openai.OpenAI) -> None:
    response = create(
        client,
        input="Find the customer Ada.",
        tools=[CRM],
        tool_choice={"type": "function", "name": "lookup"},
        max_output_tokens=60,
        extra_body=SEED,
    )
    (call,) = function_calls(response)
    assert (call.name, call.namespace, call.status) == ("lookup", "crm", "completed")
    jsonschema.validate(json.loads(call.arguments), LOOKUP_SCHEMA)
    (tool,) = response.tools
    assert isinstance(tool, NamespaceTool)
    assert [t.name for t in tool.tools] == ["lookup", "ticket"]


def test_allowed_tools_restrict_calls_to_a_namespace(client: openai.OpenAI) -> None:
    other = {"type": "function", "name": "other", "parameters": {"type": "object"}}
    allowed = {
        "type": "allowed_tools",
        "mode": "required",
        "tools": [{"type": "namespace", "name": "crm"}],
    }
    for seed, response in sampled(
        client,
        3,
        input="Do something.",
        tools=[other, CRM],
        tool_choice=allowed,
        max_output_tokens=60,
    ):
        calls: list[ResponseFunctionToolCall | ResponseCustomToolCall] = [
            *function_calls(response),
            *custom_calls(response),
        ]
        assert calls and all(c.namespace == "crm" for c in calls), seed
        assert isinstance(response.tool_choice, ToolChoiceAllowed)


def test_server_tool_search_loads_deferred_tools(client: openai.OpenAI) -> None:
    tools = [{"type": "tool_search"}, WEATHER, EMAIL]
    first = create(
        client,
        input=WEATHER_QUESTION,
        tools=tools,
        tool_choice="required",
        max_output_tokens=120,
        extra_body=SEED,
    )
    search, found = first.output[:2]
    assert isinstance(search, ResponseToolSearchCall) and search.execution == "server"
    assert search.status == "completed" and isinstance(search.arguments, dict)
    assert isinstance(found, ResponseToolSearchOutputItem) and found.call_id == search.call_id
    assert [getattr(t, "name", None) for t in found.tools] == ["get_weather"]
    # Loaded, the deferred tool is callable in the next turn.
    allowed = {
        "type": "allowed_tools",
        "mode": "required",
        "tools": [{"type": "function", "name": "get_weather"}],
    }
    second = create(
        client,
        previous_response_id=first.id,
        input="Go on.",
        tools=tools,
        tool_choice=allowed,
        max_output_tokens=60,
        extra_body=SEED,
    )
    (call,) = function_calls(second)
    assert call.name == "get_weather" and call.status == "completed"


def test_deferred_tools_are_not_callable_until_loaded(client: openai.OpenAI) -> None:
    allowed = {
        "type": "allowed_tools",
        "mode": "required",
        "tools": [{"type": "function", "name": "get_weather"}],
    }
    response = create(
        client,
        input=WEATHER_QUESTION,
        tools=[{"type": "tool_search"}, WEATHER],
        tool_choice=allowed,
        max_output_tokens=8,
        extra_body=SEED,
    )
    assert not function_calls(response)
    assert [item.type for item in response.output] == ["message"]


def test_client_tool_search_round_trip(client: openai.OpenAI) -> None:
    search_tool = {"type": "tool_search", "execution": "client", "description": "Find tools."}
    first = create(
        client,
        input=WEATHER_QUESTION,
        tools=[search_tool, WEATHER],
        tool_choice="required",
        max_output_tokens=120,
        extra_body=SEED,
    )
    assert first.output, (first.status, first.error, first.incomplete_details, first.usage)
    (search,) = first.output
    assert search.type == "tool_search_call" and search.execution == "client"
    assert first.status == "completed" and isinstance(search.arguments, dict)
    loaded = {k: v for k, v in WEATHER.items() if k != "defer_loading"}
    answer = {
        "type": "tool_search_output",
        "call_id": search.call_id,
        "execution": "client",
        "tools": [loaded],
    }
    allowed = {
        "type": "allowed_tools",
        "mode": "required",
        "tools": [{"type": "function", "name": "get_weather"}],
    }
    second = create(
        client,
        previous_response_id=first.id,
        input=[answer],
        tools=[search_tool, WEATHER],
        tool_choice=allowed,
        max_output_tokens=60,
        extra_body=SEED,
    )
    (call,) = function_calls(second)
    assert call.name == "get_weather"
    jsonschema.validate(json.loads(call.arguments), WEATHER["parameters"])


def test_additional_tools_items_make_tools_callable(client: openai.OpenAI) -> None:
    extra = {"type": "additional_tools", "role": "developer", "tools": [CODE]}
    response = create(
        client,
        input=[{"role": "user", "content": "Open a ticket."}, extra],
        tool_choice={"type": "custom", "name": "ticket"},
        max_output_tokens=40,
        extra_body=SEED,
    )
    (call,) = custom_calls(response)
    assert re.fullmatch(r"[A-Z]{3}-[0-9]{2}", call.input)
    (stored,) = [
        i for i in client.responses.input_items.list(response.id).data if i.type != "message"
    ]
    assert stored.type == "additional_tools" and stored.id.startswith("at_")


def test_non_strict_functions_follow_their_schema(client: openai.OpenAI) -> None:
    """Codex marks every function non-strict: the arguments still follow the schema."""
    shell: dict[str, Any] = {
        "type": "function",
        "name": "shell",
        "description": "Run a command.",
        "parameters": {
            "type": "object",
            "properties": {"cmd": {"type": "string", "maxLength": 40}},
            "required": ["cmd"],
            "additionalProperties": False,
        },
        "strict": False,
    }
    for _, response in sampled(
        client,
        5,
        input="Say hello with the shell.",
        tools=[shell],
        tool_choice={"type": "function", "name": "shell"},
        max_output_tokens=60,
    ):
        (call,) = function_calls(response)
        jsonschema.validate(json.loads(call.arguments), shell["parameters"])


def test_a_schema_llguidance_cannot_enforce(http: httpx.Client) -> None:
    """Non-strict: any JSON object instead of a failure. Strict: a 400 naming the tool."""
    schema = {"type": "object", "properties": {"a": {"type": "string", "pattern": "(?=x)y"}}}
    tool = {"type": "function", "name": "f", "parameters": schema}
    body = {"input": "Call f.", "tool_choice": "required", "max_output_tokens": 40, **SEED}
    loose = http.post("/v1/responses", json={**body, "tools": [tool]})
    assert loose.status_code == 200
    calls = [i for i in loose.json()["output"] if i["type"] == "function_call"]
    assert calls and all(
        isinstance(json.loads(c["arguments"]), dict) for c in calls if c["status"] == "completed"
    )
    strict = http.post("/v1/responses", json={**body, "tools": [{**tool, "strict": True}]})
    assert strict.status_code == 400
    assert strict.json()["error"]["param"] == "tools[0].parameters"


def test_a_custom_grammar_that_does_not_compile_is_a_400(http: httpx.Client) -> None:
    bad = {**CALC, "format": {"type": "grammar", "syntax": "lark", "definition": "start: nowhere"}}
    answer = http.post("/v1/responses", json={"input": "x", "tools": [bad]})
    assert answer.status_code == 400
    assert answer.json()["error"]["param"] == "tools[0].format.definition"


# -- Chat Completions ------------------------------------------------------------------------

CHAT_CODE: dict[str, Any] = {
    "type": "custom",
    "custom": {
        "name": "ticket",
        "description": "Opens a ticket by its code.",
        "format": {
            "type": "grammar",
            "grammar": {"syntax": "regex", "definition": "[A-Z]{3}-[0-9]{2}"},
        },
    },
}


def test_chat_custom_tool_call_and_round_trip(client: openai.OpenAI) -> None:
    completion = chat(
        client,
        messages=[{"role": "user", "content": "Open a ticket."}],
        tools=[CHAT_CODE],
        tool_choice={"type": "custom", "custom": {"name": "ticket"}},
        max_tokens=40,
        extra_body=SEED,
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls or []
    assert call.type == "custom" and call.custom.name == "ticket"
    assert re.fullmatch(r"[A-Z]{3}-[0-9]{2}", call.custom.input)
    answer = chat(
        client,
        messages=[
            {"role": "user", "content": "Open a ticket."},
            choice.message.model_dump(exclude_none=True),
            {"role": "tool", "tool_call_id": call.id, "content": "Opened."},
        ],
        tools=[CHAT_CODE],
        tool_choice="none",
        max_tokens=12,
        extra_body=SEED,
    )
    assert answer.choices[0].message.content


def test_chat_streams_custom_input(client: openai.OpenAI) -> None:
    body: dict[str, Any] = {
        "messages": [{"role": "user", "content": "Open a ticket."}],
        "tools": [CHAT_CODE],
        "tool_choice": {"type": "custom", "custom": {"name": "ticket"}},
        "max_tokens": 40,
        "extra_body": SEED,
    }
    stream = client.chat.completions.create(model="default", stream=True, **body)
    deltas = [c.choices[0].delta for c in stream if c.choices]
    pieces = [call.model_dump() for d in deltas for call in d.tool_calls or []]
    assert pieces[0]["type"] == "custom" and pieces[0]["custom"]["name"] == "ticket"
    text = "".join(p["custom"]["input"] for p in pieces)
    assert re.fullmatch(r"[A-Z]{3}-[0-9]{2}", text)


def test_new_items_and_events_validate_against_the_sdk_openai_and_open_responses(
    http: httpx.Client,
) -> None:
    """Every event and final response (checked in ``sse``) parse as the SDK's types and
    validate against OpenAI's published schema; items Open Responses models (function calls,
    namespaced ones included) parse as its models too. Open Responses has no custom tool,
    namespace or tool search items yet."""
    searched = sse(
        http,
        {
            "input": WEATHER_QUESTION,
            "tools": [{"type": "tool_search"}, WEATHER, EMAIL],
            "tool_choice": "required",
            "max_output_tokens": 120,
            **SEED,
        },
    )
    final = Response.model_validate(searched[-1]["response"])
    assert [item.type for item in final.output[:2]] == ["tool_search_call", "tool_search_output"]
    kinds = [e["item"]["type"] for e in searched if e["type"] == "response.output_item.added"]
    assert kinds[:2] == ["tool_search_call", "tool_search_output"]

    namespaced = sse(
        http,
        {
            "input": "Find the customer Ada.",
            "tools": [CRM],
            "tool_choice": {"type": "function", "name": "crm.lookup"},
            "max_output_tokens": 60,
            **SEED,
        },
    )
    (item,) = namespaced[-1]["response"]["output"]
    assert item["namespace"] == "crm" and item["name"] == "lookup"
    open_responses.FunctionCall.model_validate(item)
