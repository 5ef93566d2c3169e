"""The orchestrator driven by a scripted engine: lifecycle, events, store, cancel, tool loop."""

from __future__ import annotations

import json

import anyio
import pytest

from exloop.engine.errors import ConstraintFailed, GenerationFailed, GrammarTooComplex
from exloop.engine.protocol import GenerationRequest, Grammar, ToolSpec
from exloop.engine.sampling import SamplingParams
from exloop.orchestrator import events as ev
from exloop.orchestrator.builtin import BuiltinCall, BuiltinTool
from exloop.orchestrator.errors import InvalidRequest, InvalidState, ResponseNotFound
from exloop.orchestrator.items import FunctionCall, InputText, Message, SearchAction, WebSearchCall
from exloop.orchestrator.output import OutputWriter
from exloop.orchestrator.service import Orchestrator, RunHandle
from exloop.orchestrator.spec import RunSpec, ToolPolicy
from exloop.orchestrator.tool_defs import FunctionTool

from .scripted import ScriptedEngine, say

pytestmark = pytest.mark.anyio


def user(text: str) -> Message:
    return Message(role="user", content=[InputText(text)])


def spec(text: str = "hi", **kwargs: object) -> RunSpec:
    return RunSpec(input=(user(text),), model="m", **kwargs)  # type: ignore[arg-type]


async def test_text_answer_events_in_openai_order() -> None:
    engine = ScriptedEngine([say("Hello there, friend.")])
    async with Orchestrator(engine, model_name="m") as orch:
        handle = await orch.create(spec())
        events = [e async for e in handle.events()]
    types = [type(e) for e in events]
    assert types[:5] == [
        ev.ResponseCreated,
        ev.ResponseInProgress,
        ev.OutputItemAdded,
        ev.ContentPartAdded,
        ev.OutputTextDelta,
    ]
    assert types[-5:] == [
        ev.OutputTextDelta,
        ev.OutputTextDone,
        ev.ContentPartDone,
        ev.OutputItemDone,
        ev.ResponseCompleted,
    ]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    final = events[-1].response  # type: ignore[union-attr]
    assert final.status == "completed"
    assert final.output[0].text == "Hello there, friend."  # type: ignore[union-attr]
    assert final.usage is not None and final.usage.output_tokens == 7
    assert events[0].response.status == "in_progress"  # type: ignore[union-attr]


async def test_engine_failure_fails_only_that_response() -> None:
    def broken(request: GenerationRequest) -> str:
        raise GenerationFailed("the backend fell over")

    engine = ScriptedEngine([broken, say("fine")])
    async with Orchestrator(engine, model_name="m") as orch:
        failed = await orch.create(spec())
        response = await failed.wait()
        events = [e async for e in failed.events()]
        after = await (await orch.create(spec())).wait()
    assert response.status == "failed"
    assert response.error is not None and response.error.code == "server_error"
    assert [type(e) for e in events[-2:]] == [ev.ErrorEvent, ev.ResponseFailed]
    assert events[-2].message == "the backend fell over"  # type: ignore[union-attr]
    assert after.status == "completed"


async def test_max_output_tokens_gives_incomplete() -> None:
    engine = ScriptedEngine([say("one two three four five six seven")])
    async with Orchestrator(engine, model_name="m") as orch:
        handle = await orch.create(spec(sampling=SamplingParams(max_tokens=3)))
        response = await handle.wait()
    assert response.status == "incomplete"
    assert response.incomplete_details is not None
    assert response.incomplete_details.reason == "max_output_tokens"
    assert response.output[0].status == "incomplete"  # type: ignore[union-attr]
    assert isinstance([e async for e in handle.events()][-1], ev.ResponseIncomplete)


async def test_background_cancel_stops_the_job_and_stays_cancelled() -> None:
    # The job stops after its first token until ``hold`` is set: it is running when cancelled.
    hold = anyio.Event()
    engine = ScriptedEngine([say("x" * 3000)], hold=hold)
    async with Orchestrator(engine, model_name="m") as orch:
        handle = await orch.create(spec(background=True))
        assert handle.response.status == "queued"
        job = await engine.job(0)
        await job.first_token.wait()
        cancelled = await orch.cancel(handle.id)
        assert cancelled.status == "cancelled"
        assert job.cancelled and job.ended.is_set()
        hold.set()  # nothing is left to go on
        assert job.emitted_tokens == 1
        assert (await orch.retrieve(handle.id)).status == "cancelled"
        assert (await orch.cancel(handle.id)).status == "cancelled"
        # A cancelled response still reports the prompt it used.
    assert cancelled.usage is not None and cancelled.usage.input_tokens > 0
    types = [type(e) for e in [e async for e in handle.events()]]
    assert types[:3] == [ev.ResponseCreated, ev.ResponseQueued, ev.ResponseInProgress]
    assert types[-1] is ev.ResponseCancelled


async def queued_response(orch: Orchestrator, engine: ScriptedEngine) -> RunHandle:
    """A background response whose job the engine holds in its queue."""
    handle = await orch.create(spec(background=True))
    await engine.job(0)
    return handle


async def test_background_response_is_queued_until_the_engine_starts_it() -> None:
    engine = ScriptedEngine([say("Hello.")], admit=anyio.Event())
    async with Orchestrator(engine, model_name="m") as orch:
        handle = await queued_response(orch, engine)
        # The job is submitted and waits behind a full batch: still queued.
        assert (await orch.retrieve(handle.id)).status == "queued"
        assert engine.admit is not None
        engine.admit.set()
        final = await handle.wait()
    assert final.status == "completed"
    events = [e async for e in handle.events()]
    assert [type(e) for e in events[:3]] == [
        ev.ResponseCreated,
        ev.ResponseQueued,
        ev.ResponseInProgress,
    ]
    assert events[2].response.status == "in_progress"  # type: ignore[union-attr]


async def test_background_response_cancelled_while_queued() -> None:
    engine = ScriptedEngine([say("Hello.")], admit=anyio.Event())
    async with Orchestrator(engine, model_name="m") as orch:
        handle = await queued_response(orch, engine)
        cancelled = await orch.cancel(handle.id)
    assert cancelled.status == "cancelled"
    types = [type(e) for e in [e async for e in handle.events()]]
    assert types == [ev.ResponseCreated, ev.ResponseQueued, ev.ResponseCancelled]


async def test_cancel_rules() -> None:
    engine = ScriptedEngine([say("done")])
    async with Orchestrator(engine, model_name="m") as orch:
        handle = await orch.create(spec())
        await handle.wait()
        with pytest.raises(InvalidState):
            await orch.cancel(handle.id)  # not background
        bg = await orch.create(spec(background=True))
        await bg.wait()
        with pytest.raises(InvalidState) as info:
            await orch.cancel(bg.id)  # already completed
        assert info.value.message == "Cannot cancel a completed response."
        with pytest.raises(ResponseNotFound):
            await orch.cancel("resp_unknown")


async def test_delete_in_flight_cancels_and_never_reappears() -> None:
    engine = ScriptedEngine([say("y" * 3000)], hold=anyio.Event())
    async with Orchestrator(engine, model_name="m") as orch:
        handle = await orch.create(spec(background=True))
        await (await engine.job(0)).first_token.wait()
        await orch.delete(handle.id)
        await handle.wait()
        with pytest.raises(ResponseNotFound):
            await orch.retrieve(handle.id)
    assert handle.response.status == "cancelled"


async def test_get_mid_flight_shows_partial_output() -> None:
    engine = ScriptedEngine([say("abcdefghij" * 100)], hold=anyio.Event())
    async with Orchestrator(engine, model_name="m") as orch:
        handle = await orch.create(spec(background=True))
        await (await engine.job(0)).first_token.wait()
        partial = await orch.retrieve(handle.id)
        assert partial.status == "in_progress"
        assert partial.output[0].text == "abc"  # type: ignore[union-attr]
        await orch.cancel(handle.id)


async def test_previous_response_chain_sees_history_without_old_instructions() -> None:
    seen: list[GenerationRequest] = []

    def record(request: GenerationRequest) -> str:
        seen.append(request)
        return "answer"

    engine = ScriptedEngine([record])
    async with Orchestrator(engine, model_name="m") as orch:
        first = await orch.create(spec("first question", instructions="be brief"))
        await first.wait()
        second = await orch.create(spec("second question", previous_response_id=first.id))
        await second.wait()
        with pytest.raises(ResponseNotFound) as info:
            await orch.create(spec(previous_response_id="resp_missing"))
        assert info.value.param == "previous_response_id"
    messages = seen[1].prompt.messages  # type: ignore[union-attr]
    assert [(m.role, m.content) for m in messages] == [
        ("user", "first question"),
        ("assistant", "answer"),
        ("user", "second question"),
    ]


async def test_store_false_is_not_retrievable() -> None:
    engine = ScriptedEngine([say("ok")])
    async with Orchestrator(engine, model_name="m") as orch:
        handle = await orch.create(spec(store=False))
        assert (await handle.wait()).status == "completed"
        with pytest.raises(ResponseNotFound):
            await orch.retrieve(handle.id)


async def test_input_items_get_ids() -> None:
    engine = ScriptedEngine([say("ok")])
    async with Orchestrator(engine, model_name="m") as orch:
        handle = await orch.create(spec())
        await handle.wait()
        items = await orch.input_items(handle.id)
    assert len(items) == 1 and items[0].id.startswith("msg_")  # type: ignore[union-attr]
    assert items[0].status == "completed"  # type: ignore[union-attr]


# -- the tool loop ---------------------------------------------------------------------------

CALL = '{"name": "lookup", "arguments": {"q": "x"}}</tool_call>'


def tool_or_answer(request: GenerationRequest) -> str:
    """Call the tool whenever tools are offered; answer when they are not."""
    if request.constraint is not None:
        return CALL
    if request.prompt.tools:  # type: ignore[union-attr]
        return "<tool_call>"
    return "final answer"


class Lookup:
    """A built-in tool that records its calls and writes a web_search_call item."""

    def __init__(self) -> None:
        self.calls: list[BuiltinCall] = []

    @property
    def spec(self) -> ToolSpec:
        return ToolSpec(name="lookup", parameters={"type": "object"}, strict=True)

    async def run(self, call: BuiltinCall, writer: OutputWriter) -> str:
        self.calls.append(call)
        action = SearchAction(query=str(call.arguments.get("q")))
        index = writer.open_web_search(action)
        writer.close_web_search(index, action)
        return "result"


async def test_max_tool_rounds_caps_builtin_rounds_and_still_answers() -> None:
    engine = ScriptedEngine([tool_or_answer])
    lookup = Lookup()
    tools: list[BuiltinTool] = [lookup]
    async with Orchestrator(
        engine, model_name="m", max_tool_rounds=2, builtins=lambda _spec: tools
    ) as orch:
        handle = await orch.create(spec())
        response = await handle.wait()
    assert len(lookup.calls) == 2
    assert lookup.calls[0].arguments == {"q": "x"}
    assert response.status == "completed"
    assert response.metadata.get("exloop_max_tool_rounds_reached") == "true"
    kinds = [type(item) for item in response.output]
    assert kinds == [WebSearchCall, WebSearchCall, Message]
    assert response.output[-1].text == "final answer"  # type: ignore[union-attr]
    # The last step ran with tools disabled, and usage sums over every step.
    assert engine.jobs[-1].request.prompt.tools == ()  # type: ignore[union-attr]
    assert response.usage is not None
    assert response.usage.output_tokens == sum(j.emitted_tokens for j in engine.jobs)


async def test_a_request_is_arriving_until_its_first_job_is_submitted() -> None:
    """The engine hears of a request from the start of its checks until its run submits the
    first job (so a batching engine can wait for a burst), then no longer (so a lone
    request never waits for itself): not during its later rounds, nor after a refusal."""
    engine = ScriptedEngine([tool_or_answer])
    tools: list[BuiltinTool] = [Lookup()]
    async with Orchestrator(
        engine, model_name="m", max_tool_rounds=1, builtins=lambda _spec: tools
    ) as orch:
        await (await orch.create(spec())).wait()
        assert engine.arrivals.count == 0
        with pytest.raises(ResponseNotFound):
            await orch.create(spec(previous_response_id="resp_missing"))
    assert engine.arriving_when_counted[0] == 1
    assert engine.submitted > 1 and engine.arriving_when_submitted == [1] + [0] * (
        engine.submitted - 1
    )
    assert engine.arrivals.count == 0


async def test_client_function_call_ends_the_response_with_its_item() -> None:
    engine = ScriptedEngine([tool_or_answer])
    policy = ToolPolicy(tools=(FunctionTool("lookup", {"type": "object"}, None, None),))
    async with Orchestrator(engine, model_name="m") as orch:
        handle = await orch.create(spec(tools=policy))
        response = await handle.wait()
        events = [e async for e in handle.events()]
    assert response.status == "completed"
    (call,) = response.output
    assert isinstance(call, FunctionCall)
    assert call.name == "lookup" and json.loads(call.arguments) == {"q": "x"}
    assert call.call_id.startswith("call_") and call.id.startswith("fc_")  # type: ignore[union-attr]
    deltas = "".join(e.delta for e in events if isinstance(e, ev.FunctionCallArgumentsDelta))
    assert deltas == call.arguments
    done = [e for e in events if isinstance(e, ev.FunctionCallArgumentsDone)]
    assert done[0].arguments == call.arguments


async def test_cancel_between_tool_rounds() -> None:
    started = anyio.Event()

    class SlowTool(Lookup):
        async def run(self, call: BuiltinCall, writer: OutputWriter) -> str:
            started.set()
            await anyio.sleep(10)
            return "never"

    engine = ScriptedEngine([tool_or_answer])
    tools: list[BuiltinTool] = [SlowTool()]
    async with Orchestrator(engine, model_name="m", builtins=lambda _s: tools) as orch:
        handle = await orch.create(spec(background=True))
        await started.wait()
        with anyio.fail_after(2):
            response = await orch.cancel(handle.id)
    assert response.status == "cancelled"
    assert len(engine.jobs) == 2  # the free step and its call continuation; no more


async def test_a_function_named_like_a_builtin_is_refused() -> None:
    engine = ScriptedEngine([say("never")])
    tools: list[BuiltinTool] = [Lookup()]
    policy = ToolPolicy(tools=(FunctionTool("lookup", None, None, None),))
    async with Orchestrator(engine, model_name="m", builtins=lambda _s: tools) as orch:
        with pytest.raises(InvalidRequest) as info:
            await orch.create(spec(tools=policy))
    assert info.value.param == "tools[0].name"
    assert engine.jobs == []


class SlowCompiles(ScriptedEngine):
    """An engine on which regexes compile at once and other grammars (the tools' call
    grammar) take long."""

    async def check(self, request: GenerationRequest) -> None:
        await super().check(request)
        if request.constraint is not None and request.constraint.kind != "regex":
            await anyio.sleep(30)


async def test_a_requests_grammars_share_one_deadline() -> None:
    tools = tuple(FunctionTool(f"tool_{i}", {"type": "object"}, True, None) for i in range(3))
    engine = SlowCompiles([say("hi")])
    async with Orchestrator(engine, model_name="m", grammar_timeout=0.5) as orch:
        with pytest.raises(GrammarTooComplex) as caught:
            # The output constraint compiles; the tools pass the deadline.
            await orch.create(
                spec(
                    constraint=Grammar("regex", "[a-z]+"),
                    tools=ToolPolicy(tools),
                )
            )
        assert caught.value.param == "tools"
        fits = await orch.create(spec(constraint=Grammar("regex", "[a-z]+")))
        assert (await fits.wait()).status == "completed"


async def test_a_grammar_that_gives_out_while_generating_is_the_clients_fault() -> None:
    def gives_out(request: GenerationRequest) -> str:
        raise ConstraintFailed("The output constraint could not be followed.", param="grammar")

    async with Orchestrator(ScriptedEngine([gives_out]), model_name="m") as orch:
        response = await (await orch.create(spec())).wait()
    assert response.status == "failed"
    assert response.error is not None and response.error.code == "invalid_prompt"
