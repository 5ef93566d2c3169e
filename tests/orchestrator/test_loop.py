"""The tool loop's decisions: every way a step can end, the context it keeps, and the limits
on calls (``parallel_tool_calls``, ``max_tool_calls``)."""

from __future__ import annotations

from typing import get_args

import pytest

from exloop.engine.errors import ContextLengthExceeded
from exloop.engine.protocol import FinishReason, GenerationRequest, ToolSpec
from exloop.engine.sampling import SamplingParams
from exloop.engine.tool_calls import get_format
from exloop.orchestrator import events as ev
from exloop.orchestrator.builtin import BuiltinTool
from exloop.orchestrator.items import FunctionCall, InputText, Message, WebSearchCall
from exloop.orchestrator.loop import (
    ENGINE_STOPPED,
    AwaitClientTools,
    EngineStopped,
    FinalMessage,
    Incomplete,
    Outcome,
    RunBuiltinTools,
    decide,
)
from exloop.orchestrator.service import Orchestrator
from exloop.orchestrator.spec import RunSpec, ToolPolicy
from exloop.orchestrator.step import StepCall, StepResult
from exloop.orchestrator.tool_defs import FunctionTool

from .scripted import ScriptedEngine, say
from .test_service import CALL, Lookup, spec, tool_or_answer

pytestmark = pytest.mark.anyio

LOOKUP = ToolSpec(name="lookup", parameters={"type": "object"})
#: The client's definition of LOOKUP.
LOOKUP_TOOL = FunctionTool("lookup", {"type": "object"}, None, None)
#: Two calls in one turn, as the fallback format writes them after its trigger.
TWO_CALLS = CALL + '<tool_call>{"name": "lookup", "arguments": {"q": "y"}}</tool_call>'


def result(finish: FinishReason, *calls: StepCall) -> StepResult:
    return StepResult(text="", calls=calls, finish=finish, completion_tokens=1)


EXPECTED: dict[FinishReason, type[Outcome]] = {
    "eos": FinalMessage,
    "stop": FinalMessage,
    "length": Incomplete,
    "cancelled": EngineStopped,
}


def test_every_finish_reason_has_its_outcome() -> None:
    assert set(EXPECTED) == set(get_args(FinishReason))
    for finish, outcome in EXPECTED.items():
        assert type(decide(result(finish), rounds_left=True)) is outcome, finish


def test_calls_decide_only_when_the_model_ended_its_turn() -> None:
    builtin = StepCall("call_1", "lookup", "{}", "builtin")
    client = StepCall("call_2", "weather", "{}", "function")
    for finish in ("eos", "stop"):
        assert decide(result(finish, builtin, client), rounds_left=True) == RunBuiltinTools(
            (builtin,), (client,)
        )
        assert decide(result(finish, builtin, client), rounds_left=False) == AwaitClientTools(
            (client,)
        )
    # A job the engine stopped mid-call has no calls to run.
    assert decide(result("cancelled", builtin), rounds_left=True) == EngineStopped()


async def test_a_job_the_engine_stops_fails_the_response() -> None:
    """The engine closing ends its jobs ``cancelled``: the cut answer is not ``completed``."""
    engine = ScriptedEngine([say("word " * 500)], token_delay=0.01)
    async with Orchestrator(engine, model_name="m") as orch:
        handle = await orch.create(spec(background=True))
        await (await engine.job(0)).first_token.wait()
        await engine.aclose()
        response = await handle.wait()
        events = [e async for e in handle.events()]
    assert response.status == "failed"
    assert response.error is not None and response.error.message == ENGINE_STOPPED
    assert response.output[0].status == "incomplete"
    assert [type(e) for e in events[-2:]] == [ev.ErrorEvent, ev.ResponseFailed]


async def test_truncation_auto_counts_the_tool_definitions() -> None:
    """The turns kept must fit with the tools the step shows the model, as the step sends
    them (and as the context check of truncation disabled counts them)."""
    history = []
    for turn in range(6):
        history.append(Message(role="user", content=[InputText(f"question {turn} " * 20)]))
        history.append(Message(role="assistant", content=[InputText(f"answer {turn} " * 20)]))
    history.append(Message(role="user", content=[InputText("the last question")]))
    description = "Looks things up. " * 60
    described = ToolSpec("lookup", description, {"type": "object", "properties": {}})
    engine = ScriptedEngine([say("fine")], context_length=600)
    request = RunSpec(
        input=tuple(history),
        model="m",
        truncation="auto",
        sampling=SamplingParams(max_tokens=20),
        tools=ToolPolicy(tools=(FunctionTool("lookup", None, None, description),)),
    )
    async with Orchestrator(engine, model_name="m") as orch:
        response = await (await orch.create(request)).wait()
    assert response.status == "completed", response.error
    sent = engine.jobs[0].request.prompt
    assert sent.tools == (described,)  # type: ignore[union-attr]
    assert await engine.count_tokens(sent) + 20 <= engine.context_length  # type: ignore[arg-type]
    assert sent.messages[-1].content == "the last question"  # type: ignore[union-attr]


# -- parallel_tool_calls ---------------------------------------------------------------------


@pytest.mark.parametrize("parallel", [True, False])
async def test_parallel_tool_calls_false_allows_one_call_per_turn(parallel: bool) -> None:
    engine = ScriptedEngine([tool_or_answer])
    policy = ToolPolicy(tools=(LOOKUP_TOOL,), parallel_tool_calls=parallel)
    async with Orchestrator(engine, model_name="m") as orch:
        response = await (await orch.create(spec(tools=policy))).wait()
    assert response.parallel_tool_calls is parallel
    # The turn is continued under the call grammar: for one call, or for many.
    grammar = engine.jobs[-1].request.constraint
    one_call = get_format("exloop").call_grammar((LOOKUP,), include_trigger=False, max_calls=1)
    assert (grammar == one_call) is not parallel
    assert [type(item) for item in response.output] == [FunctionCall]


async def test_parallel_tool_calls_false_with_tool_choice_required() -> None:
    engine = ScriptedEngine([tool_or_answer])
    policy = ToolPolicy(tools=(LOOKUP_TOOL,), mode="required", parallel_tool_calls=False)
    async with Orchestrator(engine, model_name="m") as orch:
        await (await orch.create(spec(tools=policy))).wait()
    one_call = get_format("exloop").call_grammar((LOOKUP,), include_trigger=True, max_calls=1)
    assert engine.jobs[0].request.constraint == one_call


# -- max_tool_calls --------------------------------------------------------------------------


async def test_max_tool_calls_caps_builtin_calls_and_the_model_answers() -> None:
    engine = ScriptedEngine([tool_or_answer])
    lookup = Lookup()
    tools: list[BuiltinTool] = [lookup]
    async with Orchestrator(engine, model_name="m", builtins=lambda _s: tools) as orch:
        handle = await orch.create(spec(tools=ToolPolicy(max_tool_calls=2)))
        response = await handle.wait()
    assert len(lookup.calls) == 2
    assert response.status == "completed" and response.max_tool_calls == 2
    assert [type(item) for item in response.output] == [WebSearchCall, WebSearchCall, Message]
    assert response.output[-1].text == "final answer"  # type: ignore[union-attr]
    # Once the budget is spent, the built-in tools are no longer offered.
    assert engine.jobs[-1].request.prompt.tools == ()  # type: ignore[union-attr]
    # Not the --max-tool-rounds cap.
    assert "exloop_max_tool_rounds_reached" not in response.metadata


async def test_calls_over_max_tool_calls_in_one_turn_are_not_run_and_the_model_is_told() -> None:
    def two_calls_then_answer(request: GenerationRequest) -> str:
        if request.constraint is not None:
            return TWO_CALLS
        return "<tool_call>" if request.prompt.tools else "final answer"  # type: ignore[union-attr]

    engine = ScriptedEngine([two_calls_then_answer])
    lookup = Lookup()
    tools: list[BuiltinTool] = [lookup]
    async with Orchestrator(engine, model_name="m", builtins=lambda _s: tools) as orch:
        response = await (await orch.create(spec(tools=ToolPolicy(max_tool_calls=1)))).wait()
    assert [call.arguments for call in lookup.calls] == [{"q": "x"}]
    assert [type(item) for item in response.output] == [WebSearchCall, Message]
    results = [m for m in engine.jobs[-1].request.prompt.messages if m.role == "tool"]  # type: ignore[union-attr]
    assert results[0].content == "result"
    assert results[1].content.startswith("Not run: this response may make at most 1 built-in")


async def test_max_tool_calls_zero_offers_no_builtin_tool() -> None:
    engine = ScriptedEngine([tool_or_answer])
    lookup = Lookup()
    tools: list[BuiltinTool] = [lookup]
    async with Orchestrator(engine, model_name="m", builtins=lambda _s: tools) as orch:
        response = await (await orch.create(spec(tools=ToolPolicy(max_tool_calls=0)))).wait()
    assert lookup.calls == [] and len(engine.jobs) == 1
    assert response.output[0].text == "final answer"  # type: ignore[union-attr]


async def test_the_context_check_counts_builtin_tool_definitions() -> None:
    """Without truncation, an input that fits alone but not with the built-in tools' definitions
    the step shows is refused up front (a 400), not failed mid-run."""

    class Described(Lookup):
        @property
        def spec(self) -> ToolSpec:
            return ToolSpec(name="lookup", description="Looks things up. " * 60)

    tools: list[BuiltinTool] = [Described()]
    engine = ScriptedEngine([say("fine")], context_length=400)
    request = spec("question " * 100, sampling=SamplingParams(max_tokens=20))
    async with Orchestrator(engine, model_name="m", builtins=lambda _s: tools) as orch:
        with pytest.raises(ContextLengthExceeded):
            await orch.create(request)
    assert engine.jobs == []
