"""Every request limit: a 400 naming the field, for both APIs, with no model involved; the
flags that set them; the README table that documents them."""

from __future__ import annotations

import json
import re
from dataclasses import fields
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from exloop.server.chat_request import parse_chat_request
from exloop.server.cli import ServeSettings, build_parser
from exloop.server.decode import json_depth
from exloop.server.errors import ApiError
from exloop.server.limits import Limits, flag_name
from exloop.server.responses_request import parse_responses_request
from exloop.server.schema_bounds import admits_finite_value

LIMITS = Limits()
README = Path(__file__).parents[2] / "README.md"


def refused(body: dict[str, Any], *, chat: bool = False, limits: Limits = LIMITS) -> ApiError:
    """The 400 either API answers ``body`` with (a chat body gets ``messages``)."""
    with pytest.raises(ApiError) as info:
        if chat:
            parse_chat_request(json.dumps({"model": "m", **body}).encode(), limits=limits)
        else:
            parse_responses_request(json.dumps(body).encode(), served_model="m", limits=limits)
    assert info.value.status == 400
    return info.value


def both(fields: dict[str, Any]) -> list[ApiError]:
    return [
        refused({"input": "hi", **fields}),
        refused({"messages": [{"role": "user", "content": "hi"}], **fields}, chat=True),
    ]


def schema_format(schema: Any) -> dict[str, Any]:
    return {"text": {"format": {"type": "json_schema", "name": "f", "schema": schema}}}


def nested(levels: int) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(levels):
        schema = {"type": "object", "properties": {"x": schema}}
    return schema


# -- the body ------------------------------------------------------------------------------


def test_json_depth_ignores_brackets_in_strings() -> None:
    assert json_depth(b'{"a": "[[[[{{{{\\"[[", "b": [[1]]}', stop_above=0) == 3
    assert json_depth(b"[" * 1000 + b"]" * 1000, stop_above=256) > 256


def test_a_body_nested_past_the_limit_is_refused_before_decoding() -> None:
    deep = b'{"input": "hi", "metadata": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    for parse in (partial(parse_responses_request, served_model="m"), parse_chat_request):
        with pytest.raises(ApiError) as info:
            parse(deep, limits=LIMITS)
        assert info.value.status == 400 and info.value.code == "invalid_json"
        assert "256" in info.value.message


# -- schemas -------------------------------------------------------------------------------


def test_schemas_nested_past_the_limit_name_their_field() -> None:
    error = refused({"input": "hi", **schema_format(nested(100))})
    assert error.param == "text.format.schema" and error.code == "schema_too_deep"
    tool = {"type": "function", "name": "f", "parameters": nested(100)}
    assert refused({"input": "hi", "tools": [tool]}).param == "tools[0].parameters"
    chat_format = {"type": "json_schema", "json_schema": {"name": "f", "schema": nested(100)}}
    error = refused(
        {"messages": [{"role": "user", "content": "hi"}], "response_format": chat_format},
        chat=True,
    )
    assert error.param == "response_format.schema"


def test_schema_size_counts_every_schema_of_the_request() -> None:
    properties = {f"p{i}": {"type": "string"} for i in range(10_000)}
    big = {"type": "object", "properties": properties, "required": list(properties)}
    error = refused({"input": "hi", **schema_format(big)})
    assert error.param == "text.format.schema" and error.code == "schema_too_large"
    half = {"type": "object", "properties": dict(list(properties.items())[:4000])}
    tools = [{"type": "function", "name": f"t{i}", "parameters": half} for i in range(3)]
    assert refused({"input": "hi", "tools": tools}).param == "tools[2].parameters"


def test_enums_and_pattern_repetitions_are_bounded() -> None:
    enum = {"type": "string", "enum": [str(i) for i in range(1001)]}
    assert refused({"input": "hi", **schema_format(enum)}).code == "enum_too_large"
    for pattern in ("^.{4294967295}$", "^a{2,1001}$", "^a{" + "9" * 5000 + "}$"):
        error = refused({"input": "hi", **schema_format({"type": "string", "pattern": pattern})})
        assert error.code == "pattern_too_large", pattern
    properties = {"patternProperties": {"^x{5000}$": {"type": "string"}}, "type": "object"}
    assert refused({"input": "hi", **schema_format(properties)}).code == "pattern_too_large"
    errors = both({"grammar": {"type": "regex", "value": "[0-9]{100000}"}})
    assert all(e.param == "grammar" and e.code == "pattern_too_large" for e in errors)


def test_a_pattern_pythons_re_cannot_read_is_a_400() -> None:
    pattern = "(" * 2000 + "a" + ")" * 2000
    error = refused({"input": "hi", **schema_format({"type": "string", "pattern": pattern})})
    assert error.param == "text.format.schema"


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "object", "properties": {"a": {"$ref": "#"}}, "required": ["a"]},
        {"$ref": "#"},
        {
            "$defs": {
                "n": {
                    "type": "object",
                    "properties": {"next": {"$ref": "#/$defs/n"}},
                    "required": ["next"],
                }
            },
            "$ref": "#/$defs/n",
        },
        {"type": "array", "items": {"$ref": "#"}, "minItems": 1},
    ],
)
def test_schemas_with_no_finite_value_are_refused(schema: dict[str, Any]) -> None:
    assert not admits_finite_value(schema)
    error = refused({"input": "hi", **schema_format(schema)})
    assert error.param == "text.format.schema" and "no finite value" in error.message
    chat_format = {"type": "json_schema", "json_schema": {"name": "f", "schema": schema}}
    body = {"messages": [{"role": "user", "content": "hi"}], "response_format": chat_format}
    assert refused(body, chat=True).param == "response_format.schema"


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "object", "properties": {"a": {"$ref": "#"}}},
        {"type": ["object", "null"], "properties": {"a": {"$ref": "#"}}, "required": ["a"]},
        {
            "type": "object",
            "properties": {"kids": {"type": "array", "items": {"$ref": "#"}}},
            "required": ["kids"],
        },
        {
            "$defs": {
                "n": {
                    "type": "object",
                    "properties": {"next": {"anyOf": [{"$ref": "#/$defs/n"}, {"type": "null"}]}},
                    "required": ["next"],
                }
            },
            "$ref": "#/$defs/n",
        },
    ],
)
def test_recursive_schemas_with_finite_values_pass(schema: dict[str, Any]) -> None:
    assert admits_finite_value(schema)


def test_a_grammar_given_as_json_text_is_bounded_too() -> None:
    deep = "[" * 200 + "]" * 200
    errors = both({"grammar": {"type": "llguidance", "value": deep}})
    assert all(e.param == "grammar" for e in errors)
    schema = json.dumps(nested(100))
    errors = both({"grammar": {"type": "json_schema", "value": schema}})
    assert all(e.param == "grammar" and e.code == "schema_too_deep" for e in errors)


# -- counts and sizes ----------------------------------------------------------------------


def test_tools_are_counted() -> None:
    tools = [{"type": "function", "name": f"t{i}"} for i in range(129)]
    errors = both({"tools": tools})
    assert all(e.param == "tools" and e.code == "too_many_tools" for e in errors)


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"stop": [f"s{i}" for i in range(17)]}, "stop"),
        ({"stop": "x" * 257}, "stop"),
        ({"dry_sequence_breakers": [str(i) for i in range(1000)]}, "dry_sequence_breakers"),
        ({"dry_sequence_breakers": ["x" * 41]}, "dry_sequence_breakers"),
        ({"logit_bias": {str(i): 1.0 for i in range(1025)}}, "logit_bias"),
        ({"logit_bias": {"1_000": 1.0}}, "logit_bias"),
        ({"logit_bias": {" 1": 1.0}}, "logit_bias"),
        ({"logit_bias": {"+1": 1.0}}, "logit_bias"),
        ({"logit_bias": {"-1": 1.0}}, "logit_bias"),
        ({"top_k": 2**64}, "top_k"),
        ({"top_k": 2**31}, "top_k"),
        ({"dry_allowed_length": 2**64}, "dry_allowed_length"),
    ],
)
def test_sampling_sizes_are_bounded(fields: dict[str, Any], param: str) -> None:
    for error in both(fields):
        assert error.param == param, error.message


def test_limits_are_settable() -> None:
    small = Limits(max_tools=1, max_stop_sequences=1)
    tools = [{"type": "function", "name": "a"}, {"type": "function", "name": "b"}]
    assert refused({"input": "hi", "tools": tools}, limits=small).param == "tools"
    assert refused({"input": "hi", "stop": ["a", "b"]}, limits=small).param == "stop"


# -- flags and documentation ---------------------------------------------------------------


def test_every_limit_is_a_flag_with_an_environment_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for limit in fields(Limits):
        monkeypatch.delenv(f"EXLOOP_{limit.name.upper()}", raising=False)
    parser = build_parser()
    defaults = ServeSettings.from_args(parser.parse_args(["serve"])).limits
    assert defaults == Limits()
    set_by_flags = ServeSettings.from_args(
        parser.parse_args(["serve", "--max-tools", "3", "--grammar-timeout", "0.5"])
    ).limits
    assert set_by_flags.max_tools == 3 and set_by_flags.grammar_timeout == 0.5
    monkeypatch.setenv("EXLOOP_MAX_BODY_BYTES", "1024")
    from_env = ServeSettings.from_args(build_parser().parse_args(["serve"])).limits
    assert from_env.max_body_bytes == 1024
    with pytest.raises(SystemExit):
        parser.parse_args(["serve", "--max-tools", "0"])


def test_the_readme_documents_every_limit_and_its_default() -> None:
    table = README.read_text().split("## Limits", 1)[1]
    for limit in fields(Limits):
        row = re.search(rf"^\| `{flag_name(limit.name)}[^|]*\|([^|]*)\|", table, re.MULTILINE)
        assert row is not None, f"{flag_name(limit.name)} is missing from the README"
        default = limit.default
        shown = row[1].strip().strip("`").replace(",", "")
        if isinstance(default, float):
            assert float(shown.removesuffix(" s")) == default
        elif shown.endswith("MiB"):
            assert int(shown.removesuffix(" MiB")) << 20 == default
        else:
            assert int(shown) == default
