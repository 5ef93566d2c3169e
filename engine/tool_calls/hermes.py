"""Hermes / Qwen tool calls: ``<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>``.

Several calls follow one another, one tag pair each. Qwen 2.5 and 3, Hermes 2 Pro and 3 and
many fine-tunes write calls this way; their templates render tools, calls and results natively.
A freeform (custom) tool's call names the tool alone and its raw input follows on the next
line: ``<tool_call>\n{"name": "apply_patch"}\n*** Begin Patch...\n</tool_call>``.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Sequence

from ..protocol import Grammar, ToolCall, ToolSpec
from .grammar import MAX_CALLS, FreeformCall, calls_grammar
from .prompt import render_result, tool_prompt
from .reader import CallReader, Step

OPEN = "<tool_call>"
CLOSE = "</tool_call>"


class HermesParser(CallReader):
    """Reads ``<tool_call>`` JSON ``</tool_call>`` blocks; whitespace inside the tags is free.
    ``padding`` is what the format writes before ``</tool_call>`` (not part of a raw input)."""

    def __init__(self, padding: str = "\n", freeform: Collection[str] = ()) -> None:
        super().__init__((OPEN,), freeform)
        self._close = padding + CLOSE

    def _call(self, trigger: str) -> Step[None]:
        yield from self._expect(OPEN)
        yield from self._skip_whitespace()
        if (yield from self._envelope(("arguments",), freeform=True)):
            yield from self._newline()
            yield from self._freeform_input(self._close)
            return
        yield from self._skip_whitespace()
        yield from self._expect(CLOSE)


class HermesFormat:
    """The Hermes format; ``padding`` is what sits inside the tags around the JSON."""

    def __init__(self, name: str = "hermes", *, padding: str = "\n", separator: str = "\n") -> None:
        self.name = name
        self.triggers: tuple[str, ...] = (OPEN,)
        self._padding = padding
        self._separator = separator

    def parser(self, freeform: Collection[str] = ()) -> HermesParser:
        return HermesParser(self._padding, freeform)

    def call_grammar(
        self, tools: Sequence[ToolSpec], *, include_trigger: bool, max_calls: int = MAX_CALLS
    ) -> Grammar:
        return calls_grammar(
            tools,
            before=lambda name: f'{OPEN}{self._padding}{{"name": {json.dumps(name)}, "arguments": ',
            after=f"}}{self._padding}{CLOSE}",
            separator=self._separator,
            trigger="" if include_trigger else OPEN,
            max_calls=max_calls,
            freeform=FreeformCall(self._freeform_opening, self._padding + CLOSE, self._separator),
        )

    def _freeform_opening(self, name: str) -> str:
        return f'{OPEN}{self._padding}{{"name": {json.dumps(name)}}}\n'

    def render_calls(self, calls: Sequence[ToolCall]) -> str:
        return self._separator.join(
            f"{self._freeform_opening(call.name)}{call.arguments}{self._padding}{CLOSE}"
            if call.freeform
            else f'{OPEN}{self._padding}{{"name": {json.dumps(call.name)}, "arguments": '
            f"{call.arguments}}}{self._padding}{CLOSE}"
            for call in calls
        )

    def render_result(self, name: str | None, call_id: str | None, content: str) -> str:
        return render_result(name, content)

    def system_prompt(self, tools: Sequence[ToolSpec]) -> str:
        return tool_prompt(tools, self.render_calls)
