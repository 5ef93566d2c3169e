"""Llama 3.1 / 3.2 / 3.3 JSON tool calls: ``{"name": ..., "parameters": {...}}``.

The templates render an assistant's call as bare JSON, and that is what the models write for
custom tools, sometimes after ``<|python_tag|>`` (the built-in tools' marker, which the parser
skips). Several calls are separated by ``;``. The trigger is the opening ``{"name"`` itself, so
a reply that merely begins a JSON object with a ``name`` key is read as a call: the format's
inherent ambiguity, shared with every Llama 3 tool parser. The call grammar writes the bare
JSON the templates render, so it needs no special token (llguidance would accept
``<|python_tag|>`` in a rule, but only against a vocabulary that has it). A freeform
(custom) tool's call names the tool alone and its raw input follows on the next line, to the
end of the turn: ``{"name": "apply_patch"}\n*** Begin Patch...``.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Sequence

from ..protocol import Grammar, ToolCall, ToolSpec
from .grammar import MAX_CALLS, FreeformCall, calls_grammar
from .prompt import render_result, tool_prompt
from .reader import CallReader, Step

PYTHON_TAG = "<|python_tag|>"
TRIGGER = '{"name"'
SEPARATOR = "; "


class Llama3Parser(CallReader):
    def __init__(self, freeform: Collection[str] = ()) -> None:
        super().__init__((PYTHON_TAG, TRIGGER), freeform)

    def _call(self, trigger: str) -> Step[None]:
        yield from self._one()
        while (yield from self._optional(SEPARATOR.strip())):
            yield from self._skip_whitespace()
            yield from self._one()

    def _one(self) -> Step[None]:
        if (yield from self._at(PYTHON_TAG)):
            yield from self._expect(PYTHON_TAG)
            yield from self._skip_whitespace()
        if (yield from self._envelope(("parameters", "arguments"), freeform=True)):
            yield from self._newline()
            yield from self._freeform_input("")


class Llama3Format:
    name = "llama3"
    triggers: tuple[str, ...] = (TRIGGER,)

    def parser(self, freeform: Collection[str] = ()) -> Llama3Parser:
        return Llama3Parser(freeform)

    def call_grammar(
        self, tools: Sequence[ToolSpec], *, include_trigger: bool, max_calls: int = MAX_CALLS
    ) -> Grammar:
        return calls_grammar(
            tools,
            before=lambda name: f'{{"name": {json.dumps(name)}, "parameters": ',
            after="}",
            separator=SEPARATOR,
            trigger="" if include_trigger else TRIGGER,
            max_calls=max_calls,
            freeform=FreeformCall(_freeform_opening, separator=SEPARATOR),
        )

    def render_calls(self, calls: Sequence[ToolCall]) -> str:
        return SEPARATOR.join(
            _freeform_opening(call.name) + call.arguments
            if call.freeform
            else f'{{"name": {json.dumps(call.name)}, "parameters": {call.arguments}}}'
            for call in calls
        )

    def render_result(self, name: str | None, call_id: str | None, content: str) -> str:
        return render_result(name, content)

    def system_prompt(self, tools: Sequence[ToolSpec]) -> str:
        return tool_prompt(tools, self.render_calls)


def _freeform_opening(name: str) -> str:
    return f'{{"name": {json.dumps(name)}}}\n'
