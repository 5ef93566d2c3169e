"""Compaction driven by a scripted engine: on request (the compact endpoint's run), inside a
response past ``context_management``'s threshold, and what the model sees after it."""

from __future__ import annotations

import pytest

from exloop.engine.protocol import Chat, GenerationRequest
from exloop.orchestrator import events as ev
from exloop.orchestrator.compaction import SUMMARY_REQUEST
from exloop.orchestrator.conversation import SUMMARY_HEADING
from exloop.orchestrator.errors import InvalidRequest
from exloop.orchestrator.items import (
    Compaction,
    FunctionCall,
    FunctionCallOutput,
    InputText,
    Message,
    OutputText,
)
from exloop.orchestrator.service import Orchestrator
from exloop.orchestrator.spec import CompactionPolicy, RunSpec

from .scripted import ScriptedEngine, say

pytestmark = pytest.mark.anyio

SUMMARY = "The user asked for the weather in Paris; get_weather said 18 C."


def user(text: str) -> Message:
    return Message(role="user", content=[InputText(text)])


def assistant(text: str) -> Message:
    return Message(role="assistant", content=[OutputText(text)])


HISTORY = (
    user("Weather in Paris?"),
    FunctionCall("call_1", "get_weather", '{"city": "Paris"}'),
    FunctionCallOutput("call_1", "18 C"),
    assistant("It is 18 C in Paris."),
    user("Thanks. And tomorrow?"),
)


def spec(*items: object, **kwargs: object) -> RunSpec:
    return RunSpec(input=items, model="m", store=False, **kwargs)  # type: ignore[arg-type]


def prompt(request: GenerationRequest) -> Chat:
    assert isinstance(request.prompt, Chat)
    return request.prompt


async def test_compact_summarizes_into_a_sealed_item_after_the_user_messages() -> None:
    engine = ScriptedEngine([say(SUMMARY)])
    async with Orchestrator(engine, model_name="m") as orch:
        run = await orch.compact(spec(*HISTORY, instructions="Be brief."))
        response = await run.handle.wait()
        sealer = orch.sealer
    assert response.status == "completed"
    [item] = response.output
    assert isinstance(item, Compaction) and item.id and item.id.startswith("cmp_")
    assert sealer.open("compaction", item.encrypted_content) == SUMMARY
    assert [m.text for m in run.kept] == ["Weather in Paris?", "Thanks. And tomorrow?"]
    assert all(m.id for m in run.kept)  # stored with ids, as create stores input items
    asked = prompt(engine.jobs[0].request).messages
    assert asked[0].content == "Be brief."
    assert asked[-1].role == "user" and asked[-1].content == SUMMARY_REQUEST
    assert [m.role for m in asked[1:-1]] == ["user", "assistant", "tool", "assistant", "user"]
    assert response.usage is not None and response.usage.output_tokens > 0


async def test_the_model_continues_from_the_summary_alone() -> None:
    engine = ScriptedEngine([say(SUMMARY), say("Rain tomorrow.")])
    async with Orchestrator(engine, model_name="m") as orch:
        run = await orch.compact(spec(*HISTORY))
        [item] = (await run.handle.wait()).output
        assert isinstance(item, Compaction)
        # A client that keeps its whole history and appends the item: turns before it go.
        await (await orch.create(spec(*HISTORY, item, user("Sure?")))).wait()
    messages = prompt(engine.jobs[1].request).messages
    assert messages[0].role == "system"
    assert messages[0].content == f"{SUMMARY_HEADING}\n{SUMMARY}"
    assert [(m.role, m.content) for m in messages[1:]] == [
        ("user", "Weather in Paris?"),
        ("user", "Thanks. And tomorrow?"),
        ("user", "Sure?"),
    ]


async def test_a_tampered_compaction_is_refused_naming_the_item() -> None:
    engine = ScriptedEngine([say("x")])
    async with Orchestrator(engine, model_name="m") as orch:
        forged = Compaction(
            id="cmp_forged", encrypted_content="exl1.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
        )
        with pytest.raises(InvalidRequest) as caught:
            await orch.create(spec(user("hi"), forged))
    assert caught.value.param == "input[1].encrypted_content"
    assert "cmp_forged" in caught.value.message


async def test_context_management_compacts_past_the_threshold_inside_a_response() -> None:
    engine = ScriptedEngine([say(SUMMARY), say("Rain tomorrow.")])
    long_history = (*HISTORY[:-1], assistant("filler " * 400), HISTORY[-1])
    async with Orchestrator(engine, model_name="m") as orch:
        policy = CompactionPolicy(threshold=300)
        handle = await orch.create(spec(*long_history, compaction=policy))
        response = await handle.wait()
        events = [e async for e in handle.events()]
        sealer = orch.sealer
    compaction, message = response.output
    assert isinstance(compaction, Compaction) and isinstance(message, Message)
    assert sealer.open("compaction", compaction.encrypted_content) == SUMMARY
    assert message.text == "Rain tomorrow."
    types = [type(e) for e in events]
    at = types.index(ev.CompactionCompacting)
    assert types[at - 1 : at + 2] == [
        ev.OutputItemAdded,
        ev.CompactionCompacting,
        ev.OutputItemDone,
    ]
    after = prompt(engine.jobs[1].request).messages
    assert [m.role for m in after] == ["system", "user", "user"]
    assert response.usage is not None
    assert response.usage.output_tokens == sum(job.emitted_tokens for job in engine.jobs)


async def test_under_the_threshold_nothing_is_compacted() -> None:
    engine = ScriptedEngine([say("Rain tomorrow.")])
    async with Orchestrator(engine, model_name="m") as orch:
        policy = CompactionPolicy(threshold=100_000)
        response = await (await orch.create(spec(*HISTORY, compaction=policy))).wait()
    assert [type(item) for item in response.output] == [Message]
    assert len(engine.jobs) == 1


async def test_a_compaction_input_is_stored_with_an_id() -> None:
    engine = ScriptedEngine([say(SUMMARY), say("ok")])
    async with Orchestrator(engine, model_name="m") as orch:
        [item] = (await (await orch.compact(spec(*HISTORY))).handle.wait()).output
        assert isinstance(item, Compaction)
        bare = Compaction(encrypted_content=item.encrypted_content)
        handle = await orch.create(RunSpec(input=(bare, user("Sure?")), model="m", store=True))
        await handle.wait()
        stored = await orch.input_items(handle.id)
    assert isinstance(stored[0], Compaction) and stored[0].id and stored[0].id.startswith("cmp_")
