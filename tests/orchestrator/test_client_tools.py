"""Client tools beyond plain functions, driven by a scripted engine: custom (freeform) tools,
namespaces, allowed_tools, tool search run by the server or the client, deferred tools and
additional_tools items, and schema-guided non-strict functions."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from exloop.engine.errors import GrammarTooComplex, InvalidGrammar
from exloop.engine.protocol import Chat, GenerationRequest, ToolSpec
from exloop.engine.sampling import SamplingParams
from exloop.orchestrator import events as ev
from exloop.orchestrator.items import (
    AdditionalTools,
    CustomToolCall,
    CustomToolCallOutput,
    FunctionCall,
    InputText,
    Item,
    Message,
    ToolSearchCall,
    ToolSearchOutput,
)
from exloop.orchestrator.resource import Response
from exloop.orchestrator.service import Orchestrator
from exloop.orchestrator.spec import RunSpec, ToolPolicy
from exloop.orchestrator.tool_defs import (
    ClientTool,
    CustomGrammar,
    CustomTool,
    FunctionTool,
    NamespaceTool,
    ToolSearchTool,
)
from exloop.orchestrator.toolset import ToolCatalog, entries, grammar_field, loaded_entries

from .scripted import ScriptedEngine, say

pytestmark = pytest.mark.anyio

CALC = CustomTool("calc", "A calculator.", CustomGrammar("lark", 'start: "add " /[0-9]+/'))
LOOKUP = FunctionTool(
    "lookup",
    {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]},
    True,
    "Find a customer.",
)
CRM = NamespaceTool("crm", "Customer records.", [LOOKUP, CALC])
WEATHER = FunctionTool(
    "get_weather",
    {"type": "object", "properties": {"city": {"type": "string"}}},
    None,
    "Weather forecast for a city.",
    defer_loading=True,
)
EMAIL = FunctionTool("send_email", None, None, "Send an email message.", defer_loading=True)


def user(text: str) -> Message:
    return Message(role="user", content=[InputText(text)])


def spec(*items: Item, **policy: Any) -> RunSpec:
    return RunSpec(input=items or (user("hi"),), model="m", tools=ToolPolicy(**policy))


def prompt_tools(request: GenerationRequest) -> list[str]:
    assert isinstance(request.prompt, Chat)
    return [tool.name for tool in request.prompt.tools]


async def run(engine: ScriptedEngine, one: RunSpec) -> tuple[Response, list[ev.StreamEvent]]:
    """Run ``one`` to its end: the response and its events."""
    async with Orchestrator(engine, model_name="m") as orch:
        handle = await orch.create(one)
        response = await handle.wait()
        return response, [e async for e in handle.events()]


async def test_forced_custom_call_streams_its_input_and_round_trips() -> None:
    engine = ScriptedEngine(
        [say('<tool_call>{"name": "calc"}\nadd 42</tool_call>'), say("It is 42.")]
    )
    first, events = await run(engine, spec(tools=(CALC,), forced="calc"))
    (call,) = first.output
    assert isinstance(call, CustomToolCall)
    assert (call.name, call.input, call.status) == ("calc", "add 42", "completed")
    assert call.id is not None and call.id.startswith("ctc_")
    deltas = [e for e in events if isinstance(e, ev.CustomToolCallInputDelta)]
    assert "".join(d.delta for d in deltas) == "add 42"
    (done,) = [e for e in events if isinstance(e, ev.CustomToolCallInputDone)]
    assert done.input == "add 42" and done.item_id == call.id
    # Only the forced tool is callable, the call grammar holds its Lark grammar as a
    # sub-grammar.
    constraint = engine.jobs[0].request.constraint
    assert constraint is not None and constraint.kind == "llguidance"
    assert '"lark_grammar": "start: \\"add \\" /[0-9]+/"' in json.dumps(constraint.value)

    output: list[Item] = [call, CustomToolCallOutput(call.call_id, "42")]
    engine = ScriptedEngine([say("It is 42.")])
    second, _ = await run(engine, spec(*output, tools=(CALC,)))
    assert second.output[0].text == "It is 42."  # type: ignore[union-attr]
    history = engine.jobs[0].request.prompt.messages  # type: ignore[union-attr]
    assert history[0].tool_calls[0].freeform and history[0].tool_calls[0].arguments == "add 42"
    assert history[1].role == "tool" and history[1].content == "42"
    assert history[1].name == "calc"


async def test_namespaced_tools_are_qualified_for_the_model_and_calls_carry_namespace() -> None:
    engine = ScriptedEngine(
        [say('<tool_call>{"name": "crm.lookup", "arguments": {"name": "Ada"}}</tool_call>')]
    )
    response, _ = await run(engine, spec(tools=(CRM,), forced="crm.lookup"))
    (call,) = response.output
    assert isinstance(call, FunctionCall) and response.status == "completed"
    assert (call.name, call.namespace, call.status) == ("lookup", "crm", "completed")
    shown = engine.jobs[0].request.prompt.tools  # type: ignore[union-attr]
    assert [t.name for t in shown] == ["crm.lookup", "crm.calc"]
    assert "namespace crm: Customer records." in (shown[0].description or "")
    # Replayed, the call reads as the model wrote it.
    engine = ScriptedEngine([say("done")])
    await run(engine, spec(call, tools=(CRM,)))
    history = engine.jobs[0].request.prompt.messages  # type: ignore[union-attr]
    assert history[0].tool_calls[0].name == "crm.lookup"


async def test_allowed_tools_limit_the_calls_not_the_prompt() -> None:
    other = FunctionTool("other", None, None, None)
    engine = ScriptedEngine([say('<tool_call>{"name": "crm.calc"}\nadd 1</tool_call>')])
    policy = {"tools": (CRM, other), "mode": "required", "allowed": frozenset({"crm."})}
    response, _ = await run(engine, spec(**policy))
    (call,) = response.output
    assert isinstance(call, CustomToolCall) and call.namespace == "crm"
    request = engine.jobs[0].request
    assert prompt_tools(request) == ["crm.lookup", "crm.calc", "other"]
    grammar = json.dumps(request.constraint.value)  # type: ignore[union-attr]
    assert "crm.lookup" in grammar and "crm.calc" in grammar and "other" not in grammar


def tool_search_then_answer(request: GenerationRequest) -> str:
    if request.constraint is not None:
        return (
            '<tool_call>{"name": "tool_search", "arguments": {"query": "weather city"}}</tool_call>'
        )
    return "Loaded."


async def test_server_tool_search_loads_the_best_deferred_tool() -> None:
    engine = ScriptedEngine([tool_search_then_answer])
    policy = {"tools": (ToolSearchTool(), WEATHER, EMAIL), "mode": "required"}
    response, events = await run(engine, spec(**policy))
    search, found, message = response.output
    assert isinstance(search, ToolSearchCall) and isinstance(found, ToolSearchOutput)
    assert search.execution == "server" and search.arguments == {"query": "weather city"}
    assert search.status == found.status == "completed" and found.call_id == search.call_id
    assert found.tools == [WEATHER]
    assert isinstance(message, Message) and message.text == "Loaded."
    # Deferred tools stay out of the prompt until the search loads them.
    assert prompt_tools(engine.jobs[0].request) == ["tool_search"]
    assert prompt_tools(engine.jobs[1].request) == ["get_weather", "tool_search"]
    tool_message = engine.jobs[1].request.prompt.messages[-1]  # type: ignore[union-attr]
    assert tool_message.role == "tool" and "get_weather" in tool_message.content
    added = [e.item for e in events if isinstance(e, ev.OutputItemAdded)]
    assert [type(i) for i in added] == [ToolSearchCall, ToolSearchOutput, Message]
    assert isinstance(added[0], ToolSearchCall) and added[0].status == "in_progress"


async def test_server_tool_search_falls_back_to_the_users_question() -> None:
    def vague(request: GenerationRequest) -> str:
        if request.constraint is not None:
            return '<tool_call>{"name": "tool_search", "arguments": {"query": "Paris"}}</tool_call>'
        return "ok"

    engine = ScriptedEngine([vague])
    policy = {"tools": (ToolSearchTool(), WEATHER, EMAIL), "mode": "required"}
    response, _ = await run(engine, spec(user("Weather in Paris?"), **policy))
    found = response.output[1]
    assert isinstance(found, ToolSearchOutput) and found.tools == [WEATHER]


async def test_client_tool_search_returns_its_call_and_the_output_loads_tools() -> None:
    search = ToolSearchTool(execution="client")
    engine = ScriptedEngine(
        [say('<tool_call>{"name": "tool_search", "arguments": {"query": "weather"}}</tool_call>')]
    )
    response, events = await run(engine, spec(tools=(search, WEATHER), mode="required"))
    (call,) = response.output
    assert isinstance(call, ToolSearchCall)
    assert call.execution == "client" and call.arguments == {"query": "weather"}
    assert response.status == "completed"
    assert [type(e) for e in events].count(ev.OutputItemAdded) == 1

    loaded = ToolSearchOutput([WEATHER], "client", call.call_id)
    engine = ScriptedEngine(
        [say('<tool_call>{"name": "get_weather", "arguments": {}}</tool_call>')]
    )
    after, _ = await run(engine, spec(call, loaded, tools=(search,), mode="required"))
    assert prompt_tools(engine.jobs[0].request) == ["tool_search", "get_weather"]
    assert isinstance(after.output[0], FunctionCall) and after.output[0].name == "get_weather"
    assert after.status == "completed"


async def test_additional_tools_items_add_tools_from_their_place_on() -> None:
    engine = ScriptedEngine([say("ok")])
    extra = AdditionalTools([FunctionTool("extra", None, None, "More."), EMAIL])
    await run(engine, spec(user("hi"), extra, tools=(LOOKUP,)))
    # Deferred tools in the item stay deferred.
    assert prompt_tools(engine.jobs[0].request) == ["lookup", "extra"]


async def test_a_tool_named_like_a_builtin_is_refused_wherever_it_is_defined() -> None:
    engine = ScriptedEngine([say("never")])
    named = FunctionTool("tool_search", None, None, None)
    async with Orchestrator(engine, model_name="m") as orch:
        with pytest.raises(Exception) as caught:
            await orch.create(spec(user("x"), AdditionalTools([named]), tools=(ToolSearchTool(),)))
    assert getattr(caught.value, "param", None) == "input[1].tools[0].name"


async def catalog(
    tools: tuple[ClientTool, ...], broken: set[str], checked: list[int] | None = None
) -> ToolCatalog:
    """A catalog whose grammar check fails for any set holding a tool named in ``broken``
    (``checked`` records how many tools each check compiled)."""

    async def check(specs: tuple[ToolSpec, ...]) -> InvalidGrammar | None:
        if checked is not None:
            checked.append(len(specs))
        failing = any(spec.name in broken and spec.guided for spec in specs)
        return InvalidGrammar("no", param="grammar") if failing else None

    return await ToolCatalog.build(tools, (), check)


async def test_tool_grammars_compile_together_and_one_by_one_only_on_failure() -> None:
    loose = FunctionTool("loose", {"type": "object"}, None, None)
    checked: list[int] = []
    await catalog((loose, LOOKUP, CRM), set(), checked)
    assert checked == [4]
    checked.clear()
    found = await catalog((loose, LOOKUP, CRM), {"loose"}, checked)
    assert checked == [4, 1, 1, 1, 1]
    specs = {s.name: s for s in found.offered(()).specs}
    assert not specs["loose"].guided and specs["lookup"].guided


def too_complex_with(
    culprit: str | None, checked: list[int]
) -> Callable[[tuple[ToolSpec, ...]], Awaitable[InvalidGrammar | None]]:
    """A grammar check that finds any set of several tools too complex, and a set holding the
    tool named ``culprit`` too."""

    async def check(specs: tuple[ToolSpec, ...]) -> InvalidGrammar | None:
        checked.append(len(specs))
        if len(specs) > 1 or any(spec.name == culprit for spec in specs):
            return GrammarTooComplex("too slow", param="grammar")
        return None

    return check


@pytest.mark.parametrize(
    ("tools", "culprit", "param", "checked"),
    [
        # The only definition: its own field, compiled once.
        ((LOOKUP,), "lookup", "tools[0].parameters", [1]),
        # Found among several by compiling each alone.
        ((LOOKUP, CRM), "crm.calc", "tools[1].tools[1].format.definition", [3, 1, 1, 1]),
        # Each compiles alone: only the set is too complex.
        ((LOOKUP, CRM), None, "tools", [3, 1, 1, 1]),
    ],
)
async def test_too_complex_tool_grammars_name_the_tool_when_one_is_found(
    tools: tuple[ClientTool, ...], culprit: str | None, param: str, checked: list[int]
) -> None:
    compiled: list[int] = []
    with pytest.raises(GrammarTooComplex) as caught:
        await ToolCatalog.build(tools, (), too_complex_with(culprit, compiled))
    assert caught.value.param == param
    assert compiled == checked


def test_the_field_a_verdict_on_all_tool_grammars_names() -> None:
    assert grammar_field((CALC,), ()) == "tools[0].format.definition"
    assert grammar_field((CRM,), ()) == "tools"
    loaded = list(loaded_entries([AdditionalTools([CALC])]))
    assert grammar_field((), loaded) == "input[0].tools[0].format.definition"


@pytest.mark.parametrize(
    ("tools", "param"),
    [
        ((LOOKUP,), "tools[0].parameters"),
        ((CRM,), "tools[0].tools[0].parameters"),
    ],
)
async def test_strict_schemas_that_do_not_compile_are_refused(
    tools: tuple[ClientTool, ...], param: str
) -> None:
    with pytest.raises(InvalidGrammar) as caught:
        await catalog(tools, {"lookup", "crm.lookup"})
    assert caught.value.param == param


async def test_custom_grammars_that_do_not_compile_are_refused() -> None:
    with pytest.raises(InvalidGrammar) as caught:
        await catalog((LOOKUP, CRM), {"crm.calc"})
    assert caught.value.param == "tools[1].tools[1].format.definition"


def test_entries_name_their_fields() -> None:
    found = list(entries((LOOKUP, CRM, ToolSearchTool(execution="client")), "tools"))
    assert [(e.spec.name, e.param) for e in found] == [
        ("lookup", "tools[0]"),
        ("crm.lookup", "tools[1].tools[0]"),
        ("crm.calc", "tools[1].tools[1]"),
        ("tool_search", "tools[2]"),
    ]


async def test_catalog_offers_loaded_tools_after_the_request_tools() -> None:
    found = ToolSearchOutput([WEATHER])
    offered = (await ToolCatalog.build((LOOKUP, WEATHER), (), None)).offered([found])
    assert [s.name for s in offered.specs] == ["lookup", "get_weather"]
    assert offered.targets["get_weather"].kind == "function"


@pytest.mark.parametrize("cut", ["length", "stop"])
async def test_a_custom_input_cut_short_is_incomplete_and_not_a_call(cut: str) -> None:
    engine = ScriptedEngine([say('<tool_call>{"name": "calc"}\nadd 123456789 STOP')])
    sampling = SamplingParams(max_tokens=13) if cut == "length" else SamplingParams(stop=("STOP",))
    one = RunSpec(
        input=(user("x"),), model="m", sampling=sampling, tools=ToolPolicy((CALC,), forced="calc")
    )
    response, events = await run(engine, one)
    (call,) = response.output
    assert isinstance(call, CustomToolCall) and call.status == "incomplete"
    assert response.status == ("incomplete" if cut == "length" else "completed")
    done = [e for e in events if isinstance(e, ev.OutputItemDone)]
    assert len(done) == 1 and done[0].item == call
