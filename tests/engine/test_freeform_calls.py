"""Freeform (custom) tool calls in every format: the raw input is parsed back exactly, streams
in any chunking, and the call grammar (the client's Lark grammar or regex as an llguidance
sub-grammar) accepts exactly the inputs that grammar accepts; schema-guided non-strict tools."""

from __future__ import annotations

import json
from collections.abc import Sequence

import pytest
from llguidance import LLMatcher, LLTokenizer

from exloop.engine.protocol import FreeformInput, Grammar, ToolCall, ToolSpec
from exloop.engine.tool_calls import FORMATS, get_format
from exloop.engine.tool_calls.base import (
    ArgumentsDelta,
    CallEnd,
    CallStart,
    ParseEvent,
    TextChunk,
    ToolCallFormat,
)

from .test_tool_calls import merged

#: A small cousin of Codex's apply_patch grammar (its own rule names, an import, a %ignore-free
#: line structure): a sub-grammar may use any of them without clashing with the call grammar.
PATCH_GRAMMAR = r"""
start: begin_patch hunk+ end_patch
begin_patch: "*** Begin Patch" LF
end_patch: "*** End Patch" LF?
hunk: add_hunk | delete_hunk
add_hunk: "*** Add File: " filename LF add_line+
delete_hunk: "*** Delete File: " filename LF
filename: /(.+)/
add_line: "+" /(.*)/ LF
%import common.LF
"""
PATCH = '*** Begin Patch\n*** Add File: a.txt\n+say "hi" </tool_call>\n*** End Patch\n'

APPLY_PATCH = ToolSpec("apply_patch", "Edit files.", freeform=FreeformInput("lark", PATCH_GRAMMAR))
CODE = ToolSpec("code", "A ticket code.", freeform=FreeformInput("regex", r"[A-Z]{3}-[0-9]{2}"))
NOTE = ToolSpec("note", "Write a note.", freeform=FreeformInput())
LOOKUP = ToolSpec(
    "crm.lookup",
    "Find a customer.",
    {
        "type": "object",
        "properties": {"cmd": {"type": "string"}},
        "required": ["cmd"],
        "additionalProperties": False,
    },
)
TOOLS = (LOOKUP, APPLY_PATCH, CODE, NOTE)
FREEFORM = frozenset({"apply_patch", "code", "note"})


def parse(fmt: ToolCallFormat, chunks: Sequence[str]) -> list[ParseEvent]:
    parser = fmt.parser(FREEFORM)
    events = [event for chunk in chunks for event in parser.feed(chunk)]
    return merged(events + parser.finish())


def ends(events: list[ParseEvent]) -> list[tuple[str, str]]:
    return [(e.name, e.arguments) for e in events if isinstance(e, CallEnd)]


@pytest.mark.parametrize("name", sorted(FORMATS))
@pytest.mark.parametrize("text", [PATCH, "", "\n", "ends with the closing\n</tool_call>"])
def test_rendered_freeform_call_parses_back_exactly(name: str, text: str) -> None:
    fmt = get_format(name)
    function = ToolCall("c1", "crm.lookup", '{"cmd": "a"}')
    custom = ToolCall("c2", "apply_patch", text, freeform=True)
    for batch in ([custom], [function, custom]):
        rendered = fmt.render_calls(batch)
        whole = parse(fmt, [rendered])
        assert ends(whole) == [(c.name, c.arguments) for c in batch]
        assert not [e for e in whole if isinstance(e, TextChunk) and e.text.strip()]
        # Any chunking gives the same events; the deltas make up the input.
        assert parse(fmt, list(rendered)) == whole
        for split in range(0, len(rendered), 7):
            assert parse(fmt, [rendered[:split], rendered[split:]]) == whole
        starts = [e for e in whole if isinstance(e, CallStart)]
        assert starts[-1].name == "apply_patch"
        deltas = [e for e in whole if isinstance(e, ArgumentsDelta) and e.index == starts[-1].index]
        assert "".join(d.delta for d in deltas) == text


def test_freeform_input_streams_while_it_is_written() -> None:
    parser = get_format("hermes").parser(FREEFORM)
    assert parser.feed('<tool_call>\n{"name": "note"}\nfirst line\n') == [
        CallStart(0, "note"),
        ArgumentsDelta(0, "first line"),
    ]
    # A tail that may be the closing is held back, then released when more input follows.
    assert parser.feed("</tool_") == []
    assert parser.feed("call> and more") == [ArgumentsDelta(0, "\n</tool_call> and more")]
    assert parser.feed("\n</tool_call>") == []
    assert parser.finish() == [CallEnd(0, "note", "first line\n</tool_call> and more")]


def test_a_function_named_like_no_freeform_tool_still_needs_arguments() -> None:
    parser = get_format("hermes").parser()
    parser.feed('<tool_call>\n{"name": "note"}\nhello\n</tool_call>')
    with pytest.raises(ValueError, match="arguments"):
        parser.finish()


# -- grammars -------------------------------------------------------------------------------


def compiled(grammar: Grammar) -> str:
    if grammar.kind == "lark":
        assert isinstance(grammar.value, str)
        return LLMatcher.grammar_from_lark(grammar.value)
    assert grammar.kind == "llguidance"
    return json.dumps(grammar.value)


def accepts(grammar: Grammar, tokenizer: LLTokenizer, text: str) -> bool:
    text_grammar = compiled(grammar)
    assert not LLMatcher.validate_grammar(text_grammar, tokenizer)
    m = LLMatcher(tokenizer, text_grammar, log_level=0)
    return all(m.consume_token(t) for t in tokenizer.tokenize_str(text)) and m.is_accepting()


@pytest.mark.parametrize("name", sorted(FORMATS))
@pytest.mark.parametrize(
    ("tool", "good", "bad"),
    [
        (APPLY_PATCH, PATCH, "*** Begin Patch\nrm -rf /\n*** End Patch\n"),
        (CODE, "ABC-12", "ABC-123"),
        (NOTE, "anything at all", None),
    ],
)
def test_call_grammar_takes_exactly_the_inputs_of_the_tools_grammar(
    name: str, tool: ToolSpec, good: str, bad: str | None, lltokenizer: LLTokenizer
) -> None:
    fmt = get_format(name)
    trigger = fmt.triggers[0]
    grammar = fmt.call_grammar(TOOLS, include_trigger=True)
    cut = fmt.call_grammar(TOOLS, include_trigger=False)
    call = ToolCall("c", tool.name, good, freeform=True)
    text = fmt.render_calls([call])
    assert accepts(grammar, lltokenizer, text)
    assert accepts(cut, lltokenizer, text.removeprefix(trigger))
    function = ToolCall("f", "crm.lookup", '{"cmd": "x"}')
    assert accepts(grammar, lltokenizer, fmt.render_calls([function, call]))
    if bad is not None:
        # A freeform call is the last of its turn (any text may follow a text input).
        after = fmt.render_calls([call]) + fmt.render_calls([function])
        assert not accepts(grammar, lltokenizer, after)
        rendered = fmt.render_calls([ToolCall("c", tool.name, bad, freeform=True)])
        assert not accepts(grammar, lltokenizer, rendered)


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_one_forced_freeform_call(name: str, lltokenizer: LLTokenizer) -> None:
    fmt = get_format(name)
    grammar = fmt.call_grammar((CODE,), include_trigger=True, max_calls=1)
    assert accepts(grammar, lltokenizer, fmt.render_calls([ToolCall("c", "code", "XYZ-00", True)]))
    assert not accepts(grammar, lltokenizer, "XYZ-00")


def test_non_strict_schemas_guide_the_arguments(lltokenizer: LLTokenizer) -> None:
    fmt = get_format("exloop")
    grammar = fmt.call_grammar((LOOKUP,), include_trigger=True)
    good = ToolCall("c", "crm.lookup", '{"cmd": "hello"}')
    wrong = ToolCall("c", "crm.lookup", '{"command": "hello", "type": "string"}')
    assert accepts(grammar, lltokenizer, fmt.render_calls([good]))
    assert not accepts(grammar, lltokenizer, fmt.render_calls([wrong]))
    # Without guidance (a schema that does not compile), any JSON object.
    loose = fmt.call_grammar(
        (ToolSpec("crm.lookup", parameters=LOOKUP.parameters, guided=False),), include_trigger=True
    )
    assert accepts(loose, lltokenizer, fmt.render_calls([wrong]))


def test_non_strict_schemas_skip_what_llguidance_cannot_enforce(lltokenizer: LLTokenizer) -> None:
    schema = {
        "type": "object",
        "properties": {"when": {"type": "string", "format": "no-such-format"}},
        "required": ["when"],
    }
    fmt = get_format("exloop")
    call = fmt.render_calls([ToolCall("c", "t", '{"when": "soon"}')])
    lenient = fmt.call_grammar((ToolSpec("t", parameters=schema),), include_trigger=True)
    assert accepts(lenient, lltokenizer, call)
    strict_tool = ToolSpec("t", parameters=schema, strict=True)
    strict = fmt.call_grammar((strict_tool,), include_trigger=True)
    assert LLMatcher.validate_grammar(compiled(strict), lltokenizer)


def test_fallback_prompt_teaches_freeform_calls() -> None:
    fmt = get_format("exloop")
    prompt = fmt.system_prompt(TOOLS)
    assert "Lark grammar:\n  start: begin_patch hunk+ end_patch" in prompt
    assert r"regular expression: [A-Z]{3}-[0-9]{2}" in prompt
    example = '<tool_call>{"name": "apply_patch"}\n...</tool_call>'
    assert example in prompt
    assert ends(parse(fmt, [example])) == [("apply_patch", "...")]
