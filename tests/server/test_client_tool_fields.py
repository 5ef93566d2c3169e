"""Decoding custom tools, namespaces, tool search, deferred tools, allowed_tools and the new
tool items on both APIs, with their bounds; Chat's custom tool calls in and out. No model."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest
from openai.types.chat import ChatCompletion
from openai.types.responses import ResponseInputItem
from pydantic import TypeAdapter

from exloop.orchestrator import events as ev
from exloop.orchestrator.items import (
    AdditionalTools,
    CustomToolCall,
    CustomToolCallOutput,
    FunctionCall,
    FunctionCallOutput,
    ToolSearchCall,
    ToolSearchOutput,
)
from exloop.orchestrator.resource import Response, TextConfig
from exloop.orchestrator.tool_defs import (
    CustomGrammar,
    CustomText,
    CustomTool,
    FunctionTool,
    NamespaceTool,
    ToolChoiceAllowed,
    ToolChoiceCustom,
    ToolChoiceWebSearch,
    ToolSearchTool,
    WebSearchPreviewTool,
    WebSearchTool,
)
from exloop.server.chat_request import parse_chat_request
from exloop.server.chat_response import ChunkStream, chat_completion
from exloop.server.errors import ApiError
from exloop.server.limits import Limits
from exloop.server.responses_request import ResponsesCall, parse_responses_request

LIMITS = Limits()
MAX_TOOLS = LIMITS.max_tools
MAX_GRAMMAR_CHARS = LIMITS.max_grammar_chars
LARK = 'start: "add " /[0-9]+/'
CUSTOM = {
    "type": "custom",
    "name": "calc",
    "description": "Adds.",
    "format": {"type": "grammar", "syntax": "lark", "definition": LARK},
}
NAMESPACE = {
    "type": "namespace",
    "name": "crm",
    "description": "Customer records.",
    "tools": [{"type": "function", "name": "lookup", "parameters": {"type": "object"}}, CUSTOM],
}


def parse(body: dict[str, Any]) -> ResponsesCall:
    return parse_responses_request(json.dumps(body).encode(), served_model="served", limits=LIMITS)


def refused(body: dict[str, Any]) -> ApiError:
    with pytest.raises(ApiError) as info:
        parse(body)
    assert info.value.status == 400
    return info.value


def chat_refused(body: dict[str, Any]) -> ApiError:
    with pytest.raises(ApiError) as info:
        parse_chat_request(json.dumps({"model": "m", **body}).encode(), limits=LIMITS)
    assert info.value.status == 400
    return info.value


def test_custom_tools_and_namespaces_are_read_and_echoed() -> None:
    call = parse(
        {
            "input": "x",
            "tools": [
                CUSTOM | {"name": "calc2"},
                {"type": "custom", "name": "note", "format": {"type": "text"}},
                {"type": "custom", "name": "free"},
                NAMESPACE,
            ],
            "tool_choice": {"type": "custom", "name": "calc2"},
        }
    )
    calc = CustomTool("calc", "Adds.", CustomGrammar("lark", LARK))
    lookup = FunctionTool("lookup", {"type": "object"}, None, None)
    assert call.spec.tools.tools == (
        CustomTool("calc2", "Adds.", CustomGrammar("lark", LARK)),
        CustomTool("note", None, CustomText()),
        CustomTool("free"),
        NamespaceTool("crm", "Customer records.", [lookup, calc]),
    )
    assert call.spec.echo.tools == call.spec.tools.tools
    assert call.spec.tools.forced == "calc2"
    assert call.spec.echo.tool_choice == ToolChoiceCustom("calc2")
    echoed = msgspec.json.encode(call.spec.echo.tools[2])
    assert json.loads(echoed) == {"type": "custom", "name": "free"}


def test_tool_choice_reaches_into_namespaces() -> None:
    for choice in (
        {"type": "function", "name": "lookup"},
        {"type": "function", "name": "crm.lookup"},
        {"type": "function", "name": "lookup", "namespace": "crm"},
    ):
        assert parse(
            {"input": "x", "tools": [NAMESPACE], "tool_choice": choice}
        ).spec.tools.forced == ("crm.lookup")


@pytest.mark.parametrize(
    ("tools", "param"),
    [
        ([{"type": "custom"}], "tools[0].name"),
        ([{"type": "custom", "name": "a b"}], "tools[0].name"),
        ([CUSTOM, CUSTOM], "tools[1].name"),
        (
            [{"type": "custom", "name": "c", "format": {"type": "grammar", "syntax": "lark"}}],
            "tools[0].format.definition",
        ),
        (
            [
                {
                    "type": "custom",
                    "name": "c",
                    "format": {"type": "grammar", "syntax": "lark", "definition": " "},
                }
            ],
            "tools[0].format.definition",
        ),
        (
            [
                {
                    "type": "custom",
                    "name": "c",
                    "format": {"type": "grammar", "syntax": "ebnf", "definition": "x"},
                }
            ],
            "tools[0].format.syntax",
        ),
        (
            [
                {
                    "type": "custom",
                    "name": "c",
                    "format": {
                        "type": "grammar",
                        "syntax": "regex",
                        "definition": "a" * (MAX_GRAMMAR_CHARS + 1),
                    },
                }
            ],
            "tools[0].format.definition",
        ),
        ([NAMESPACE | {"tools": [NAMESPACE]}], "tools[0].tools[0].type"),
        ([NAMESPACE | {"tools": []}], "tools[0].tools"),
        ([NAMESPACE, NAMESPACE], "tools[1].name"),
        ([{k: v for k, v in NAMESPACE.items() if k != "description"}], "tools[0].description"),
        ([{"type": "tool_search"}, {"type": "tool_search"}], "tools[1]"),
        ([{"type": "tool_search", "parameters": {"type": "string"}}], "tools[0].parameters"),
        ([{"type": "tool_search", "execution": "somewhere"}], "tools[0].execution"),
        (
            [{"type": "web_search", "search_content_types": ["video"]}],
            "tools[0].search_content_types[0]",
        ),
        ([{"type": "function", "name": f"f{i}"} for i in range(MAX_TOOLS + 1)], "tools"),
    ],
)
def test_bad_tools_are_refused_naming_the_field(tools: list[dict[str, Any]], param: str) -> None:
    assert refused({"input": "x", "tools": tools}).param == param


def test_deferred_tools_and_tool_search_are_read() -> None:
    call = parse(
        {
            "input": "x",
            "tools": [
                {"type": "tool_search", "execution": "client", "description": "Find tools."},
                {"type": "function", "name": "f", "defer_loading": True},
            ],
        }
    )
    search, deferred = call.spec.tools.tools
    assert search == ToolSearchTool("client", "Find tools.")
    assert isinstance(deferred, FunctionTool) and deferred.defer_loading
    echoed = json.loads(msgspec.json.encode(call.spec.echo.tools))
    assert echoed == [
        {"type": "tool_search", "execution": "client", "description": "Find tools."},
        {
            "type": "function",
            "name": "f",
            "parameters": None,
            "strict": None,
            "description": None,
            "defer_loading": True,
        },
    ]


def test_allowed_tools_name_functions_customs_namespaces_and_builtins() -> None:
    listed = [
        {"type": "function", "name": "f"},
        {"type": "custom", "name": "calc", "namespace": "crm"},
        {"type": "namespace", "name": "crm"},
        {"type": "web_search"},
        {"type": "tool_search"},
    ]
    call = parse(
        {
            "input": "x",
            "tools": [
                {"type": "function", "name": "f"},
                NAMESPACE,
                {"type": "web_search"},
                {"type": "tool_search"},
            ],
            "tool_choice": {"type": "allowed_tools", "mode": "required", "tools": listed},
        }
    )
    policy = call.spec.tools
    assert policy.mode == "required"
    assert policy.allowed == frozenset(
        {"f", "crm.calc", "crm.", "web_search", "open_page", "tool_search"}
    )
    assert call.spec.echo.tool_choice == ToolChoiceAllowed("required", listed)
    assert policy.allows("crm.lookup") and not policy.allows("other")


@pytest.mark.parametrize(
    ("choice", "param"),
    [
        ({"type": "allowed_tools", "mode": "auto", "tools": []}, "tool_choice.tools"),
        ({"type": "allowed_tools", "mode": "auto"}, "tool_choice.tools"),
        (
            {"type": "allowed_tools", "tools": [{"type": "function", "name": "g"}]},
            "tool_choice.tools[0]",
        ),
        (
            {"type": "allowed_tools", "tools": [{"type": "namespace", "name": "x"}]},
            "tool_choice.tools[0].name",
        ),
        ({"type": "allowed_tools", "tools": [{"type": "web_search"}]}, "tool_choice.tools[0]"),
        (
            {"type": "allowed_tools", "tools": [{"type": "image_generation"}]},
            "tool_choice.tools[0].type",
        ),
        ({"type": "allowed_tools", "mode": "sometimes", "tools": []}, "tool_choice.mode"),
        ({"type": "custom", "name": "f"}, "tool_choice"),
        ({"type": "function", "name": "calc"}, "tool_choice"),
    ],
)
def test_bad_tool_choices_are_refused(choice: dict[str, Any], param: str) -> None:
    body = {
        "input": "x",
        "tools": [{"type": "function", "name": "f"}, CUSTOM],
        "tool_choice": choice,
    }
    assert refused(body).param == param


def test_web_search_fields_and_the_forced_echo() -> None:
    call = parse(
        {
            "input": "x",
            "tools": [{"type": "web_search", "external_web_access": False}],
            "tool_choice": {"type": "web_search"},
        }
    )
    options = call.spec.tools.web_search
    assert options is not None and options.forced and not options.live
    assert call.spec.echo.tools == (WebSearchTool("medium", None, False),)
    # The SDK's ToolChoiceTypes knows web_search_preview, not web_search.
    assert call.spec.echo.tool_choice == ToolChoiceWebSearch()
    assert json.loads(msgspec.json.encode(ToolChoiceWebSearch())) == {"type": "web_search_preview"}
    preview = parse(
        {"input": "x", "tools": [{"type": "web_search_preview", "search_content_types": ["text"]}]}
    )
    assert preview.spec.echo.tools == (WebSearchPreviewTool("medium", None, None, ["text"]),)
    assert preview.spec.tools.web_search is not None and preview.spec.tools.web_search.live


ITEMS: list[dict[str, Any]] = [
    {"type": "custom_tool_call", "call_id": "c1", "name": "calc", "input": "add 1"},
    {
        "type": "custom_tool_call_output",
        "call_id": "c1",
        "output": [{"type": "input_text", "text": "1"}],
    },
    {
        "type": "tool_search_call",
        "call_id": "s1",
        "arguments": {"query": "w"},
        "execution": "client",
    },
    {"type": "tool_search_output", "call_id": "s1", "execution": "client", "tools": [NAMESPACE]},
    {"type": "additional_tools", "role": "developer", "tools": [CUSTOM]},
]


def test_new_input_items_are_read() -> None:
    for raw in ITEMS:  # each is a valid input item for the SDK too
        TypeAdapter(ResponseInputItem).validate_python(raw)
    items = parse({"input": ITEMS}).spec.input
    calc = CustomTool("calc", "Adds.", CustomGrammar("lark", LARK))
    lookup = FunctionTool("lookup", {"type": "object"}, None, None)
    assert items == (
        CustomToolCall("c1", "calc", "add 1"),
        CustomToolCallOutput("c1", "1"),
        ToolSearchCall({"query": "w"}, "client", "s1"),
        ToolSearchOutput(
            [NamespaceTool("crm", "Customer records.", [lookup, calc])], "client", "s1"
        ),
        AdditionalTools([calc]),
    )


@pytest.mark.parametrize(
    ("item", "param"),
    [
        (
            {"type": "additional_tools", "role": "developer", "tools": [{"type": "web_search"}]},
            "input[0].tools[0].type",
        ),
        (
            {"type": "additional_tools", "role": "developer", "tools": [CUSTOM, CUSTOM]},
            "input[0].tools[1].name",
        ),
        ({"type": "additional_tools", "role": "user", "tools": []}, "input[0].role"),
        (
            {"type": "tool_search_output", "tools": [{"type": "custom", "name": "bad name"}]},
            "input[0].tools[0].name",
        ),
        (
            {
                "type": "tool_search_output",
                "tools": [{"type": "function", "name": f"f{i}"} for i in range(MAX_TOOLS + 1)],
            },
            "input[0].tools",
        ),
        (
            {
                "type": "custom_tool_call_output",
                "call_id": "c",
                "output": [{"type": "input_image"}],
            },
            "input[0].output[0]",
        ),
    ],
)
def test_bad_tool_items_are_refused_naming_the_field(item: dict[str, Any], param: str) -> None:
    assert refused({"input": [item]}).param == param


# -- Chat Completions ------------------------------------------------------------------------


def test_chat_custom_tools_calls_and_tool_choice() -> None:
    chat_custom = {
        "type": "custom",
        "custom": {
            "name": "calc",
            "description": "Adds.",
            "format": {"type": "grammar", "grammar": {"syntax": "lark", "definition": LARK}},
        },
    }
    body = {
        "messages": [
            {"role": "user", "content": "add"},
            {
                "role": "assistant",
                "tool_calls": [
                    {"id": "c1", "type": "custom", "custom": {"name": "calc", "input": "add 1"}},
                    {"id": "c2", "function": {"name": "f", "arguments": "{}"}},
                ],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "1"},
            {"role": "tool", "tool_call_id": "c2", "content": "ok"},
        ],
        "tools": [chat_custom, {"type": "function", "function": {"name": "f"}}],
        "tool_choice": {"type": "custom", "custom": {"name": "calc"}},
    }
    call = parse_chat_request(json.dumps({"model": "m", **body}).encode(), limits=LIMITS)
    assert call.spec.tools.tools[0] == CustomTool("calc", "Adds.", CustomGrammar("lark", LARK))
    assert call.spec.tools.forced == "calc"
    assert call.spec.input[1:] == (
        CustomToolCall("c1", "calc", "add 1"),
        FunctionCall("c2", "f", "{}"),
        CustomToolCallOutput("c1", "1"),
        FunctionCallOutput("c2", "ok"),
    )
    allowed = {
        "type": "allowed_tools",
        "allowed_tools": {
            "mode": "required",
            "tools": [{"type": "custom", "custom": {"name": "calc"}}],
        },
    }
    restricted = parse_chat_request(
        json.dumps({"model": "m", **body, "tool_choice": allowed}).encode(), limits=LIMITS
    )
    assert (
        restricted.spec.tools.allowed == frozenset({"calc"})
        and restricted.spec.tools.mode == "required"
    )


def test_chat_refuses_a_client_run_tool_search() -> None:
    body = {
        "messages": [{"role": "user", "content": "x"}],
        "tools": [{"type": "tool_search", "execution": "client"}],
    }
    assert chat_refused(body).param == "tools[0].execution"


def test_chat_custom_call_without_its_object_is_refused() -> None:
    body = {
        "messages": [{"role": "assistant", "tool_calls": [{"id": "c", "type": "custom"}]}],
    }
    assert chat_refused(body).param == "messages[0].tool_calls[0].custom"


def final_response(*output: Any) -> Response:
    return Response(
        id="resp_abc",
        created_at=1,
        status="completed",
        model="m",
        output=list(output),
        tools=[],
        tool_choice="auto",
        text=TextConfig(),
        parallel_tool_calls=True,
        truncation="disabled",
        temperature=1.0,
        top_p=1.0,
        presence_penalty=0.0,
        frequency_penalty=0.0,
        top_logprobs=0,
        store=False,
        background=False,
        metadata={},
    )


def test_chat_completion_carries_custom_and_namespaced_calls() -> None:
    final = final_response(
        CustomToolCall("c1", "calc", "add 1", id="ctc_1", status="completed"),
        FunctionCall("c2", "lookup", "{}", id="fc_2", status="completed", namespace="crm"),
    )
    completion = ChatCompletion.model_validate_json(
        msgspec.json.encode(chat_completion(final, logprobs=False, fingerprint="fp_test"))
    )
    custom, function = completion.choices[0].message.tool_calls or []
    assert custom.type == "custom" and (custom.custom.name, custom.custom.input) == (
        "calc",
        "add 1",
    )
    assert function.type == "function" and function.function.name == "crm.lookup"
    assert completion.choices[0].finish_reason == "tool_calls"


def test_chat_chunks_stream_custom_input() -> None:
    stream = ChunkStream(
        "resp_abc", 1, "m", logprobs=False, include_usage=False, fingerprint="fp_test"
    )
    opened = CustomToolCall("c1", "calc", "", id="ctc_1", status="in_progress")
    events: list[ev.StreamEvent] = [
        ev.OutputItemAdded(sequence_number=0, output_index=0, item=opened),
        ev.CustomToolCallInputDelta(sequence_number=1, item_id="ctc_1", output_index=0, delta="ad"),
        ev.CustomToolCallInputDelta(
            sequence_number=2, item_id="ctc_1", output_index=0, delta="d 1"
        ),
    ]
    chunks = [msgspec.json.encode(c) for e in events for c in stream.chunks(e)]
    # OpenAI's shape for a streamed custom call. The SDK's ChatCompletionChunk types only
    # function deltas (the OpenAPI spec lacks this one) and reads chunks without validating,
    # so a client sees these fields as they are (the end-to-end test streams them through it).
    raw = [json.loads(c)["choices"][0]["delta"]["tool_calls"][0] for c in chunks]
    assert raw == [
        {"index": 0, "id": "c1", "type": "custom", "custom": {"name": "calc", "input": ""}},
        {"index": 0, "custom": {"input": "ad"}},
        {"index": 0, "custom": {"input": "d 1"}},
    ]


def test_allowed_tools_may_name_an_mcp_server() -> None:
    mcp = {"type": "mcp", "server_label": "notes", "server_url": "https://mcp.example/mcp"}
    call = parse(
        {
            "input": "x",
            "tools": [{"type": "function", "name": "f"}, mcp],
            "tool_choice": {
                "type": "allowed_tools",
                "mode": "auto",
                "tools": [{"type": "mcp", "server_label": "notes"}],
            },
        }
    )
    policy = call.spec.tools
    assert policy.allowed == frozenset({"mcp:notes"})
    assert policy.allows("write_note", "notes") and not policy.allows("f")
    unknown = {"type": "allowed_tools", "tools": [{"type": "mcp", "server_label": "other"}]}
    assert refused({"input": "x", "tools": [mcp], "tool_choice": unknown}).param == (
        "tool_choice.tools[0]"
    )
