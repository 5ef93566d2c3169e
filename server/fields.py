"""Request fields both APIs share, and their validation into the orchestrator's types.

``/v1/responses`` and ``/v1/chat/completions`` take the same sampling settings, tools, tool
choice, output formats and non-OpenAI extensions (``top_k``, DRY, ``grammar``,
``web_search_options``); :class:`CommonFields` declares them once and the functions here turn
them into :class:`~exloop.engine.sampling.SamplingParams`, a
:class:`~exloop.orchestrator.spec.ToolPolicy` and a constraint, raising a 400 that names the
field at fault. Tools come in the Responses' flat form and Chat's (and the seed schema's)
nested ``function`` form alike.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeAlias, TypeVar

import jsonschema
import msgspec

from exloop.engine.errors import InvalidParameter
from exloop.engine.protocol import Grammar, ToolSpec
from exloop.engine.sampling import DrySettings, SamplingParams
from exloop.orchestrator.resource import (
    FormatJsonObject,
    FormatJsonSchema,
    FormatText,
    FunctionTool,
    TextFormat,
    Tool,
    ToolChoice,
    ToolChoiceFunction,
    ToolChoiceWebSearch,
    UserLocation,
    WebSearchPreviewTool,
    WebSearchTool,
)
from exloop.orchestrator.spec import ToolPolicy, WebSearchOptions

from .errors import invalid_request

T = TypeVar("T")

ContextSize: TypeAlias = Literal["low", "medium", "high"]

#: OpenAI's limits on ``metadata``.
MAX_METADATA_PAIRS = 16
MAX_METADATA_KEY = 64
MAX_METADATA_VALUE = 512
_FUNCTION_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


# -- tools ---------------------------------------------------------------------------------


class FunctionDef(msgspec.Struct, frozen=True):
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class FunctionToolField(msgspec.Struct, tag="function", tag_field="type", frozen=True):
    """A function tool, flat (Responses) or with a nested ``function`` (Chat, seed schema)."""

    name: str | None = None
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None
    function: FunctionDef | None = None


class Approximate(msgspec.Struct, frozen=True):
    city: str | None = None
    country: str | None = None
    region: str | None = None
    timezone: str | None = None


class UserLocationField(msgspec.Struct, frozen=True):
    """A user location, flat (Responses tools) or under ``approximate`` (Chat, seed)."""

    type: Literal["approximate"] = "approximate"
    approximate: Approximate | None = None
    city: str | None = None
    country: str | None = None
    region: str | None = None
    timezone: str | None = None

    def to_location(self) -> UserLocation:
        place = self.approximate or Approximate(
            self.city, self.country, self.region, self.timezone
        )
        return UserLocation(place.city, place.country, place.region, place.timezone)


class WebSearchToolField(msgspec.Struct, tag="web_search", tag_field="type", frozen=True):
    search_context_size: ContextSize = "medium"
    user_location: UserLocationField | None = None


class WebSearchToolDated(WebSearchToolField, tag="web_search_2025_08_26", frozen=True):
    pass


class WebSearchPreviewField(WebSearchToolField, tag="web_search_preview", frozen=True):
    pass


class WebSearchPreviewDated(WebSearchToolField, tag="web_search_preview_2025_03_11", frozen=True):
    pass


ToolField: TypeAlias = (
    FunctionToolField
    | WebSearchToolField
    | WebSearchToolDated
    | WebSearchPreviewField
    | WebSearchPreviewDated
)


class NamedFunction(msgspec.Struct, frozen=True):
    name: str


class ToolChoiceFunctionField(msgspec.Struct, tag="function", tag_field="type", frozen=True):
    """``{"type": "function", "name"}`` (Responses) or ``{..., "function": {"name"}}`` (Chat)."""

    name: str | None = None
    function: NamedFunction | None = None


class ToolChoiceWebSearchField(msgspec.Struct, tag="web_search", tag_field="type", frozen=True):
    pass


class ToolChoiceWebSearchDated(
    ToolChoiceWebSearchField, tag="web_search_2025_08_26", frozen=True
):
    pass


class ToolChoiceWebSearchPreview(
    ToolChoiceWebSearchField, tag="web_search_preview", frozen=True
):
    pass


class ToolChoiceWebSearchPreviewDated(
    ToolChoiceWebSearchField, tag="web_search_preview_2025_03_11", frozen=True
):
    pass


ToolChoiceField: TypeAlias = (
    Literal["none", "auto", "required"]
    | ToolChoiceFunctionField
    | ToolChoiceWebSearchField
    | ToolChoiceWebSearchDated
    | ToolChoiceWebSearchPreview
    | ToolChoiceWebSearchPreviewDated
)


class WebSearchOptionsField(msgspec.Struct, frozen=True):
    """The seed schema's (and Chat's) ``web_search_options``: search on every request."""

    search_context_size: ContextSize = "medium"
    user_location: UserLocationField | None = None
    search_description: str | None = None
    extract_description: str | None = None


# -- output constraints --------------------------------------------------------------------


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


class StreamOptions(msgspec.Struct, frozen=True):
    include_usage: bool | None = None
    include_obfuscation: bool | None = None


# -- the shared request fields -------------------------------------------------------------


class CommonFields(msgspec.Struct, kw_only=True, frozen=True):
    """Fields both endpoints accept, with OpenAI's names (and mistral.rs's extensions)."""

    model: str | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    dry_multiplier: float | None = None
    dry_base: float | None = None
    dry_allowed_length: int | None = None
    dry_sequence_breakers: list[str] | None = None
    grammar: GrammarField | None = None
    response_format: ResponseFormatField | None = None
    tools: list[ToolField] | None = None
    tool_choice: ToolChoiceField | None = None
    parallel_tool_calls: bool | None = None
    web_search_options: WebSearchOptionsField | None = None
    metadata: dict[str, str] | None = None
    n: int | None = None
    service_tier: str | None = None
    user: str | None = None
    safety_identifier: str | None = None
    prompt_cache_key: str | None = None


def check_unsupported(fields: CommonFields) -> None:
    """Refuse values the server accepts the field of but cannot honour."""
    if fields.parallel_tool_calls is False:
        raise invalid_request(
            "parallel_tool_calls=false is not supported: every tool call the model makes in a "
            "turn is returned (or run). Omit the field or set it to true.",
            "parallel_tool_calls", "unsupported_value",
        )
    if fields.n is not None and fields.n != 1:
        raise invalid_request("Only n=1 is supported.", "n", "unsupported_value")
    check_metadata(fields.metadata)


def check_metadata(metadata: dict[str, str] | None) -> None:
    if not metadata:
        return
    if len(metadata) > MAX_METADATA_PAIRS:
        raise invalid_request(
            f"metadata may hold at most {MAX_METADATA_PAIRS} pairs, got {len(metadata)}.",
            "metadata",
        )
    for key, value in metadata.items():
        if len(key) > MAX_METADATA_KEY:
            raise invalid_request(
                f"metadata keys may be at most {MAX_METADATA_KEY} characters; {key[:20]!r}... "
                f"has {len(key)}.", "metadata",
            )
        if len(value) > MAX_METADATA_VALUE:
            raise invalid_request(
                f"metadata values may be at most {MAX_METADATA_VALUE} characters; the value of "
                f"{key!r} has {len(value)}.", "metadata",
            )


# -- sampling ------------------------------------------------------------------------------


def sampling_params(
    fields: CommonFields,
    *,
    max_tokens: int | None,
    max_tokens_param: str,
    logprobs: bool,
) -> SamplingParams:
    """The sampling settings, range-checked; errors name the field as this endpoint calls it."""
    logit_bias: dict[int, float] = {}
    for key, bias in (fields.logit_bias or {}).items():
        try:
            logit_bias[int(key)] = bias
        except ValueError:
            raise invalid_request(
                f"logit_bias keys must be token ids, got {key!r}.", "logit_bias"
            ) from None
    stop = fields.stop if fields.stop is not None else ()
    # Unset fields take the engine's defaults (OpenAI's, where OpenAI has the field).
    default, dry = SamplingParams(), DrySettings()
    params = SamplingParams(
        temperature=_or(fields.temperature, default.temperature),
        top_p=_or(fields.top_p, default.top_p),
        top_k=_or(fields.top_k, default.top_k),
        min_p=_or(fields.min_p, default.min_p),
        repetition_penalty=_or(fields.repetition_penalty, default.repetition_penalty),
        frequency_penalty=_or(fields.frequency_penalty, default.frequency_penalty),
        presence_penalty=_or(fields.presence_penalty, default.presence_penalty),
        logit_bias=logit_bias,
        stop=(stop,) if isinstance(stop, str) else tuple(stop),
        seed=fields.seed,
        dry=DrySettings(
            multiplier=_or(fields.dry_multiplier, dry.multiplier),
            base=_or(fields.dry_base, dry.base),
            allowed_length=_or(fields.dry_allowed_length, dry.allowed_length),
            sequence_breakers=(
                tuple(fields.dry_sequence_breakers)
                if fields.dry_sequence_breakers is not None
                else dry.sequence_breakers
            ),
        ),
        max_tokens=max_tokens,
        logprobs=logprobs,
        top_logprobs=_or(fields.top_logprobs, default.top_logprobs),
    )
    try:
        params.validate()
    except InvalidParameter as exc:
        param = max_tokens_param if exc.param == "max_tokens" else exc.param
        message = exc.message.replace("max_tokens", max_tokens_param)
        raise invalid_request(message, param, "invalid_value") from None
    return params


def _or(value: T | None, default: T) -> T:
    return default if value is None else value


# -- output constraints --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Constraint:
    """The output constraint and the request field it came from (named in compile errors)."""

    grammar: Grammar
    param: str


def format_constraint(format: TextFormat, param: str) -> Constraint | None:
    """The constraint of a ``text.format``; ``json_object`` means any JSON object."""
    match format:
        case FormatText():
            return None
        case FormatJsonObject():
            return Constraint(Grammar("json_schema", {"type": "object"}), param)
        case FormatJsonSchema(schema=schema):
            check_json_schema(schema, f"{param}.schema", f"the '{format.name}' format")
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
                    "response_format.json_schema.schema", "missing_required_parameter",
                )
            return FormatJsonSchema(spec.name, spec.schema, spec.description, spec.strict)
        case ResponseFormatJsonSchema(schema=dict() as schema):
            return FormatJsonSchema(field.name or "response", schema, field.description,
                                    field.strict)
        case ResponseFormatJsonSchema():
            raise invalid_request(
                "response_format of type json_schema needs a json_schema object with a schema.",
                "response_format.json_schema", "missing_required_parameter",
            )


def grammar_constraint(field: GrammarField) -> Constraint:
    return Constraint(Grammar(field.type, field.value), "grammar")


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
    schema: Any, param: str, what: str, code: str = "invalid_schema"
) -> None:
    """Refuse a document that is not a JSON Schema (jsonschema's meta-schema check)."""
    if not isinstance(schema, dict):
        raise invalid_request(f"Invalid schema for {what}: it must be a JSON object.", param)
    with warnings.catch_warnings():
        # An unknown "$schema" URI makes jsonschema warn and fall back to the default draft.
        warnings.simplefilter("ignore", DeprecationWarning)
        validator = jsonschema.validators.validator_for(schema, jsonschema.Draft202012Validator)
    try:
        validator.check_schema(schema)
    except jsonschema.SchemaError as exc:
        location = "/".join(str(p) for p in exc.path)
        where = f" at '{location}'" if location else ""
        raise invalid_request(
            f"Invalid schema for {what}{where}: {exc.message}", param, code
        ) from None


# -- tools ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ToolsField:
    """The validated tools: for the model, for the response's echo, and built-in search."""

    functions: tuple[ToolSpec, ...]
    echo: tuple[Tool, ...]
    web_search: WebSearchOptions | None


def tools_field(tools: Sequence[ToolField] | None) -> ToolsField:
    functions: list[ToolSpec] = []
    echo: list[Tool] = []
    web_search: WebSearchOptions | None = None
    for i, tool in enumerate(tools or ()):
        match tool:
            case FunctionToolField():
                spec, echoed = _function_tool(tool, i, {f.name for f in functions})
                functions.append(spec)
                echo.append(echoed)
            case WebSearchToolField():
                if web_search is not None:
                    raise invalid_request("Only one web_search tool may be given.", f"tools[{i}]")
                location = tool.user_location.to_location() if tool.user_location else None
                web_search = WebSearchOptions(False, tool.search_context_size, location)
                preview = isinstance(tool, (WebSearchPreviewField, WebSearchPreviewDated))
                kind = WebSearchPreviewTool if preview else WebSearchTool
                echo.append(kind(tool.search_context_size, location))
    return ToolsField(tuple(functions), tuple(echo), web_search)


def _function_tool(
    tool: FunctionToolField, i: int, taken: set[str]
) -> tuple[ToolSpec, FunctionTool]:
    if tool.function is not None:
        prefix = f"tools[{i}].function"
        name, description = tool.function.name, tool.function.description
        parameters, strict = tool.function.parameters, tool.function.strict
    elif tool.name is not None:
        prefix = f"tools[{i}]"
        name, description, parameters, strict = (
            tool.name, tool.description, tool.parameters, tool.strict
        )
    else:
        raise invalid_request(
            "A function tool needs a name.", f"tools[{i}].name", "missing_required_parameter"
        )
    if not _FUNCTION_NAME.match(name):
        raise invalid_request(
            f"Invalid function name {name!r}: use 1 to 64 letters, digits, '_' or '-'.",
            f"{prefix}.name",
        )
    if name in taken:
        raise invalid_request(f"Duplicate function name {name!r}.", f"{prefix}.name")
    if parameters is not None:
        what = f"function '{name}'"
        check_json_schema(
            parameters, f"{prefix}.parameters", what, "invalid_function_parameters"
        )
        if parameters.get("type", "object") != "object":
            raise invalid_request(
                f"Invalid schema for {what}: the parameters must be a JSON Schema of type "
                f"'object', got {parameters['type']!r}.",
                f"{prefix}.parameters", "invalid_function_parameters",
            )
    schema = parameters if parameters is not None else {"type": "object", "properties": {}}
    return (
        ToolSpec(name, description, schema, bool(strict)),
        FunctionTool(name, parameters, strict, description),
    )


def tool_policy(
    tools: ToolsField,
    choice: ToolChoiceField | None,
    options: WebSearchOptionsField | None,
) -> tuple[ToolPolicy, ToolChoice]:
    """Which tools the model sees and must use, and ``tool_choice`` as the response echoes it."""
    web_search = tools.web_search
    if options is not None:
        location = options.user_location.to_location() if options.user_location else None
        web_search = WebSearchOptions(
            True, options.search_context_size, location,
            options.search_description, options.extract_description,
        )
    names = {f.name for f in tools.functions}
    match choice:
        case None | "auto" | "none":
            mode = choice or "auto"
            return ToolPolicy(tools.functions, mode, None, web_search), mode
        case "required":
            if not names and web_search is None:
                raise invalid_request(
                    "tool_choice 'required' needs at least one tool.", "tool_choice"
                )
            return ToolPolicy(tools.functions, "required", None, web_search), "required"
        case ToolChoiceFunctionField():
            name = choice.function.name if choice.function is not None else choice.name
            if name is None:
                raise invalid_request(
                    "tool_choice of type function needs the function's name.", "tool_choice",
                    "missing_required_parameter",
                )
            if name not in names:
                raise invalid_request(
                    f"tool_choice names the function {name!r}, which is not among the tools.",
                    "tool_choice",
                )
            return (
                ToolPolicy(tools.functions, "auto", name, web_search),
                ToolChoiceFunction(name),
            )
        case ToolChoiceWebSearchField():
            if web_search is None:
                raise invalid_request(
                    "tool_choice web_search needs a web_search tool (or web_search_options).",
                    "tool_choice",
                )
            forced = WebSearchOptions(
                True, web_search.search_context_size, web_search.user_location,
                web_search.search_description, web_search.extract_description,
            )
            return ToolPolicy(tools.functions, "auto", None, forced), ToolChoiceWebSearch()
