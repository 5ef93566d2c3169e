"""One model step: generate, parse tool calls as they stream, write the output.

A step runs in one of three modes:

* :class:`AnswerMode`: free text (under the request's output constraint, if any); no calls.
* :class:`AutoMode`: free text, stopping at the format's call trigger; if the model reaches
  it, the step continues the same assistant turn under a grammar of calls to the offered
  tools, so strict arguments are valid by construction and nothing is repaired afterwards.
* :class:`CallMode`: the whole turn is generated under the call grammar (``tool_choice``
  required or naming a tool, and the forced first search of ``web_search_options``).

The prompt shows every tool offered (``shown``); the grammar lets the model call only the
mode's tools (``allowed_tools`` may name fewer). Calls are routed by the tool's name to what
they become: a function_call or custom_tool_call item streamed as it is written, a client
tool search's ``tool_search_call`` item, an MCP tool's ``mcp_call`` (or, when it needs the
client's approval, ``mcp_approval_request``) item, or a built-in call the loop runs.

A model that thinks (:mod:`.reasoning`) first writes its think block: the step generates up to
the close tag (or the thinking budget, after which it closes the block itself) into a
reasoning item, then runs the mode as the continuation of the same assistant turn. With
thinking off, the turn starts after an empty block. Jobs that continue one turn count their
prompt as input once: only what the turn's earlier jobs had not already counted.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Literal, TypeAlias, assert_never

import anyio

from exloop.engine.protocol import (
    Chat,
    ChatMessage,
    Delta,
    Engine,
    Finish,
    FinishReason,
    GenerationRequest,
    Grammar,
    Started,
    ToolSpec,
    Usage,
)
from exloop.engine.sampling import SamplingParams
from exloop.engine.tool_calls.base import (
    ArgumentsDelta,
    CallEnd,
    CallStart,
    ParseEvent,
    TextChunk,
    ToolCallFormat,
    ToolCallParseError,
    ToolCallParser,
)
from exloop.engine.tool_calls.grammar import MAX_CALLS

from .builtin import BuiltinRegistry
from .items import Logprob, ToolSearchCall, TopLogprob, new_id
from .output import OutputWriter
from .reasoning import ThinkingPlan, ThoughtSink
from .record import ResponseRecord
from .toolset import ToolTarget


@dataclass(frozen=True, slots=True)
class AnswerMode:
    constraint: Grammar | None = None


@dataclass(frozen=True, slots=True)
class AutoMode:
    tools: tuple[ToolSpec, ...]
    #: Calls the turn may make once it starts calling (one with ``parallel_tool_calls: false``).
    max_calls: int = MAX_CALLS


@dataclass(frozen=True, slots=True)
class CallMode:
    tools: tuple[ToolSpec, ...]
    #: One when ``tool_choice`` names a tool (or for the forced first search), or with
    #: ``parallel_tool_calls: false``.
    max_calls: int = MAX_CALLS


StepMode: TypeAlias = AnswerMode | AutoMode | CallMode


#: What a call is: a client function, custom tool or tool search (the client runs these), a
#: built-in tool the server runs (MCP tools included), or an MCP call that waits for the
#: client's approval.
CallKind: TypeAlias = Literal["function", "custom", "tool_search", "builtin", "approval"]


@dataclass(frozen=True, slots=True)
class StepCall:
    """A complete call the model made in this step."""

    call_id: str
    name: str
    arguments: str
    kind: CallKind


@dataclass(frozen=True, slots=True)
class StepResult:
    text: str
    calls: tuple[StepCall, ...]
    finish: FinishReason
    completion_tokens: int
    #: What the model thought before ``text`` and ``calls`` (a model that thinks).
    reasoning: str = ""


@dataclass(frozen=True, slots=True)
class _Thought:
    """The think block of a turn: the prefix the rest of the turn continues from."""

    prefix: str
    text: str = ""
    #: Set when the turn ends in the think block (the token budget ran out, or a cancel).
    finish: Finish | None = None
    tokens: int = 0


class ModelStep:
    """Runs steps of one response on an engine."""

    def __init__(
        self,
        engine: Engine,
        record: ResponseRecord,
        writer: OutputWriter,
        tool_format: ToolCallFormat,
        builtins: BuiltinRegistry,
    ) -> None:
        self._engine = engine
        self._record = record
        self._writer = writer
        self._format = tool_format
        self._builtins = builtins
        #: Prompt and output tokens the current turn's jobs have counted so far.
        self._turn_tokens = 0

    async def run(
        self,
        messages: Sequence[ChatMessage],
        mode: StepMode,
        sampling: SamplingParams,
        thinking: ThinkingPlan | None = None,
        *,
        shown: Sequence[ToolSpec] = (),
        targets: Mapping[str, ToolTarget] | None = None,
    ) -> StepResult:
        """One step. ``shown`` are the tools the prompt lists (the mode's, when empty);
        ``targets`` maps each client tool's name to what its calls become (a name it lacks is
        a built-in tool's)."""
        chat = Chat(messages=tuple(messages), tools=offered_tools(mode, shown))
        self._turn_tokens = 0
        thought = _Thought(prefix="")
        if thinking is not None:
            chat = replace(chat, thinking=thinking.enabled)
            thought = await self._think(chat, thinking, sampling)
            if thought.finish is not None:
                return StepResult("", (), thought.finish.reason, thought.tokens, thought.text)
            chat = replace(chat, assistant_prefix=thought.prefix)
            sampling = replace(sampling, max_tokens=_remaining(sampling.max_tokens, thought.tokens))
        callable_tools = () if isinstance(mode, AnswerMode) else mode.tools
        freeform = frozenset(t.name for t in callable_tools if t.freeform is not None)
        sink = _Sink(self._writer, targets or {}, self._builtins, self._format.parser(freeform))
        match mode:
            case AnswerMode(constraint=constraint):
                finish, used = await self._generate(chat, sampling, constraint, sink.text)
            case CallMode(tools=tools, max_calls=max_calls):
                grammar = self._format.call_grammar(
                    tools, include_trigger=True, max_calls=max_calls
                )
                finish, used = await self._generate(chat, sampling, grammar, sink.calls)
            case AutoMode(tools=tools, max_calls=max_calls):
                stops = (*sampling.stop, *self._format.triggers)
                free = replace(sampling, stop=stops)
                finish, used = await self._generate(chat, free, None, sink.text)
                if finish.reason == "stop" and finish.stop_sequence in self._format.triggers:
                    trigger = finish.stop_sequence or ""
                    sink.calls(trigger, [])
                    chat = replace(chat, assistant_prefix=thought.prefix + sink.raw_text + trigger)
                    grammar = self._format.call_grammar(
                        tools, include_trigger=False, max_calls=max_calls
                    )
                    rest = replace(sampling, max_tokens=_remaining(sampling.max_tokens, used))
                    finish, more = await self._generate(chat, rest, grammar, sink.calls)
                    used += more
        try:
            sink.finish(cut=finish.reason in ("length", "stop"))
        except ToolCallParseError:
            # Calls are generated under their grammar, so only a cut-off (the token budget, or
            # the engine stopping the job) can leave one open.
            if finish.reason not in ("length", "cancelled"):
                raise
        return StepResult(
            text=sink.raw_text,
            calls=tuple(sink.completed),
            finish=finish.reason,
            completion_tokens=thought.tokens + used,
            reasoning=thought.text,
        )

    async def summarize(self, messages: Sequence[ChatMessage], sampling: SamplingParams) -> str:
        """The model's answer to ``messages``, without thinking and written to no item (the
        summary of a compaction)."""
        self._turn_tokens = 0
        chat = Chat(messages=tuple(messages))
        syntax = self._engine.info.thinking
        if syntax is not None:
            chat = replace(chat, thinking=False)
            off = await self._think(chat, ThinkingPlan(syntax, enabled=False, budget=0), sampling)
            chat = replace(chat, assistant_prefix=off.prefix)
        parts: list[str] = []
        await self._generate(chat, sampling, None, lambda text, _: parts.append(text))
        return "".join(parts).strip()

    async def _think(self, chat: Chat, plan: ThinkingPlan, sampling: SamplingParams) -> _Thought:
        """Write the turn's think block into a reasoning item (or skip it, thinking off)."""
        syntax = plan.syntax
        state = syntax.prompt_state(self._engine.render(chat))
        if not plan.enabled or state == "closed":
            # Off: start after an empty block, unless the template already wrote one.
            empty = {"closed": "", "open": f"\n{syntax.close}\n\n"}
            return _Thought(empty.get(state, f"{syntax.open}\n\n{syntax.close}\n\n"))
        opening = "" if state == "open" else f"{syntax.open}\n"
        limit = plan.budget
        if sampling.max_tokens is not None:
            limit = sampling.max_tokens if limit is None else min(limit, sampling.max_tokens)
        thinking = replace(sampling, stop=(syntax.close,), max_tokens=limit, logprobs=False)
        sink = ThoughtSink(self._writer.reasoning)
        finish, used = await self._generate(
            replace(chat, assistant_prefix=opening), thinking, plan.constraint, sink
        )
        self._record.usage.reasoning_tokens += used
        text = sink.raw.strip()
        out_of_tokens = sampling.max_tokens is not None and used >= sampling.max_tokens
        if finish.reason == "cancelled" or (finish.reason == "length" and out_of_tokens):
            self._writer.close_reasoning("incomplete")
            return _Thought("", text, finish, used)
        self._writer.close_reasoning()
        # Closed by the model, or by us: its budget ran out, it ended its turn while thinking
        # or its grammar was done. Either way the answer follows the closed block.
        closing = "" if finish.reason == "stop" else "\n"
        return _Thought(f"{opening}{sink.raw}{closing}{syntax.close}\n\n", text, None, used)

    async def _generate(
        self,
        chat: Chat,
        sampling: SamplingParams,
        constraint: Grammar | None,
        on_delta: Callable[[str, list[Logprob]], None],
    ) -> tuple[Finish, int]:
        """One engine job; returns its Finish and the tokens it generated.

        Output tokens are counted as they arrive, and a cancelled job's prompt is counted on
        the way out, so a cancelled response reports what it used; the Finish event's usage
        settles the figures of a job that ends. A job that continues the step's turn counts
        as input only the prompt tokens the turn's earlier jobs had not counted.
        """
        usage = self._record.usage
        seen = self._turn_tokens
        job = await self._engine.submit(
            GenerationRequest(prompt=chat, sampling=sampling, constraint=constraint)
        )
        self._record.arrival.close()  # the engine has the job: no longer on its way
        meter = self._writer.meter
        meter.job_started()
        counted = 0
        try:
            async for event in job.events():
                match event:
                    case Started():
                        self._record.begin()
                    case Delta():
                        meter.tokens(len(event.token_ids))
                        counted += len(event.token_ids)
                        usage.output_tokens += len(event.token_ids)
                        on_delta(event.text, _logprobs(event) if sampling.logprobs else [])
                    case Finish():
                        usage.output_tokens -= counted
                        used = event.usage
                        usage.add(
                            Usage(
                                prompt_tokens=max(0, used.prompt_tokens - seen),
                                completion_tokens=used.completion_tokens,
                                cached_tokens=max(0, used.cached_tokens - seen),
                            )
                        )
                        self._turn_tokens = max(seen, used.prompt_tokens) + used.completion_tokens
                        return event, used.completion_tokens
                    case _:
                        assert_never(event)
        except anyio.get_cancelled_exc_class():
            with anyio.CancelScope(shield=True):
                prompt = await self._engine.count_tokens(chat)
                usage.input_tokens += max(0, prompt - seen)
            raise
        raise RuntimeError("engine job ended without a Finish event")


def offered_tools(mode: StepMode, shown: Sequence[ToolSpec] = ()) -> tuple[ToolSpec, ...]:
    """The tools a step in ``mode`` lists in its prompt: every tool offered (``shown``; the
    mode's own when none are given), and none when it answers."""
    if isinstance(mode, AnswerMode) or not mode.tools:
        return ()
    return tuple(shown) or mode.tools


def _remaining(budget: int | None, used: int) -> int | None:
    return None if budget is None else max(1, budget - used)


def _logprobs(delta: Delta) -> list[Logprob]:
    return [
        Logprob(
            token=lp.token,
            logprob=lp.logprob,
            bytes=list(lp.bytes),
            top_logprobs=[
                TopLogprob(token=t.token, logprob=t.logprob, bytes=list(t.bytes)) for t in lp.top
            ],
        )
        for lp in delta.logprobs
    ]


class _Sink:
    """Routes a step's generated text: plain text to the message, call syntax through the
    format's parser to function_call / custom_tool_call items, a client tool search's item,
    mcp_call or mcp_approval_request items (MCP tools), or the built-in call list."""

    def __init__(
        self,
        writer: OutputWriter,
        targets: Mapping[str, ToolTarget],
        builtins: BuiltinRegistry,
        parser: ToolCallParser,
    ) -> None:
        self._writer = writer
        self._targets = targets
        self._builtins = builtins
        self._parser = parser
        self._parsing = False
        self._cut = False
        self.raw_text = ""
        self._pending_space = ""
        self.completed: list[StepCall] = []
        #: The open calls by index: call id, name, and what they become (None: built-in).
        self._open: dict[int, tuple[str, str, ToolTarget | None]] = {}

    def text(self, text: str, logprobs: list[Logprob]) -> None:
        self.raw_text += text
        # Leading whitespace opens no message: a turn that is only a call has no text item.
        if not self._writer.message_text:
            text = self._pending_space + text
            if not text.strip():
                self._pending_space = text
                return
            text = text.lstrip()
            self._pending_space = ""
        self._writer.text(text, logprobs)

    def calls(self, text: str, logprobs: list[Logprob]) -> None:
        self._parsing = True
        self._route(self._parser.feed(text))

    def finish(self, *, cut: bool = False) -> None:
        """Flush the parser. With ``cut`` (the token budget ran out, or a stop sequence
        ended the output) a freeform call the output ended inside is closed ``incomplete``:
        its input may not be whole, so it is no call to run."""
        self._cut = cut
        if self._parsing:
            self._route(self._parser.finish())

    def _streamed(self, name: str, target: ToolTarget | None) -> bool:
        """Whether the call's item is written as the model generates it: a client function's
        or custom tool's, or an MCP call's that needs no approval."""
        if target is not None:
            return target.kind != "tool_search"
        route = self._builtins.route(name)
        return route is not None and not route.needs_approval

    def _route(self, events: list[ParseEvent]) -> None:
        for event in events:
            match event:
                case TextChunk(text=text):
                    if text.strip() or self._writer.message_text:
                        self.text(text, [])
                case CallStart(index=index, name=name):
                    call_id = new_id("call")
                    target = self._targets.get(name)
                    self._open[index] = (call_id, name, target)
                    if not self._streamed(name, target):
                        continue
                    route = self._builtins.route(name) if target is None else None
                    if route is not None:
                        self._writer.open_call(
                            route.tool_name, call_id, server_label=route.server_label
                        )
                    elif target is not None:
                        self._writer.open_call(
                            target.name,
                            call_id,
                            namespace=target.namespace,
                            custom=target.kind == "custom",
                        )
                case ArgumentsDelta(index=index, delta=delta):
                    _, name, target = self._open[index]
                    if self._streamed(name, target):
                        self._writer.call_arguments(delta)
                case CallEnd(index=index, name=name, arguments=arguments):
                    call_id, _, target = self._open.pop(index)
                    if target is not None and target.kind == "custom" and self._cut:
                        self._writer.close_call(arguments, "incomplete")
                        continue
                    kind = self._end(call_id, name, arguments, target)
                    self.completed.append(StepCall(call_id, name, arguments, kind))

    def _end(self, call_id: str, name: str, arguments: str, target: ToolTarget | None) -> CallKind:
        """Finish the call's item, if it has one; returns what the call is."""
        if target is None:
            route = self._builtins.route(name)
            if route is None:
                return "builtin"
            if route.needs_approval:
                self._writer.approval_request(route.server_label, route.tool_name, arguments)
                return "approval"
            self._writer.close_call(arguments)
            return "builtin"
        if target.kind == "tool_search":
            self._writer.add_item(
                ToolSearchCall(
                    json.loads(arguments), "client", call_id, new_id("tsc"), status="completed"
                )
            )
            self._writer.meter.telemetry.tool_call("tool_search", "completed")
        else:
            self._writer.close_call(arguments)
        return target.kind
