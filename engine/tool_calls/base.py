"""What every tool-call format provides: rendering, a streaming parser and a call grammar.

A format is one model family's way of writing tool calls as text (Hermes/Qwen
``<tool_call>{...}</tool_call>``, Llama 3 ``<|python_tag|>``, Mistral ``[TOOL_CALLS]``, and our
own fallback for templates that have none). Parsers do no I/O: text goes in through
:meth:`ToolCallParser.feed` and :meth:`ToolCallParser.finish`, events come out.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeAlias

from ..protocol import Grammar, ToolCall, ToolSpec
from .grammar import MAX_CALLS


@dataclass(frozen=True, slots=True)
class TextChunk:
    """Plain text outside any call."""

    text: str


@dataclass(frozen=True, slots=True)
class CallStart:
    """A call began and its tool name is known. ``index`` counts calls from 0 in one output."""

    index: int
    name: str


@dataclass(frozen=True, slots=True)
class ArgumentsDelta:
    """More of the call's JSON arguments text (a freeform tool's raw input); the deltas
    concatenate to ``CallEnd.arguments``."""

    index: int
    delta: str


@dataclass(frozen=True, slots=True)
class CallEnd:
    """A call is complete; ``arguments`` is its JSON arguments text, or a freeform tool's raw
    input."""

    index: int
    name: str
    arguments: str


ParseEvent: TypeAlias = TextChunk | CallStart | ArgumentsDelta | CallEnd


class ToolCallParseError(ValueError):
    """The text opened a call that cannot be completed (malformed or unterminated)."""


class ToolCallParser(Protocol):
    """Incremental parser of one generated output. Chunk boundaries may fall anywhere,
    inside tags included; a partial trigger is held back until it is resolved, so a half-parsed
    call never comes out as text. Any chunking of the same output gives the same events, up to
    how text and argument deltas are split.

    Text outside calls comes out as :class:`TextChunk` as soon as it cannot start a trigger.
    A call yields :class:`CallStart` once its name is read, :class:`ArgumentsDelta` as its
    arguments arrive, and :class:`CallEnd` once it is closed, its arguments checked as JSON.
    A freeform tool's call is the last of its output: its input is the rest of the output
    (less the format's closing text at the very end), complete at :meth:`finish`.
    """

    def feed(self, text: str) -> list[ParseEvent]:
        """The events ``text`` completes. Never raises: once a call turns out malformed, the
        parser emits nothing more and :meth:`finish` raises."""
        ...

    def finish(self) -> list[ParseEvent]:
        """Flush at the end of the output. Raises :class:`ToolCallParseError` when a call was
        opened and not completed."""
        ...


class ToolCallFormat(Protocol):
    """One model family's tool-call syntax."""

    #: Registry name, as given to ``--tool-call-format``.
    name: str
    #: Text that opens a call inside free text. The orchestrator stops free generation there
    #: and continues under :meth:`call_grammar` with ``include_trigger=False``.
    triggers: tuple[str, ...]

    def parser(self, freeform: Collection[str] = ()) -> ToolCallParser:
        """A parser for one output; ``freeform`` names the tools whose calls take raw input."""
        ...

    def call_grammar(
        self, tools: Sequence[ToolSpec], *, include_trigger: bool, max_calls: int = MAX_CALLS
    ) -> Grammar:
        """A grammar for one or more calls to ``tools`` and nothing else.

        Guided tools get their arguments constrained by their JSON schema; other tools get
        any JSON object; a freeform tool's raw input follows its grammar, and such a call
        comes last. With ``include_trigger=False`` the grammar starts just after the trigger
        text (which the prompt already ends with). At most ``max_calls`` calls (one, when
        ``tool_choice`` names a tool): a bound, so a model that keeps opening calls still ends.
        """
        ...

    def render_calls(self, calls: Sequence[ToolCall]) -> str:
        """An assistant turn's calls as the model would have written them (for templates
        that cannot render ``tool_calls`` themselves)."""
        ...

    def render_result(self, name: str | None, call_id: str | None, content: str) -> str:
        """A tool result as text (for templates without a ``tool`` role)."""
        ...

    def system_prompt(self, tools: Sequence[ToolSpec]) -> str:
        """The fallback tool prompt: tells a model whose template has no tool support which
        tools exist and how to call them in this format."""
        ...
