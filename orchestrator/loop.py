"""The tool loop: model step → decide → (built-in tools → next step) until an outcome.

Each step ends in one of a closed set of outcomes, decided in this priority order:

1. :class:`Incomplete`: the token budget ran out;
2. :class:`RunBuiltinTools`: the model called built-in tools and rounds remain;
3. :class:`AwaitClientTools`: the model called client functions: the response completes
   with its function_call items and the client runs them;
4. :class:`FinalMessage`: an answer.

``--max-tool-rounds`` caps rounds of built-in tools: when reached, one last step runs with
tools disabled so the model answers from what it has. Cancellation is the response's cancel
scope, which reaches into generation and tool runs alike.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from typing import TypeAlias, assert_never

import anyio

from exloop.engine.protocol import Chat, ChatMessage, Engine, ToolCall
from exloop.engine.tool_calls.base import ToolCallFormat

from .builtin import BuiltinCall, BuiltinRegistry
from .conversation import drop_oldest_turn, to_messages
from .items import Item
from .output import OutputWriter
from .record import ResponseRecord
from .resource import IncompleteDetails
from .spec import RunSpec
from .state import Transition
from .step import AnswerMode, AutoMode, CallMode, ModelStep, StepCall, StepMode, StepResult


@dataclass(frozen=True, slots=True)
class FinalMessage:
    pass


@dataclass(frozen=True, slots=True)
class AwaitClientTools:
    calls: tuple[StepCall, ...]


@dataclass(frozen=True, slots=True)
class RunBuiltinTools:
    calls: tuple[StepCall, ...]
    client_calls: tuple[StepCall, ...]


@dataclass(frozen=True, slots=True)
class Incomplete:
    """The token budget (``max_output_tokens``) ran out."""


Outcome: TypeAlias = FinalMessage | AwaitClientTools | RunBuiltinTools | Incomplete


def decide(result: StepResult, *, rounds_left: bool) -> Outcome:
    """The outcome of a step, in the documented priority order."""
    if result.finish == "length":
        return Incomplete()
    builtin = tuple(c for c in result.calls if c.builtin)
    client = tuple(c for c in result.calls if not c.builtin)
    if builtin and rounds_left:
        return RunBuiltinTools(builtin, client)
    if client:
        return AwaitClientTools(client)
    return FinalMessage()


class ToolLoop:
    """Runs one response from its first step to a terminal state."""

    def __init__(
        self,
        engine: Engine,
        tool_format: ToolCallFormat,
        builtins: BuiltinRegistry,
        *,
        max_tool_rounds: int,
    ) -> None:
        self._engine = engine
        self._format = tool_format
        self._builtins = builtins
        self._max_rounds = max_tool_rounds

    async def run(self, record: ResponseRecord, writer: OutputWriter, history: list[Item]) -> None:
        spec = record.spec
        messages = to_messages(history, spec.instructions)
        builtin_names = frozenset(s.name for s in self._builtins.specs)
        step = ModelStep(self._engine, record, writer, self._format, builtin_names)
        rounds = 0
        first = True
        while True:
            capped = rounds >= self._max_rounds and bool(self._builtins)
            mode = self._mode(spec, first=first, capped=capped)
            if capped:
                record.tool_rounds_capped = True
            await self._fit_context(messages, spec)
            sampling = replace(
                spec.sampling,
                max_tokens=_budget(spec.sampling.max_tokens, record.usage.output_tokens),
            )
            result = await step.run(messages, mode, sampling)
            first = False
            outcome = decide(result, rounds_left=not capped)
            match outcome:
                case Incomplete():
                    # A cut-off answer still cites the sources of the text it has.
                    citations = self._builtins.annotate(writer.message_text)
                    writer.close_message("incomplete", citations)
                    writer.close_all("incomplete")
                    record.stop_short(IncompleteDetails(reason="max_output_tokens"))
                    return
                case FinalMessage():
                    writer.close_message(annotations=self._builtins.annotate(writer.message_text))
                    record.complete()
                    return
                case AwaitClientTools():
                    writer.close_message()
                    record.complete()
                    return
                case RunBuiltinTools(calls=calls, client_calls=client_calls):
                    writer.close_message()
                    record.move(Transition.RUN_TOOLS)
                    results = await self._run_builtins(calls, writer)
                    messages.append(
                        ChatMessage(
                            role="assistant",
                            content=result.text,
                            tool_calls=tuple(
                                ToolCall(c.call_id, c.name, c.arguments) for c in calls
                            ),
                        )
                    )
                    messages.extend(
                        ChatMessage(role="tool", content=text, tool_call_id=c.call_id, name=c.name)
                        for c, text in zip(calls, results, strict=True)
                    )
                    if client_calls:
                        record.move(Transition.GENERATE)
                        record.complete()
                        return
                    rounds += 1
                    record.move(Transition.GENERATE)
                case _:
                    assert_never(outcome)

    def _mode(self, spec: RunSpec, *, first: bool, capped: bool) -> StepMode:
        policy = spec.tools
        offered = (*policy.functions, *self._builtins.specs)
        if capped or policy.mode == "none" or not offered:
            return AnswerMode(spec.constraint)
        if first and policy.web_search is not None and policy.web_search.forced:
            return CallMode(self._builtins.specs[:1], max_calls=1)
        if first and policy.forced_name is not None:
            return CallMode(tuple(t for t in offered if t.name == policy.forced_name), max_calls=1)
        if first and policy.mode == "required":
            return CallMode(offered)
        if spec.constraint is not None:
            # A structured-output constraint leaves no room for call syntax.
            return AnswerMode(spec.constraint)
        return AutoMode(offered)

    async def _run_builtins(self, calls: tuple[StepCall, ...], writer: OutputWriter) -> list[str]:
        """Run a round's built-in calls concurrently; results keep the calls' order."""
        results = [""] * len(calls)

        async def run_one(i: int, call: StepCall) -> None:
            try:
                arguments = json.loads(call.arguments or "{}")
            except json.JSONDecodeError as exc:
                results[i] = f"Error: the arguments are not valid JSON ({exc})."
                return
            tool = self._builtins.get(call.name)
            results[i] = await tool.run(BuiltinCall(call.call_id, call.name, arguments), writer)

        async with anyio.create_task_group() as tg:
            for i, call in enumerate(calls):
                tg.start_soon(run_one, i, call)
        return results

    async def _fit_context(self, messages: list[ChatMessage], spec: RunSpec) -> None:
        """With truncation auto, drop the oldest turns until the prompt fits."""
        if spec.truncation != "auto":
            return
        limit = self._engine.info.context_length - (spec.sampling.max_tokens or 1)
        while await self._engine.count_tokens(Chat(tuple(messages))) > limit:
            if not drop_oldest_turn(messages):
                return


def _budget(limit: int | None, used: int) -> int | None:
    return None if limit is None else max(1, limit - used)
