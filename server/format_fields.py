"""Output constraints a request may set: ``text.format`` / ``response_format`` (JSON object or
JSON Schema) and the non-OpenAI ``grammar`` (regex, JSON Schema, Lark, llguidance).

At most one may be given. Each becomes an engine :class:`~exloop.engine.protocol.Grammar`
tagged with the request field it came from, so a grammar that fails to compile names that
field. JSON Schema documents are checked against the request's schema limits
(:mod:`.schema_bounds`) and their meta-schema here (as tool parameters are); whether llguidance
can compile them is the engine's check.
"""

from __future__ import annotations

import functools
import logging
import re
import warnings
from dataclasses import dataclass
from typing import Any, Literal, TypeAlias

import jsonschema
import msgspec

from exloop.engine.protocol import Grammar
from exloop.orchestrator.resource import (
    FormatJsonObject,
    FormatJsonSchema,
    FormatText,
    TextFormat,
)

from .decode import json_depth
from .errors import invalid_request
from .schema_bounds import SchemaBudget, check_pattern, check_schema_bounds

log = logging.getLogger(__name__)


class GrammarField(msgspec.Struct, frozen=True):
    """The non-OpenAI ``grammar``: llguidance constraint given as regex, JSON schema, Lark or
    llguidance's own JSON grammar."""

    type: Literal["regex", "json_schema", "lark", "llguidance"]
    value: Any


class JsonSchemaSpec(msgspec.Struct, frozen=True):
    name: str = "response"
    schema: dict[str, Any] | None = None
    description: str | None = None
    strict: bool | None = None


class ResponseFormatText(msgspec.Struct, tag="text", tag_field="type", frozen=True):
    pass


class ResponseFormatJsonObject(msgspec.Struct, tag="json_object", tag_field="type", frozen=True):
    pass


class ResponseFormatJsonSchema(msgspec.Struct, tag="json_schema", tag_field="type", frozen=True):
    """Chat's nested ``json_schema``; the flat (Responses ``text.format``) fields too."""

    json_schema: JsonSchemaSpec | None = None
    name: str | None = None
    schema: dict[str, Any] | None = None
    description: str | None = None
    strict: bool | None = None


ResponseFormatField: TypeAlias = (
    ResponseFormatText | ResponseFormatJsonObject | ResponseFormatJsonSchema
)


@dataclass(frozen=True, slots=True)
class Constraint:
    """The output constraint and the request field it came from (named in compile errors)."""

    grammar: Grammar
    param: str


def format_constraint(format: TextFormat, param: str, budget: SchemaBudget) -> Constraint | None:
    """The constraint of a ``text.format``; ``json_object`` means any JSON object."""
    match format:
        case FormatText():
            return None
        case FormatJsonObject():
            return Constraint(Grammar("json_schema", {"type": "object"}), param)
        case FormatJsonSchema(schema=schema):
            check_json_schema(schema, f"{param}.schema", f"the '{format.name}' format", budget)
            return Constraint(Grammar("json_schema", schema), param)


def response_format(field: ResponseFormatField) -> TextFormat:
    """``response_format`` as the ``text.format`` it means (and the response echoes)."""
    match field:
        case ResponseFormatText():
            return FormatText()
        case ResponseFormatJsonObject():
            return FormatJsonObject()
        case ResponseFormatJsonSchema(json_schema=JsonSchemaSpec() as spec):
            if spec.schema is None:
                raise invalid_request(
                    "response_format.json_schema.schema is required.",
                    "response_format.json_schema.schema",
                    "missing_required_parameter",
                )
            return FormatJsonSchema(spec.name, spec.schema, spec.description, spec.strict)
        case ResponseFormatJsonSchema(schema=dict() as schema):
            return FormatJsonSchema(
                field.name or "response", schema, field.description, field.strict
            )
        case ResponseFormatJsonSchema():
            raise invalid_request(
                "response_format of type json_schema needs a json_schema object with a schema.",
                "response_format.json_schema",
                "missing_required_parameter",
            )


def grammar_constraint(field: GrammarField, budget: SchemaBudget) -> Constraint:
    """The non-OpenAI ``grammar``, within the request's limits (a JSON document given as text
    is read here, so that its nesting and size are checked like any schema's)."""
    value = field.value
    if field.type in ("regex", "lark") and not isinstance(value, str):
        raise invalid_request(f"A {field.type} grammar must be a string.", "grammar")
    if field.type == "regex":
        check_pattern(value, "grammar", budget.limits)
    if field.type in ("json_schema", "llguidance"):
        if isinstance(value, str):
            value = _json_document(value, field.type, budget.limits.max_schema_depth)
        check_schema_bounds(value, "grammar", budget)
    return Constraint(Grammar(field.type, value), "grammar")


def _json_document(text: str, kind: str, max_depth: int) -> Any:
    raw = text.encode()
    if json_depth(raw, stop_above=max_depth) > max_depth:
        raise invalid_request(
            f"The {kind} grammar nests arrays and objects more than {max_depth} levels deep.",
            "grammar",
            "schema_too_deep",
        )
    try:
        return msgspec.json.decode(raw)
    except msgspec.DecodeError as exc:
        raise invalid_request(f"The {kind} grammar is not JSON: {exc}", "grammar") from None


def single_constraint(*candidates: Constraint | None) -> Constraint | None:
    """At most one source may constrain the output."""
    given = [c for c in candidates if c is not None]
    if len(given) > 1:
        raise invalid_request(
            f"Only one output constraint may be given; got {' and '.join(c.param for c in given)}.",
            given[-1].param,
        )
    return given[0] if given else None


def check_json_schema(
    schema: Any, param: str, what: str, budget: SchemaBudget, code: str = "invalid_schema"
) -> None:
    """Refuse a document past the request's schema limits or that is not a JSON Schema
    (jsonschema's meta-schema check)."""
    if not isinstance(schema, dict):
        raise invalid_request(f"Invalid schema for {what}: it must be a JSON object.", param)
    check_schema_bounds(schema, param, budget)
    problem = _schema_problem(_canonical.encode(schema))
    if problem is not None:
        raise invalid_request(f"Invalid schema for {what}{problem}", param, code)


#: Keys sorted, so equal documents give equal cache keys.
_canonical = msgspec.json.Encoder(order="sorted")


@functools.lru_cache(maxsize=512)
def _schema_problem(document: bytes) -> str | None:
    """What is wrong with a JSON Schema document (``None``: nothing).

    The meta-schema check takes about a millisecond per schema, and clients send the same tools
    and formats on every turn, so results are cached by the document's canonical JSON.
    """
    schema = msgspec.json.decode(document)
    with warnings.catch_warnings():
        # An unknown "$schema" URI makes jsonschema warn and fall back to the default draft.
        warnings.simplefilter("ignore", DeprecationWarning)
        validator = jsonschema.validators.validator_for(schema, jsonschema.Draft202012Validator)
    try:
        validator.check_schema(schema)
    except jsonschema.SchemaError as exc:
        location = "/".join(str(p) for p in exc.path)
        where = f" at '{location}'" if location else ""
        return f"{where}: {exc.message}"
    except (RecursionError, OverflowError, re.error, ValueError) as exc:
        # A pattern Python's re cannot compile (bounds are checked before, this is the
        # backstop): the client's document, described without the library's internals.
        log.debug("schema meta-check failed: %r", exc)
        return ": it holds a pattern or value this server cannot read."
    return None
