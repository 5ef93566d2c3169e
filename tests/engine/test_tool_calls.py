"""Tool-call formats: streaming parsers, the registry and detection, and call grammars checked
against SmolLM2's real vocabulary."""

from __future__ import annotations

import json
from collections.abc import Sequence

import jsonschema
import pytest
from llguidance import LLMatcher, LLTokenizer

from exloop.engine.protocol import Grammar, ToolCall, ToolSpec
from exloop.engine.tool_calls import FORMATS, detect_format, get_format
from exloop.engine.tool_calls.base import (
    ArgumentsDelta,
    CallEnd,
    CallStart,
    ParseEvent,
    TextChunk,
    ToolCallFormat,
    ToolCallParseError,
)
from exloop.engine.tool_calls.grammar import MAX_CALLS

WEATHER_SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "days": {"type": "integer", "minimum": 1}},
    "required": ["city", "days"],
    "additionalProperties": False,
}
TOOLS = (
    ToolSpec("get_weather", "Weather forecast.", WEATHER_SCHEMA, strict=True),
    ToolSpec("search", "Web search.", {"type": "object", "properties": {"q": {"type": "string"}}}),
)
WEATHER = ToolCall("c1", "get_weather", '{"city": "Paris \\"Ville\\" {x}", "days": 2}')
SEARCH = ToolCall("c2", "search", '{"q": "a; b", "filters": {"site": ["x.org"]}}')

#: Each format's syntax written by hand (not by render_calls), two calls with text around.
HAND_WRITTEN = {
    "hermes": (
        'Let me look.\n<tool_call>\n{"name": "get_weather", "arguments": '
        '{"city": "Paris \\"Ville\\" {x}", "days": 2}}\n</tool_call>\n<tool_call>\n'
        '{"name": "search", "arguments": {"q": "a; b", "filters": {"site": ["x.org"]}}}\n'
        "</tool_call> Done."
    ),
    "exloop": (
        'Let me look.<tool_call>{"name": "get_weather", "arguments": {"city": '
        '"Paris \\"Ville\\" {x}", "days": 2}}</tool_call><tool_call> {"name":"search",'
        '"arguments":{"q": "a; b", "filters": {"site": ["x.org"]}}} </tool_call> Done.'
    ),
    "llama3": (
        'Let me look. {"name": "get_weather", "parameters": {"city": "Paris \\"Ville\\" {x}", '
        '"days": 2}}; <|python_tag|>{"name": "search", "parameters": {"q": "a; b", '
        '"filters": {"site": ["x.org"]}}} Done.'
    ),
    "mistral": (
        'Let me look.[TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": '
        '"Paris \\"Ville\\" {x}", "days": 2}, "id": "abc123def"}, {"name": "search", '
        '"arguments": {"q": "a; b", "filters": {"site": ["x.org"]}}}] Done.'
    ),
    "mistral-args": (
        'Let me look.[TOOL_CALLS]get_weather[ARGS]{"city": "Paris \\"Ville\\" {x}", "days": 2}'
        '[TOOL_CALLS]search[ARGS]{"q": "a; b", "filters": {"site": ["x.org"]}} Done.'
    ),
}


def parse(fmt: ToolCallFormat, chunks: Sequence[str]) -> list[ParseEvent]:
    parser = fmt.parser()
    events = [event for chunk in chunks for event in parser.feed(chunk)]
    return merged(events + parser.finish())


def merged(events: list[ParseEvent]) -> list[ParseEvent]:
    """Adjacent text chunks and argument deltas joined, so chunkings can be compared."""
    out: list[ParseEvent] = []
    for event in events:
        last = out[-1] if out else None
        if isinstance(event, TextChunk) and isinstance(last, TextChunk):
            out[-1] = TextChunk(last.text + event.text)
        elif (
            isinstance(event, ArgumentsDelta)
            and isinstance(last, ArgumentsDelta)
            and last.index == event.index
        ):
            out[-1] = ArgumentsDelta(event.index, last.delta + event.delta)
        else:
            out.append(event)
    return out


def calls(events: list[ParseEvent]) -> list[tuple[str, object]]:
    return [(e.name, json.loads(e.arguments)) for e in events if isinstance(e, CallEnd)]


@pytest.mark.parametrize("name", sorted(HAND_WRITTEN))
def test_two_calls_with_text_around(name: str) -> None:
    events = parse(get_format(name), [HAND_WRITTEN[name]])
    assert isinstance(events[0], TextChunk) and events[0].text.strip() == "Let me look."
    assert isinstance(events[-1], TextChunk) and events[-1].text.strip() == "Done."
    assert calls(events) == [
        ("get_weather", json.loads(WEATHER.arguments)),
        ("search", json.loads(SEARCH.arguments)),
    ]
    starts = [e for e in events if isinstance(e, CallStart)]
    assert [(s.index, s.name) for s in starts] == [(0, "get_weather"), (1, "search")]
    # CallStart comes before the call's deltas, which concatenate to its arguments.
    for end in (e for e in events if isinstance(e, CallEnd)):
        position = events.index(end)
        deltas = [
            e for e in events[:position] if isinstance(e, ArgumentsDelta) and e.index == end.index
        ]
        assert "".join(d.delta for d in deltas) == end.arguments
        assert events.index(starts[end.index]) < events.index(deltas[0])


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_rendered_calls_parse_back(name: str) -> None:
    fmt = get_format(name)
    for batch in ([WEATHER], [WEATHER, SEARCH]):
        events = parse(fmt, [fmt.render_calls(batch)])
        assert [(e.name, e.arguments) for e in events if isinstance(e, CallEnd)] == [
            (c.name, c.arguments) for c in batch
        ]
        assert not [e for e in events if isinstance(e, TextChunk) and e.text.strip()]


@pytest.mark.parametrize("name", sorted(HAND_WRITTEN))
def test_every_chunking_gives_the_same_events(name: str) -> None:
    fmt = get_format(name)
    text = HAND_WRITTEN[name]
    whole = parse(fmt, [text])
    assert parse(fmt, list(text)) == whole
    for split in range(1, len(text)):
        assert parse(fmt, [text[:split], text[split:]]) == whole, split


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_partial_trigger_is_held_back_until_resolved(name: str) -> None:
    fmt = get_format(name)
    trigger = fmt.triggers[0]
    parser = fmt.parser()
    assert parser.feed("Hello " + trigger[:-1]) == [TextChunk("Hello ")]
    # Not a trigger after all: the held-back text comes out as text.
    assert merged(parser.feed("?")) == [TextChunk(trigger[:-1] + "?")]
    assert parser.finish() == []
    held = fmt.parser()
    assert held.feed(trigger[:3]) == []
    assert held.finish() == [TextChunk(trigger[:3])]


def test_plain_text_streams_without_delay() -> None:
    parser = get_format("hermes").parser()
    assert parser.feed("a < b and {x}") == [TextChunk("a < b and {x}")]
    assert parser.finish() == []


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("hermes", '<tool_call>\n{"name": "search", "arguments": {"q": "x"}}'),
        ("hermes", '<tool_call>{"name": "search", "arguments": {"q": "x"'),
        ("hermes", '<tool_call>{"arguments": {}, "name": "search"}</tool_call>'),
        ("hermes", '<tool_call>{"name": 3, "arguments": {}}</tool_call>'),
        ("hermes", '<tool_call>{"name": "s", "arguments": "{}"}</tool_call>'),
        ("hermes", '<tool_call>{"name": "s", "arguments": {"q": tru}}</tool_call>'),
        ("hermes", '<tool_call>{"name": "s"}</tool_call>'),
        ("exloop", "<tool_call>not json</tool_call>"),
        ("llama3", '{"name": "search", "parameters": {"q": 1}'),
        ("llama3", '{"name": "search", "parameters": {"q": 1}}; {"name"'),
        ("mistral", '[TOOL_CALLS][{"name": "search", "arguments": {}}'),
        ("mistral", '[TOOL_CALLS]{"name": "search"}'),
        ("mistral-args", "[TOOL_CALLS]search{}"),
        ("mistral-args", "[TOOL_CALLS]search[ARGS]"),
    ],
)
def test_malformed_or_unterminated_call_raises_at_finish(name: str, text: str) -> None:
    fmt = get_format(name)
    for chunks in ([text], list(text)):
        parser = fmt.parser()
        for chunk in chunks:
            parser.feed(chunk)
        with pytest.raises(ToolCallParseError):
            parser.finish()


def test_events_stop_after_a_malformed_call() -> None:
    parser = get_format("hermes").parser()
    parser.feed("<tool_call>[1]</tool_call>")
    assert parser.feed(" more text") == []
    with pytest.raises(ToolCallParseError, match="expected '{'"):
        parser.finish()


QWEN_TEMPLATE_SNIPPET = '{{- \'<tool_call>\\n{"name": "\' }}{% for tool in tools %}'
LLAMA_TEMPLATE_SNIPPET = "{%- if message.role == 'ipython' %}<|start_header_id|>ipython"


@pytest.mark.parametrize(
    ("template", "special", "expected"),
    [
        (QWEN_TEMPLATE_SNIPPET, (), "hermes"),
        (LLAMA_TEMPLATE_SNIPPET, (), "llama3"),
        ("{{ bos_token }}{{ '<|python_tag|>' }}", (), "llama3"),
        ("{{ '[TOOL_CALLS][' + calls|tojson + ']' }}", (), "mistral"),
        ("{{ '[TOOL_CALLS]' + name + '[ARGS]' + args }}", (), "mistral-args"),
        ("", ("<|python_tag|>", "<|eot_id|>"), "llama3"),
        ("", ("[TOOL_CALLS]", "[INST]"), "mistral"),
        ("", ("[TOOL_CALLS]", "[ARGS]"), "mistral-args"),
        ("", ("<tool_call>",), "hermes"),
        ("{% for m in messages %}{{ m.content }}{% endfor %}", ("<|im_start|>",), "exloop"),
        ("", (), "exloop"),
    ],
)
def test_detect_format(template: str, special: tuple[str, ...], expected: str) -> None:
    assert detect_format(template, special) == expected


def test_unknown_format_names_the_known_ones() -> None:
    with pytest.raises(ValueError, match="hermes, llama3, mistral, mistral-args"):
        get_format("toolformer")
    assert all(get_format(name).name == name for name in FORMATS)


# -- grammars -------------------------------------------------------------------------------


def matcher(grammar: Grammar, tokenizer: LLTokenizer) -> LLMatcher:
    assert grammar.kind == "lark" and isinstance(grammar.value, str)
    compiled = LLMatcher.grammar_from_lark(grammar.value)
    assert not LLMatcher.validate_grammar(compiled, tokenizer)
    return LLMatcher(tokenizer, compiled, log_level=0)


def accepts(grammar: Grammar, tokenizer: LLTokenizer, text: str) -> bool:
    """Whether the grammar takes ``text`` token by token and may end right after it."""
    m = matcher(grammar, tokenizer)
    return all(m.consume_token(t) for t in tokenizer.tokenize_str(text)) and m.is_accepting()


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_grammar_accepts_valid_calls_whose_arguments_match_the_schema(
    name: str, lltokenizer: LLTokenizer
) -> None:
    fmt = get_format(name)
    weather = ToolCall("c1", "get_weather", '{"city": "Oslo", "days": 3}')
    search = ToolCall("c2", "search", '{"q": "x", "any": [1, {"k": null}]}')
    trigger = fmt.triggers[0]
    for batch in ([weather], [search, weather]):
        text = fmt.render_calls(batch)
        assert text.startswith(trigger)
        assert accepts(fmt.call_grammar(TOOLS, include_trigger=True), lltokenizer, text)
        rest = text.removeprefix(trigger)
        assert accepts(fmt.call_grammar(TOOLS, include_trigger=False), lltokenizer, rest)
        ends = [e for e in parse(fmt, [text]) if isinstance(e, CallEnd)]
        assert [e.name for e in ends] == [c.name for c in batch]
        for end in ends:
            if end.name == "get_weather":
                jsonschema.validate(json.loads(end.arguments), WEATHER_SCHEMA)


@pytest.mark.parametrize("name", sorted(FORMATS))
@pytest.mark.parametrize(
    "call",
    [
        ToolCall("c", "get_weather", '{"city": "Oslo"}'),  # a required property missing
        ToolCall("c", "get_weather", '{"city": "Oslo", "days": 0}'),  # below the minimum
        ToolCall("c", "get_weather", '{"city": "Oslo", "days": 3, "x": 1}'),  # not allowed
        ToolCall("c", "search", "[1]"),  # not an object
        ToolCall("c", "delete_everything", "{}"),  # no such tool
        ToolCall("c", "search", '{"q":  "x"}'),  # free whitespace
    ],
)
def test_grammar_rejects_invalid_calls(name: str, call: ToolCall, lltokenizer: LLTokenizer) -> None:
    fmt = get_format(name)
    assert not accepts(
        fmt.call_grammar(TOOLS, include_trigger=True), lltokenizer, fmt.render_calls([call])
    )


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_grammar_rejects_text_instead_of_a_call(name: str, lltokenizer: LLTokenizer) -> None:
    fmt = get_format(name)
    assert not accepts(fmt.call_grammar(TOOLS, include_trigger=True), lltokenizer, "Sure! ")
    assert not accepts(fmt.call_grammar(TOOLS, include_trigger=True), lltokenizer, "")


def test_grammar_needs_a_tool() -> None:
    with pytest.raises(ValueError, match="at least one tool"):
        get_format("hermes").call_grammar((), include_trigger=True)


def test_fallback_system_prompt_lists_tools_and_teaches_by_example() -> None:
    prompt = get_format("exloop").system_prompt(TOOLS)
    assert "- get_weather: Weather forecast." in prompt
    assert json.dumps(WEATHER_SCHEMA) in prompt
    example = next(line for line in prompt.splitlines() if line.startswith("<tool_call>"))
    assert calls(parse(get_format("exloop"), [example])) == [
        ("get_weather", {"city": "...", "days": 1})
    ]


def test_mistral_list_grammar_takes_either_spacing_after_the_token(
    lltokenizer: LLTokenizer,
) -> None:
    grammar = get_format("mistral").call_grammar(TOOLS, include_trigger=True)
    for head in ("[TOOL_CALLS][", "[TOOL_CALLS] ["):
        assert accepts(grammar, lltokenizer, head + '{"name": "search", "arguments": {}}]')
    assert not accepts(grammar, lltokenizer, '[TOOL_CALLS]  [{"name": "search", "arguments": {}}]')


def test_grammar_bounds_the_number_of_calls(lltokenizer: LLTokenizer) -> None:
    fmt = get_format("exloop")
    grammar = fmt.call_grammar(TOOLS, include_trigger=True)
    call = ToolCall("c", "search", "{}")
    assert accepts(grammar, lltokenizer, fmt.render_calls([call] * MAX_CALLS))
    assert not accepts(grammar, lltokenizer, fmt.render_calls([call] * (MAX_CALLS + 1)))


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_grammar_takes_a_smaller_bound(name: str, lltokenizer: LLTokenizer) -> None:
    """``max_calls=1`` (a named tool_choice) allows exactly one call."""
    fmt = get_format(name)
    grammar = fmt.call_grammar(TOOLS, include_trigger=True, max_calls=1)
    call = ToolCall("c", "search", "{}")
    assert accepts(grammar, lltokenizer, fmt.render_calls([call]))
    assert not accepts(grammar, lltokenizer, fmt.render_calls([call, call]))
    with pytest.raises(ValueError, match="at least one call"):
        fmt.call_grammar(TOOLS, include_trigger=True, max_calls=0)
