"""Mistral tool calls, after the ``[TOOL_CALLS]`` token, in either of two shapes.

Older tokenizers (Mistral 7B v0.3, Mixtral, NeMo, Small 3.0) write one JSON list:
``[TOOL_CALLS][{"name": ..., "arguments": {...}}, ...]``. Newer ones (Small 3.1+, Devstral,
Magistral) write ``[TOOL_CALLS]name[ARGS]{...}``, repeating the whole for each call; their
templates say ``[ARGS]``. The parser reads both; the registry has one format per shape, as the
grammar and the rendering must pick one. ``[TOOL_CALLS]`` is a special token in these
vocabularies, but the grammar spells it as text: llguidance names special tokens by the
tokenizer's own spelling, which differs between GGUF and Hugging Face vocabularies, and the
parser sees the same text either way. A freeform (custom) tool's call is written in the
``name[ARGS]`` shape by both formats, its raw input after ``[ARGS]``, and comes last:
``[TOOL_CALLS]apply_patch[ARGS]*** Begin Patch...``.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Sequence

from ..protocol import Grammar, ToolCall, ToolSpec
from .grammar import MAX_CALLS, FreeformCall, calls_grammar
from .prompt import render_result, tool_prompt
from .reader import CallReader, Step

TRIGGER = "[TOOL_CALLS]"
ARGS = "[ARGS]"
# Characters of a function name in the ``name[ARGS]`` shape (OpenAI's rule for names, plus '.').
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.")


class MistralParser(CallReader):
    def __init__(self, freeform: Collection[str] = ()) -> None:
        super().__init__((TRIGGER,), freeform)

    def _call(self, trigger: str) -> Step[None]:
        yield from self._expect(TRIGGER)
        yield from self._skip_whitespace()
        if (yield from self._char()) == "[":
            yield from self._list()
        else:
            yield from self._named()

    def _list(self) -> Step[None]:
        yield from self._expect("[")
        while True:
            yield from self._skip_whitespace()
            yield from self._envelope(("arguments",))
            if not (yield from self._optional(",")):
                break
        yield from self._skip_whitespace()
        yield from self._expect("]")

    def _named(self) -> Step[None]:
        name = ""
        while (c := (yield from self._char())) and c in _NAME_CHARS:
            name += c
            self._pos += 1
        if not name:
            raise self._fail("a tool name")
        yield from self._expect(ARGS)
        self._start(name)
        if name in self._freeform:
            yield from self._freeform_input("")
            return
        self._end((yield from self._object(stream=True)))


class MistralFormat:
    """``args_tag`` picks the ``name[ARGS]{...}`` shape over the JSON list."""

    def __init__(self, *, args_tag: bool) -> None:
        self.name = "mistral-args" if args_tag else "mistral"
        self.triggers: tuple[str, ...] = (TRIGGER,)
        self._args_tag = args_tag

    def parser(self, freeform: Collection[str] = ()) -> MistralParser:
        return MistralParser(freeform)

    def call_grammar(
        self, tools: Sequence[ToolSpec], *, include_trigger: bool, max_calls: int = MAX_CALLS
    ) -> Grammar:
        trigger = "" if include_trigger else TRIGGER
        freeform = FreeformCall(_named)
        if self._args_tag:
            return calls_grammar(
                tools,
                before=_named,
                after="",
                separator="",
                trigger=trigger,
                max_calls=max_calls,
                freeform=freeform,
            )
        return calls_grammar(
            tools,
            before=lambda name: f'{{"name": {json.dumps(name)}, "arguments": ',
            after="}",
            separator=", ",
            # Templates differ on a space between the token and the list.
            head=TRIGGER,
            head_rule='" "? "["',
            tail="]",
            trigger=trigger,
            max_calls=max_calls,
            freeform=freeform,
        )

    def render_calls(self, calls: Sequence[ToolCall]) -> str:
        freeform = "".join(_named(call.name) + call.arguments for call in calls if call.freeform)
        functions = [call for call in calls if not call.freeform]
        if self._args_tag:
            return "".join(_named(call.name) + call.arguments for call in functions) + freeform
        listed = ", ".join(
            f'{{"name": {json.dumps(call.name)}, "arguments": {call.arguments}}}'
            for call in functions
        )
        return (f"{TRIGGER}[{listed}]" if functions else "") + freeform

    def render_result(self, name: str | None, call_id: str | None, content: str) -> str:
        return render_result(name, content)

    def system_prompt(self, tools: Sequence[ToolSpec]) -> str:
        return tool_prompt(tools, self.render_calls)


def _named(name: str) -> str:
    """The opening of a call in the ``name[ARGS]`` shape."""
    return f"{TRIGGER}{name}{ARGS}"
