"""``POST /v1/responses``: the request body, decoded forgivingly and validated into a RunSpec.

Every field of OpenAI's request and of the seed (mistral.rs) schema is accepted; fields the
server cannot honour with the given value are refused with a 400 naming them. Input items are
read the way real clients send them: messages without ``type``, ``content`` as a plain string,
earlier output items replayed with their ``id`` and ``status``, reasoning items with an empty
summary, ``item_reference``\\ s. Unknown fields are ignored.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import msgspec

from exloop.orchestrator.compaction import MIN_THRESHOLD
from exloop.orchestrator.items import (
    AdditionalTools,
    InputText,
    Item,
    Message,
    ToolSearchOutput,
)
from exloop.orchestrator.resource import (
    FormatText,
    ReasoningConfig,
    TextConfig,
    TextFormat,
    Verbosity,
)
from exloop.orchestrator.sealing import MAX_SEALED_CHARS
from exloop.orchestrator.spec import CompactionPolicy, Echo, ReasoningOptions, RunSpec

from .decode import convert, decode_json
from .errors import excerpt, invalid_request
from .fields import CommonFields, check_unsupported, request_tools, sampling_params
from .format_fields import (
    format_constraint,
    grammar_constraint,
    response_format,
    single_constraint,
)
from .limits import Limits
from .schema_bounds import SchemaBudget
from .tool_fields import ToolField, loaded_tools

#: ``include`` values OpenAI defines; the server produces what applies to a text model.
INCLUDABLE = frozenset(
    {
        "file_search_call.results",
        "web_search_call.results",
        "web_search_call.action.sources",
        "message.input_image.image_url",
        "computer_call_output.output.image_url",
        "code_interpreter_call.outputs",
        "reasoning.encrypted_content",
        "message.output_text.logprobs",
    }
)

_ITEM_TYPES = frozenset(
    {
        "message",
        "function_call",
        "function_call_output",
        "custom_tool_call",
        "custom_tool_call_output",
        "tool_search_call",
        "tool_search_output",
        "additional_tools",
        "reasoning",
        "web_search_call",
        "mcp_list_tools",
        "mcp_call",
        "mcp_approval_request",
        "mcp_approval_response",
        "compaction",
        "item_reference",
    }
)
#: Items whose output may come as content parts, read as their joined text.
_OUTPUT_ITEMS = frozenset({"function_call_output", "custom_tool_call_output"})
#: Items carrying tool definitions, validated as a request's ``tools`` are.
_TOOL_ITEMS = frozenset({"additional_tools", "tool_search_output"})
#: Items whose ``encrypted_content`` the server sealed and opens again.
_SEALED_ITEMS = frozenset({"reasoning", "compaction"})
#: Bounds on ``client_metadata`` (Codex sends a handful of ids and one JSON string).
MAX_CLIENT_METADATA_PAIRS = 32
MAX_CLIENT_METADATA_KEY = 128
MAX_CLIENT_METADATA_VALUE = 8192


class ContextManagementField(msgspec.Struct, frozen=True):
    """One ``context_management`` entry; only ``compaction`` exists."""

    type: str
    compact_threshold: int | None = None


_TEXT_PARTS = frozenset({"input_text", "output_text", "text"})


class TextField(msgspec.Struct, frozen=True):
    """``text``: the output format, and ``verbosity`` (null or absent: OpenAI's ``medium``)."""

    format: TextFormat = FormatText()
    verbosity: Verbosity | None = None


class ResponsesRequest(CommonFields, kw_only=True, frozen=True):
    """The body of ``POST /v1/responses``; fields shared with Chat are in :class:`CommonFields`."""

    input: str | list[Any] | None = None
    instructions: str | None = None
    text: TextField | None = None
    reasoning: ReasoningConfig | None = None
    max_output_tokens: int | None = None
    background: bool | None = None
    store: bool | None = None
    include: list[str] | None = None
    truncation: Literal["auto", "disabled"] | None = None
    previous_response_id: str | None = None
    context_management: list[ContextManagementField] | None = None
    #: Codex's per-turn ids; accepted (bounded) and not used.
    client_metadata: dict[str, str] | None = None


@dataclass(frozen=True, slots=True)
class ResponsesCall:
    """A validated create request: what to run, and how to answer."""

    spec: RunSpec
    stream: bool
    #: The request field the output constraint came from, for naming compile errors.
    constraint_param: str | None


def parse_responses_request(body: bytes, *, served_model: str, limits: Limits) -> ResponsesCall:
    """Decode and validate a create request; raises :class:`~.errors.ApiError` (400)."""
    request = decode_json(body, ResponsesRequest, max_depth=limits.max_json_depth)
    check_unsupported(request)
    store = request.store is not False
    if request.background and not store:
        raise invalid_request(
            "background=true requires store=true: a background response must be stored to be "
            "retrieved.",
            "background",
        )
    if request.input is None:
        raise invalid_request("input is required.", "input", "missing_required_parameter")
    budget = SchemaBudget(limits)
    items = input_items(request.input, budget)
    if not items and request.previous_response_id is None:
        raise invalid_request("input must hold at least one item.", "input")
    include = include_values(request.include)
    check_client_metadata(request.client_metadata)
    compaction = compaction_policy(request.context_management)
    reasoning = request.reasoning or ReasoningConfig()

    given = request.text or TextField()
    text = TextConfig(given.format, given.verbosity or "medium")
    constraints = [format_constraint(text.format, "text.format", budget)]
    if request.response_format is not None:
        text = TextConfig(response_format(request.response_format), text.verbosity)
        constraints.append(format_constraint(text.format, "response_format", budget))
    if request.grammar is not None:
        constraints.append(grammar_constraint(request.grammar, budget))
    constraint = single_constraint(*constraints)

    loaded = [
        tool
        for item in items
        if isinstance(item, AdditionalTools | ToolSearchOutput)
        for tool in item.tools
    ]
    policy, echoed_tools, tool_choice = request_tools(request, budget, loaded)
    logprobs = bool(request.logprobs) or "message.output_text.logprobs" in include
    sampling = sampling_params(
        request,
        max_tokens=request.max_output_tokens,
        max_tokens_param="max_output_tokens",
        logprobs=logprobs,
        limits=limits,
    )
    spec = RunSpec(
        input=items,
        model=request.model or served_model,
        sampling=sampling,
        tools=policy,
        instructions=request.instructions,
        constraint=constraint.grammar if constraint else None,
        previous_response_id=request.previous_response_id,
        store=store,
        background=bool(request.background),
        truncation=request.truncation or "disabled",
        metadata=dict(request.metadata or {}),
        reasoning=ReasoningOptions(
            effort=reasoning.effort,
            context=reasoning.context or "auto",
            encrypted="reasoning.encrypted_content" in include,
        ),
        compaction=compaction,
        echo=Echo(
            tools=echoed_tools,
            tool_choice=tool_choice,
            text=text,
            reasoning=request.reasoning,
            max_output_tokens=request.max_output_tokens,
            top_logprobs=sampling.top_logprobs,
            include=include,
            safety_identifier=request.safety_identifier,
            prompt_cache_key=request.prompt_cache_key,
            user=request.user,
        ),
    )
    return ResponsesCall(spec, bool(request.stream), constraint.param if constraint else None)


def include_values(values: list[str] | None) -> tuple[str, ...]:
    """``include``, each value one OpenAI defines; kept once each, in the order given, so
    what the response keeps is a handful of values however many the body repeats."""
    for i, value in enumerate(values or ()):
        if value not in INCLUDABLE:
            raise invalid_request(f"Unknown include value {excerpt(value)}.", f"include[{i}]")
    return tuple(dict.fromkeys(values or ()))


def compaction_policy(entries: list[ContextManagementField] | None) -> CompactionPolicy | None:
    """``context_management`` as the orchestrator's policy (None: no compaction)."""
    policy = None
    for i, entry in enumerate(entries or ()):
        if entry.type != "compaction":
            raise invalid_request(
                f"Unknown context_management type {excerpt(entry.type)}; 'compaction' is "
                "supported.",
                f"context_management[{i}].type",
                "unsupported_value",
            )
        if policy is not None:
            raise invalid_request(
                "context_management may hold one compaction entry.", f"context_management[{i}]"
            )
        threshold = entry.compact_threshold
        if threshold is not None and threshold < MIN_THRESHOLD:
            raise invalid_request(
                f"compact_threshold must be at least {MIN_THRESHOLD} tokens, got {threshold}.",
                f"context_management[{i}].compact_threshold",
                "invalid_value",
            )
        policy = CompactionPolicy(threshold)
    return policy


def check_client_metadata(metadata: dict[str, str] | None) -> None:
    if not metadata:
        return
    if len(metadata) > MAX_CLIENT_METADATA_PAIRS:
        raise invalid_request(
            f"client_metadata may hold at most {MAX_CLIENT_METADATA_PAIRS} pairs, got "
            f"{len(metadata)}.",
            "client_metadata",
        )
    for key, value in metadata.items():
        if len(key) > MAX_CLIENT_METADATA_KEY or len(value) > MAX_CLIENT_METADATA_VALUE:
            raise invalid_request(
                f"client_metadata keys may have at most {MAX_CLIENT_METADATA_KEY} characters "
                f"and values {MAX_CLIENT_METADATA_VALUE}; {key[:20]!r} is longer.",
                "client_metadata",
            )


def input_items(value: str | list[Any], budget: SchemaBudget) -> tuple[Item, ...]:
    """The request's ``input`` as items; a string is one user message. Tool definitions in
    the items count against the request's schema ``budget``."""
    if isinstance(value, str):
        return (Message(role="user", content=[InputText(value)]),)
    return tuple(_item(raw, f"input[{i}]", budget) for i, raw in enumerate(value))


def _item(raw: Any, param: str, budget: SchemaBudget) -> Item:
    if not isinstance(raw, dict):
        raise invalid_request("Each input item must be a JSON object.", param)
    kind = raw.get("type")
    if kind is None:
        # Clients send messages as bare {"role", "content"}, references as bare {"id"}.
        kind = "message" if "role" in raw else "item_reference" if "id" in raw else None
        if kind is None:
            raise invalid_request(
                "An input item needs a type.", f"{param}.type", "missing_required_parameter"
            )
        raw = {**raw, "type": kind}
    if kind not in _ITEM_TYPES:
        raise invalid_request(
            f"Input items of type {excerpt(str(kind))} are not supported by this server.",
            f"{param}.type",
            "unsupported_value",
        )
    if kind in _SEALED_ITEMS:
        sealed = raw.get("encrypted_content")
        if isinstance(sealed, str) and len(sealed) > MAX_SEALED_CHARS:
            raise invalid_request(
                f"encrypted_content may have at most {MAX_SEALED_CHARS} characters, got "
                f"{len(sealed)}.",
                f"{param}.encrypted_content",
            )
    if kind == "message":
        raw = {**raw, "content": _content(raw.get("content"), raw.get("role"), param)}
    elif kind in _OUTPUT_ITEMS and isinstance(raw.get("output"), list):
        raw = {**raw, "output": _joined_text(raw["output"], f"{param}.output")}
    elif kind in _TOOL_ITEMS:
        fields = convert(raw.get("tools"), list[ToolField], f"{param}.tools")
        tools = loaded_tools(fields, f"{param}.tools", budget)
        raw = {**raw, "tools": msgspec.to_builtins(tools)}
    elif kind == "mcp_call" and isinstance(raw.get("error"), str):
        # Earlier SDKs typed an MCP call's error as a plain string.
        raw = {
            **raw,
            "error": {"type": "mcp_protocol_error", "code": -32603, "message": raw["error"]},
        }
    item: Item = convert(raw, Item, param)  # type: ignore[arg-type]
    return item


def _content(content: Any, role: Any, param: str) -> Any:
    """Message content as typed parts: a string is one text part; ``text`` parts (Chat's
    spelling) become ``input_text``, or ``output_text`` on assistant turns."""
    text_type = "output_text" if role == "assistant" else "input_text"
    if isinstance(content, str):
        return [{"type": text_type, "text": content}]
    if not isinstance(content, list):
        return content  # msgspec names the type error
    parts = []
    for j, part in enumerate(content):
        if isinstance(part, dict):
            kind = part.get("type")
            if kind == "text":
                part = {**part, "type": text_type}
            elif kind not in _TEXT_PARTS and kind != "refusal":
                raise invalid_request(
                    f"Content parts of type {kind!r} are not supported by this text-only server.",
                    f"{param}.content[{j}]",
                    "unsupported_value",
                )
        parts.append(part)
    return parts


def _joined_text(parts: list[Any], param: str) -> str:
    """A function call output given as content parts, as the one text the model reads."""
    texts = []
    for j, part in enumerate(parts):
        if not (
            isinstance(part, dict)
            and part.get("type") in _TEXT_PARTS
            and isinstance(part.get("text"), str)
        ):
            raise invalid_request(
                "Tool call outputs may only hold text parts.",
                f"{param}[{j}]",
                "unsupported_value",
            )
        texts.append(part["text"])
    return "".join(texts)
