"""Hermes / Qwen tool calls: ``<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>``.

Several calls follow one another, one tag pair each. Qwen 2.5 and 3, Hermes 2 Pro and 3 and
many fine-tunes write calls this way; their templates render tools, calls and results natively.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from ..protocol import Grammar, ToolCall, ToolSpec
from .grammar import MAX_CALLS, calls_grammar
from .prompt import render_result, tool_prompt
from .reader import CallReader, Step

OPEN = "<tool_call>"
CLOSE = "</tool_call>"


class HermesParser(CallReader):
    """Reads ``<tool_call>`` JSON ``</tool_call>`` blocks; whitespace inside the tags is free."""

    def __init__(self) -> None:
        super().__init__((OPEN,))

    def _call(self, trigger: str) -> Step[None]:
        yield from self._expect(OPEN)
        yield from self._skip_whitespace()
        yield from self._envelope(("arguments",))
        yield from self._skip_whitespace()
        yield from self._expect(CLOSE)


class HermesFormat:
    """The Hermes format; ``padding`` is what sits inside the tags around the JSON."""

    def __init__(self, name: str = "hermes", *, padding: str = "\n", separator: str = "\n") -> None:
        self.name = name
        self.triggers: tuple[str, ...] = (OPEN,)
        self._padding = padding
        self._separator = separator

    def parser(self) -> HermesParser:
        return HermesParser()

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
        )

    def render_calls(self, calls: Sequence[ToolCall]) -> str:
        return self._separator.join(
            f'{OPEN}{self._padding}{{"name": {json.dumps(call.name)}, "arguments": '
            f"{call.arguments}}}{self._padding}{CLOSE}"
            for call in calls
        )

    def render_result(self, name: str | None, call_id: str | None, content: str) -> str:
        return render_result(name, content)

    def system_prompt(self, tools: Sequence[ToolSpec]) -> str:
        return tool_prompt(tools, self.render_calls)
