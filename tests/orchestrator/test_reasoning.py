"""Thinking models driven by a scripted engine: the reasoning item and its events, the
thinking switch and budget, token counts, sealed reasoning and what the model sees again."""

from __future__ import annotations

import pytest

from exloop.engine.protocol import Chat, GenerationRequest
from exloop.engine.reasoning import ThinkingSyntax
from exloop.engine.sampling import SamplingParams
from exloop.orchestrator import events as ev
from exloop.orchestrator.errors import InvalidRequest
from exloop.orchestrator.items import (
    InputText,
    Message,
    OutputText,
    Reasoning,
    ReasoningText,
)
from exloop.orchestrator.sealing import Sealer
from exloop.orchestrator.service import Orchestrator
from exloop.orchestrator.spec import ReasoningOptions, RunSpec

from .scripted import ScriptedEngine, say

pytestmark = pytest.mark.anyio

QWEN3 = ThinkingSyntax(switch="enable_thinking", reads_reasoning_content=True)
THOUGHT = "\nThe user greets me. I greet back.\n</think>\n\n"


def user(text: str) -> Message:
    return Message(role="user", content=[InputText(text)])


def spec(*items: object, **kwargs: object) -> RunSpec:
    return RunSpec(input=items or (user("hi"),), model="m", **kwargs)  # type: ignore[arg-type]


def thinking_engine(*scripts: str) -> ScriptedEngine:
    return ScriptedEngine([say(s) for s in scripts], thinking=QWEN3)


def prompt(request: GenerationRequest) -> Chat:
    assert isinstance(request.prompt, Chat)
    return request.prompt


async def test_the_think_block_becomes_a_reasoning_item_before_the_answer() -> None:
    engine = thinking_engine(THOUGHT, "Hello!")
    async with Orchestrator(engine, model_name="m") as orch:
        handle = await orch.create(spec())
        response = await handle.wait()
        events = [e async for e in handle.events()]
    reasoning, message = response.output
    assert isinstance(reasoning, Reasoning) and isinstance(message, Message)
    assert reasoning.text == "The user greets me. I greet back."
    assert reasoning.summary == [] and reasoning.encrypted_content is None
    assert reasoning.status == "completed" and reasoning.id and reasoning.id.startswith("rs_")
    assert message.text == "Hello!"
    types = [type(e) for e in events]
    assert types[2:6] == [
        ev.OutputItemAdded,
        ev.ContentPartAdded,
        ev.ReasoningTextDelta,
        ev.ReasoningTextDelta,
    ]
    done = types.index(ev.ReasoningTextDone)
    assert types[done : done + 4] == [
        ev.ReasoningTextDone,
        ev.ContentPartDone,
        ev.OutputItemDone,
        ev.OutputItemAdded,
    ]
    deltas = "".join(e.delta for e in events if isinstance(e, ev.ReasoningTextDelta))
    assert deltas == reasoning.text  # trimmed as it streams, nothing sent twice
    # The model was told to think, then answered after the block it wrote.
    think, answer = (prompt(job.request) for job in engine.jobs)
    assert think.thinking is True and think.assistant_prefix == "<think>\n"
    assert engine.jobs[0].request.sampling.stop == ("</think>",)
    # It continues from exactly what the model wrote (so the engine reuses its cache).
    assert answer.assistant_prefix == "<think>\n" + THOUGHT.removesuffix("\n\n") + "\n\n"
    assert response.usage is not None
    details = response.usage.output_tokens_details
    assert details.reasoning_tokens == engine.jobs[0].emitted_tokens > 0
    assert response.usage.output_tokens == sum(job.emitted_tokens for job in engine.jobs)


async def test_the_continuation_counts_its_prompt_once() -> None:
    engine = thinking_engine(THOUGHT, "Hello!")
    async with Orchestrator(engine, model_name="m") as orch:
        response = await (await orch.create(spec())).wait()
    think, answer = engine.jobs
    assert response.usage is not None
    # The answer's job re-reads the prompt and the thought; only what is new counts.
    seen = think.prompt_tokens + think.emitted_tokens
    assert answer.prompt_tokens > think.prompt_tokens
    assert response.usage.input_tokens == think.prompt_tokens + max(0, answer.prompt_tokens - seen)
    assert response.usage.input_tokens < think.prompt_tokens + answer.prompt_tokens


async def test_effort_none_starts_after_an_empty_block() -> None:
    engine = thinking_engine("Hello!")
    async with Orchestrator(engine, model_name="m") as orch:
        options = ReasoningOptions(effort="none")
        response = await (await orch.create(spec(reasoning=options))).wait()
    assert [type(item) for item in response.output] == [Message]
    chat = prompt(engine.jobs[0].request)
    assert chat.thinking is False
    assert chat.assistant_prefix == "<think>\n\n</think>\n\n"
    assert response.usage is not None
    assert response.usage.output_tokens_details.reasoning_tokens == 0


async def test_an_exhausted_budget_closes_the_block() -> None:
    engine = thinking_engine("hmm " * 200, "Fine.")
    async with Orchestrator(engine, model_name="m") as orch:
        options = ReasoningOptions(effort="minimal")
        response = await (await orch.create(spec(reasoning=options))).wait()
    assert response.status == "completed"
    assert engine.jobs[0].request.sampling.max_tokens == 128
    assert engine.jobs[0].emitted_tokens == 128
    answer = prompt(engine.jobs[1].request).assistant_prefix
    assert answer.startswith("<think>\nhmm hmm") and answer.endswith("hmm \n</think>\n\n")
    assert response.output[-1].text == "Fine."  # type: ignore[union-attr]
    assert response.usage is not None
    assert response.usage.output_tokens_details.reasoning_tokens == 128


async def test_max_output_tokens_inside_the_block_ends_incomplete() -> None:
    engine = thinking_engine("hmm " * 200)
    async with Orchestrator(engine, model_name="m") as orch:
        limited = spec(sampling=SamplingParams(max_tokens=10))
        response = await (await orch.create(limited)).wait()
    assert response.status == "incomplete"
    [reasoning] = response.output
    assert isinstance(reasoning, Reasoning) and reasoning.status == "incomplete"
    assert len(engine.jobs) == 1
    assert response.usage is not None
    assert response.usage.output_tokens_details.reasoning_tokens == 10


async def test_a_model_that_does_not_think_ignores_reasoning() -> None:
    engine = ScriptedEngine([say("Hello!")])
    async with Orchestrator(engine, model_name="m") as orch:
        options = ReasoningOptions(effort="high", encrypted=True)
        response = await (await orch.create(spec(reasoning=options))).wait()
    assert [type(item) for item in response.output] == [Message]
    assert prompt(engine.jobs[0].request).thinking is None


async def test_sealed_reasoning_round_trip_and_tampering() -> None:
    engine = thinking_engine(THOUGHT, "Hello!", THOUGHT, "Again!")
    sealer = Sealer.from_secret("a test secret that is long enough to use")
    async with Orchestrator(engine, model_name="m", sealer=sealer) as orch:
        first = await (
            await orch.create(spec(store=False, reasoning=ReasoningOptions(encrypted=True)))
        ).wait()
        reasoning = first.output[0]
        assert isinstance(reasoning, Reasoning) and reasoning.encrypted_content
        assert sealer.open("reasoning", reasoning.encrypted_content) == reasoning.text
        # A stateless client replays the item without its text: the model still reads it.
        replayed = Reasoning(id=reasoning.id, encrypted_content=reasoning.encrypted_content)
        answer = Message(role="assistant", content=[OutputText("Hello!")])
        await (await orch.create(spec(user("hi"), replayed, answer, user("again")))).wait()
        history = prompt(engine.jobs[2].request).messages
        assert history[1].role == "assistant" and history[1].content == "Hello!"
        assert history[1].reasoning == "The user greets me. I greet back."

        token = reasoning.encrypted_content
        tampered = Reasoning(id="rs_x", encrypted_content=token[:-4] + "AAAA")
        with pytest.raises(InvalidRequest) as caught:
            await orch.create(spec(user("hi"), tampered))
        assert caught.value.param == "input[1].encrypted_content"
        assert caught.value.code == "invalid_encrypted_content"
        assert "rs_x" in caught.value.message
        # Sealed for another purpose, or by another key: refused the same way.
        compaction_token = sealer.seal("compaction", "summary")
        with pytest.raises(InvalidRequest):
            await orch.create(spec(Reasoning(encrypted_content=compaction_token), user("hi")))
        stranger = Sealer.from_secret("another server's secret, also long enough")
        with pytest.raises(InvalidRequest):
            await orch.create(spec(Reasoning(encrypted_content=stranger.seal("reasoning", "x"))))


async def test_current_turn_context_drops_reasoning_of_earlier_turns() -> None:
    old = Reasoning(content=[ReasoningText("old thought")])
    new = Reasoning(content=[ReasoningText("new thought")])
    said = Message(role="assistant", content=[OutputText("Hi.")])
    items = (user("hi"), old, said, user("more"), new, said)

    async def seen(context: str) -> list[str]:
        engine = thinking_engine(THOUGHT, "ok")
        async with Orchestrator(engine, model_name="m") as orch:
            options = ReasoningOptions(context=context)  # type: ignore[arg-type]
            await (await orch.create(spec(*items, reasoning=options))).wait()
        return [m.reasoning for m in prompt(engine.jobs[0].request).messages if m.reasoning]

    assert await seen("all_turns") == ["old thought", "new thought"]
    assert await seen("auto") == ["old thought", "new thought"]
    assert await seen("current_turn") == ["new thought"]
