"""The tool loop: model step → decide → (built-in tools → next step) until an outcome.

Each step ends in one of a closed set of outcomes, decided from how the engine job finished
and what the model wrote, in this priority order:

1. :class:`EngineStopped`: the engine cancelled the job itself (it is closing): the
   response fails, since the answer was cut off by the server, not the client;
2. :class:`Incomplete`: the token budget ran out;
3. :class:`RunBuiltinTools`: the model called built-in tools (web search, MCP tools, a
   server-side tool search) and rounds remain;
4. :class:`AwaitClientTools`: the model called client tools (functions, custom tools, a
   client-run tool search), or MCP tools that need the client's approval: the response
   completes with their items and the client answers them;
5. :class:`FinalMessage`: an answer (the model ended its turn, or a stop sequence matched).

The client tools offered are worked out again at every step (:class:`~.toolset.ToolCatalog`):
a tool search run in this response loads tools for the steps after it.

Before the first step, the response's MCP servers are listed (:mod:`.mcp`), and calls the
input approves (``mcp_approval_response``) run as the first round. ``--max-tool-rounds`` caps
rounds of built-in tools: when reached, one last step runs with tools disabled so the model
answers from what it has. ``max_tool_calls`` caps built-in calls, MCP calls included
(:class:`~.builtin.CallBudget`): a call over it is not run, the model reads why, and later
steps no longer offer built-in tools. ``parallel_tool_calls: false`` lets a turn's call
grammar hold one call. Cancellation is the response's cancel scope, which reaches into
generation and tool runs alike; a job cancelled that way never reaches :func:`decide`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TypeAlias, assert_never

import anyio

from exloop.engine.protocol import Chat, ChatMessage, Engine, Grammar, ToolCall, ToolSpec
from exloop.engine.tool_calls.base import ToolCallFormat
from exloop.engine.tool_calls.grammar import MAX_CALLS

from .builtin import BuiltinCall, BuiltinRegistry, CallBudget
from .compaction import (
    DEFAULT_THRESHOLD_SHARE,
    compactable,
    compacted,
    summary_limit,
    summary_prompt,
)
from .conversation import ModelView, drop_oldest_turn, system_prompt, to_messages
from .items import Item, new_id
from .mcp import McpToolset, approved
from .output import OutputWriter
from .reasoning import thinking_plan
from .record import ResponseRecord
from .resource import IncompleteDetails
from .spec import RunSpec
from .state import Transition
from .step import (
    AnswerMode,
    AutoMode,
    CallMode,
    ModelStep,
    StepCall,
    StepMode,
    StepResult,
    offered_tools,
)
from .toolset import ToolCatalog


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


@dataclass(frozen=True, slots=True)
class EngineStopped:
    """The engine ended the job before the model finished (``Finish(reason="cancelled")``
    without the response being cancelled: the engine is closing)."""


Outcome: TypeAlias = FinalMessage | AwaitClientTools | RunBuiltinTools | Incomplete | EngineStopped

#: Why the engine stopped a job itself, as the failed response reports it.
ENGINE_STOPPED = "The model stopped before finishing the response: the server is shutting down."


def decide(result: StepResult, *, rounds_left: bool) -> Outcome:
    """The outcome of a step, in the documented priority order."""
    match result.finish:
        case "cancelled":
            return EngineStopped()
        case "length":
            return Incomplete()
        case "eos" | "stop":
            pass
        case _:
            assert_never(result.finish)
    builtin = tuple(c for c in result.calls if c.kind == "builtin")
    client = tuple(c for c in result.calls if c.kind != "builtin")
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
        mcp: McpToolset,
        *,
        max_tool_rounds: int,
        thinking_constraint: Grammar | None = None,
        catalog: ToolCatalog | None = None,
    ) -> None:
        self._engine = engine
        self._format = tool_format
        self._builtins = builtins
        self._mcp = mcp
        self._max_rounds = max_tool_rounds
        self._thinking_constraint = thinking_constraint
        self._catalog = catalog or ToolCatalog(())

    def first_chat(self, spec: RunSpec, view: ModelView, conversation: Sequence[Item]) -> Chat:
        """The chat of the run's first step (its messages, the tools it offers and the
        thinking switch), as the model's template will render it: what a run's input costs
        in tokens. ``conversation`` is the whole of it (earlier turns and the input), whose
        items add and load client tools."""
        messages = to_messages(view.items, spec.instructions, spec.reasoning.context, view.summary)
        builtins = () if CallBudget(spec.tools.max_tool_calls).spent else self._builtins.specs
        shown = (*self._catalog.offered(conversation).specs, *builtins)
        mode = self._mode(spec, shown, builtins, first=True, capped=False)
        chat = Chat(tuple(messages), offered_tools(mode, shown))
        thinking = thinking_plan(
            self._engine.info.thinking, spec.reasoning, self._thinking_constraint
        )
        return chat if thinking is None else replace(chat, thinking=thinking.enabled)

    async def run(self, record: ResponseRecord, writer: OutputWriter, view: ModelView) -> None:
        """Run ``record`` to its end over the conversation as the model reads it."""
        async with self._mcp as mcp:
            taken = {*self._catalog.names, *(tool.name for tool in self._builtins.specs)}
            self._builtins.extend(await mcp.open(writer, list(view.items), taken))
            await self._loop(record, writer, view)

    async def _loop(self, record: ResponseRecord, writer: OutputWriter, view: ModelView) -> None:
        spec = record.spec
        history = list(view.items)
        messages = to_messages(view.items, spec.instructions, spec.reasoning.context, view.summary)
        has_head = system_prompt(spec.instructions, view.summary) is not None
        step = ModelStep(self._engine, record, writer, self._format, self._builtins)
        budget = CallBudget(spec.tools.max_tool_calls)
        thinking = thinking_plan(
            self._engine.info.thinking, spec.reasoning, self._thinking_constraint
        )
        rounds = 0
        first = True
        resumed = self._approved_calls(history, record.input_items, writer)
        if resumed:
            # Approved calls run first thing; they stand for this response's first tool use.
            await self._round(record, resumed, "", writer, messages, budget)
            rounds += 1
            first = False
        while True:
            capped = rounds >= self._max_rounds and bool(self._builtins)
            # Tools loaded by turns a compaction replaced stay loaded: the catalog reads the
            # whole conversation, not the model's view of it.
            offered = self._catalog.offered([*record.context, *record.input_items, *record.output])
            builtins = () if budget.spent else self._builtins.specs
            shown = (*offered.specs, *builtins)
            mode = self._mode(spec, shown, builtins, first=first, capped=capped)
            if capped:
                record.tool_rounds_capped = True
            if await self._should_compact(messages, spec, shown, has_head=has_head):
                messages, has_head = await self._compact(messages, has_head, spec, step, writer)
            await self._fit_context(messages, spec, offered_tools(mode, shown))
            sampling = replace(
                spec.sampling,
                max_tokens=_budget(spec.sampling.max_tokens, record.usage.output_tokens),
            )
            result = await step.run(
                messages, mode, sampling, thinking, shown=shown, targets=offered.targets
            )
            first = False
            outcome = decide(result, rounds_left=not capped)
            match outcome:
                case EngineStopped():
                    writer.close_all("incomplete")
                    record.fail("server_error", ENGINE_STOPPED)
                    return
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
                    await self._round(
                        record, calls, result.text, writer, messages, budget, result.reasoning
                    )
                    if client_calls:
                        record.complete()
                        return
                    rounds += 1
                case _:
                    assert_never(outcome)

    async def compact(self, record: ResponseRecord, writer: OutputWriter, view: ModelView) -> None:
        """Compact the conversation into one compaction item (``/v1/responses/compact``)."""
        spec = record.spec
        messages = to_messages(view.items, spec.instructions, spec.reasoning.context, view.summary)
        step = ModelStep(self._engine, record, writer, self._format, self._builtins)
        has_head = system_prompt(spec.instructions, view.summary) is not None
        await self._compact(messages, has_head, spec, step, writer)
        record.complete()

    async def _should_compact(
        self,
        messages: list[ChatMessage],
        spec: RunSpec,
        tools: tuple[ToolSpec, ...],
        *,
        has_head: bool,
    ) -> bool:
        """Whether ``context_management`` asks to compact now: the prompt (with the ``tools``
        the step shows) is over the threshold and compacting would drop something."""
        if spec.compaction is None or not compactable(messages, has_head=has_head):
            return False
        threshold = spec.compaction.threshold or int(
            self._engine.info.context_length * DEFAULT_THRESHOLD_SHARE
        )
        return await self._engine.count_tokens(Chat(tuple(messages), tools)) > threshold

    async def _compact(
        self,
        messages: list[ChatMessage],
        has_head: bool,
        spec: RunSpec,
        step: ModelStep,
        writer: OutputWriter,
    ) -> tuple[list[ChatMessage], bool]:
        """Have the model summarize ``messages`` into a compaction item; the messages that
        remain after it, and whether they start with a system prompt."""
        index = writer.open_compaction()
        prompt = summary_prompt(messages)
        length = self._engine.info.context_length
        limit = summary_limit(await self._engine.count_tokens(Chat(tuple(messages))), length)
        # The summary sees as much of the conversation as fits beside it.
        context = length - limit
        while await self._engine.count_tokens(Chat(tuple(prompt))) > context:
            if not drop_oldest_turn(prompt):
                break
        sampling = replace(spec.sampling, max_tokens=limit, logprobs=False)
        summary = await step.summarize(prompt, sampling)
        writer.close_compaction(index, summary)
        remaining = compacted(
            messages, has_head=has_head, instructions=spec.instructions, summary=summary
        )
        return remaining, system_prompt(spec.instructions, summary) is not None

    async def _round(
        self,
        record: ResponseRecord,
        calls: tuple[StepCall, ...],
        text: str,
        writer: OutputWriter,
        messages: list[ChatMessage],
        budget: CallBudget,
        reasoning: str = "",
    ) -> None:
        """Run a round of built-in calls and add the turn (with the ``reasoning`` that led to
        it) and its results to ``messages``."""
        record.move(Transition.RUN_TOOLS)
        results = await self._run_builtins(calls, writer, budget)
        messages.append(
            ChatMessage(
                role="assistant",
                content=text,
                tool_calls=tuple(ToolCall(c.call_id, c.name, c.arguments) for c in calls),
                reasoning=reasoning,
            )
        )
        messages.extend(
            ChatMessage(role="tool", content=result, tool_call_id=c.call_id, name=c.name)
            for c, result in zip(calls, results, strict=True)
        )
        record.move(Transition.GENERATE)

    def _approved_calls(
        self, history: list[Item], inputs: tuple[Item, ...], writer: OutputWriter
    ) -> tuple[StepCall, ...]:
        """The calls the input approves, as ``mcp_call`` items ready to run."""
        calls = []
        for request, response in approved(history, inputs):
            tool = self._builtins.find_mcp(request.server_label, request.name)
            call_id = new_id("call")
            writer.open_mcp_call(
                request.server_label,
                request.name,
                call_id,
                request.arguments,
                response.approval_request_id,
            )
            name = tool.spec.name if tool is not None else request.name
            calls.append(StepCall(call_id, name, request.arguments, "builtin"))
        return tuple(calls)

    def _mode(
        self,
        spec: RunSpec,
        shown: tuple[ToolSpec, ...],
        builtins: tuple[ToolSpec, ...],
        *,
        first: bool,
        capped: bool,
    ) -> StepMode:
        """The step's mode: ``shown`` are the tools offered (client and ``builtins``)."""
        policy = spec.tools
        allowed = tuple(t for t in shown if self._allows(spec, t.name))
        if capped or policy.mode == "none" or not shown:
            return AnswerMode(spec.constraint)
        per_turn = MAX_CALLS if policy.parallel_tool_calls else 1
        if first and builtins and policy.web_search is not None and policy.web_search.forced:
            return CallMode(builtins[:1], max_calls=1)
        if first and builtins and policy.forced_mcp is not None:
            choice = policy.forced_mcp
            forced = self._builtins.mcp_specs(choice.server_label, choice.name)
            # A server that could not list its tools (or lacks the tool) forces nothing.
            if forced:
                return CallMode(forced, max_calls=1 if choice.name else per_turn)
        if first and policy.forced is not None:
            named = next((t for t in shown if t.name == policy.forced), None)
            named = named or self._catalog.find(policy.forced)
            if named is not None:
                return CallMode((named,), max_calls=1)
        if first and policy.mode == "required" and allowed:
            return CallMode(allowed, max_calls=per_turn)
        if spec.constraint is not None or not allowed:
            # A structured-output constraint leaves no room for call syntax.
            return AnswerMode(spec.constraint)
        return AutoMode(allowed, max_calls=per_turn)

    def _allows(self, spec: RunSpec, name: str) -> bool:
        """Whether ``allowed_tools`` lets the model call the tool it knows as ``name``."""
        route = self._builtins.route(name)
        return spec.tools.allows(name, route.server_label if route is not None else None)

    async def _run_builtins(
        self, calls: tuple[StepCall, ...], writer: OutputWriter, budget: CallBudget
    ) -> list[str]:
        """Run a round's built-in calls concurrently; results keep the calls' order.

        Every built-in call passes the budget here, whatever its tool (MCP calls, approved
        ones included); a call over it is not run, and its result tells the model so.
        """
        results = [""] * len(calls)

        async def run_one(i: int, call: StepCall) -> None:
            if call.name not in self._builtins:
                results[i] = f"Error: the tool '{call.name}' is not available."
                writer.abandon_call(call.call_id, results[i])
                return
            try:
                arguments = json.loads(call.arguments or "{}")
            except json.JSONDecodeError as exc:
                results[i] = f"Error: the arguments are not valid JSON ({exc})."
                writer.abandon_call(call.call_id, results[i])
                return
            if not isinstance(arguments, dict):
                results[i] = "Error: the arguments must be a JSON object."
                writer.abandon_call(call.call_id, results[i])
                return
            tool = self._builtins.get(call.name)
            results[i] = await tool.run(BuiltinCall(call.call_id, call.name, arguments), writer)

        async with anyio.create_task_group() as tg:
            for i, call in enumerate(calls):
                if budget.take():
                    tg.start_soon(run_one, i, call)
                else:
                    results[i] = budget.refusal()
                    writer.abandon_call(call.call_id, results[i])
        return results

    async def _fit_context(
        self, messages: list[ChatMessage], spec: RunSpec, tools: tuple[ToolSpec, ...]
    ) -> None:
        """With truncation auto, drop the oldest turns until the prompt fits, counted as the
        step renders it: with the definitions of the tools it offers."""
        if spec.truncation != "auto":
            return
        limit = self._engine.info.context_length - (spec.sampling.max_tokens or 1)
        while await self._engine.count_tokens(Chat(tuple(messages), tools)) > limit:
            if not drop_oldest_turn(messages):
                return


def _budget(limit: int | None, used: int) -> int | None:
    return None if limit is None else max(1, limit - used)
