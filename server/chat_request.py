"""``POST /v1/chat/completions``: the request body, validated into a RunSpec.

Chat messages become conversation items (system/developer/user turns → messages, an
assistant's ``tool_calls`` → ``function_call`` items, or ``custom_tool_call`` items for calls of
type ``custom``; ``tool`` turns → ``function_call_output`` or ``custom_tool_call_output``, after
the call they answer) and run through the same orchestrator as ``/v1/responses``, unstored. The
non-OpenAI fields of the seed schema are accepted here too.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal, TypeAlias

import msgspec

from exloop.orchestrator.items import (
    CustomToolCall,
    CustomToolCallOutput,
    FunctionCall,
    FunctionCallOutput,
    InputText,
    Item,
    Message,
    OutputText,
    Reasoning,
    ReasoningText,
    Refusal,
)
from exloop.orchestrator.resource import ReasoningConfig, ReasoningEffort
from exloop.orchestrator.spec import Echo, ReasoningOptions, RunSpec
from exloop.orchestrator.tool_defs import ToolSearchTool

from .decode import decode_json
from .errors import invalid_request
from .fields import CommonFields, check_unsupported, request_tools, sampling_params
from .format_fields import (
    format_constraint,
    grammar_constraint,
    response_format,
    single_constraint,
)
from .limits import Limits
from .schema_bounds import SchemaBudget


class TextPart(msgspec.Struct, tag="text", tag_field="type", frozen=True):
    text: str


class RefusalPart(msgspec.Struct, tag="refusal", tag_field="type", frozen=True):
    refusal: str


TextContent: TypeAlias = str | list[TextPart]


class SystemMessage(msgspec.Struct, tag="system", tag_field="role", frozen=True):
    content: TextContent
    name: str | None = None


class DeveloperMessage(msgspec.Struct, tag="developer", tag_field="role", frozen=True):
    content: TextContent
    name: str | None = None


class UserMessage(msgspec.Struct, tag="user", tag_field="role", frozen=True):
    content: TextContent
    name: str | None = None


class CalledFunction(msgspec.Struct, frozen=True):
    name: str
    arguments: str


class CalledCustom(msgspec.Struct, frozen=True):
    name: str
    input: str


class ToolCallField(msgspec.Struct, frozen=True):
    """A call in an assistant message: ``function`` (the default type) or ``custom``."""

    id: str
    type: Literal["function", "custom"] = "function"
    function: CalledFunction | None = None
    custom: CalledCustom | None = None


class AssistantMessage(msgspec.Struct, tag="assistant", tag_field="role", frozen=True):
    content: str | list[TextPart | RefusalPart] | None = None
    refusal: str | None = None
    tool_calls: list[ToolCallField] | None = None
    name: str | None = None
    #: The turn's thinking, as vLLM and llama-server return it (``reasoning``: vLLM's newer
    #: spelling); shown again to a model that thinks.
    reasoning_content: str | None = None
    reasoning: str | None = None


class ToolMessage(msgspec.Struct, tag="tool", tag_field="role", frozen=True):
    content: TextContent
    tool_call_id: str


ChatMessageField: TypeAlias = (
    SystemMessage | DeveloperMessage | UserMessage | AssistantMessage | ToolMessage
)


class ChatRequest(CommonFields, kw_only=True, frozen=True):
    """The body of ``POST /v1/chat/completions``."""

    messages: list[ChatMessageField]
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    store: bool | None = None
    reasoning_effort: ReasoningEffort | None = None
    verbosity: Literal["low", "medium", "high"] | None = None


@dataclass(frozen=True, slots=True)
class ChatCall:
    """A validated chat request: what to run, and how to answer."""

    spec: RunSpec
    stream: bool
    include_usage: bool
    logprobs: bool
    constraint_param: str | None


def parse_chat_request(body: bytes, *, limits: Limits) -> ChatCall:
    """Decode and validate a chat request; raises :class:`~.errors.ApiError` (400)."""
    request = decode_json(body, ChatRequest, max_depth=limits.max_json_depth)
    if not request.model:
        # OpenAI requires it here (Responses keeps it optional, as the seed schema does).
        raise invalid_request(
            "You must provide a model parameter.", "model", "missing_required_parameter"
        )
    check_unsupported(request)
    if not request.messages:
        raise invalid_request("messages must hold at least one message.", "messages")
    if request.top_logprobs and not request.logprobs:
        raise invalid_request("top_logprobs requires logprobs to be true.", "top_logprobs")
    max_tokens: int | None
    if request.max_completion_tokens is not None:
        max_tokens, max_param = request.max_completion_tokens, "max_completion_tokens"
    else:
        max_tokens, max_param = request.max_tokens, "max_tokens"

    budget = SchemaBudget(limits)
    constraints = []
    if request.response_format is not None:
        constraints.append(
            format_constraint(response_format(request.response_format), "response_format", budget)
        )
    if request.grammar is not None:
        constraints.append(grammar_constraint(request.grammar, budget))
    constraint = single_constraint(*constraints)

    policy, echoed_tools, tool_choice = request_tools(request, budget)
    if policy.mcp:
        raise invalid_request(
            "mcp tools are a Responses API feature (approvals need its items); on Chat "
            "Completions the server's own MCP servers (--mcp-config) are available as tools.",
            "tools",
            "unsupported_value",
        )
    for i, tool in enumerate(policy.tools):
        if isinstance(tool, ToolSearchTool) and tool.execution == "client":
            # Chat has no item to return the search in, nor one to answer it with.
            raise invalid_request(
                "A client-run tool_search is not available on Chat Completions; use "
                "/v1/responses, or let the server run the search.",
                f"tools[{i}].execution",
                "unsupported_value",
            )
    sampling = sampling_params(
        request,
        max_tokens=max_tokens,
        max_tokens_param=max_param,
        logprobs=bool(request.logprobs),
        limits=limits,
    )
    spec = RunSpec(
        input=tuple(_items(request.messages)),
        model=request.model,
        sampling=sampling,
        tools=policy,
        constraint=constraint.grammar if constraint else None,
        store=False,
        metadata=dict(request.metadata or {}),
        reasoning=ReasoningOptions(effort=request.reasoning_effort),
        echo=Echo(
            tools=echoed_tools,
            tool_choice=tool_choice,
            max_output_tokens=max_tokens,
            top_logprobs=sampling.top_logprobs,
            user=request.user,
            safety_identifier=request.safety_identifier,
            prompt_cache_key=request.prompt_cache_key,
            reasoning=(
                ReasoningConfig(effort=request.reasoning_effort)
                if request.reasoning_effort
                else None
            ),
        ),
    )
    include_usage = bool(request.stream_options and request.stream_options.include_usage)
    return ChatCall(
        spec,
        bool(request.stream),
        include_usage,
        bool(request.logprobs),
        constraint.param if constraint else None,
    )


def _items(messages: list[ChatMessageField]) -> Iterator[Item]:
    custom_calls: set[str] = set()
    for m, message in enumerate(messages):
        match message:
            case SystemMessage() | DeveloperMessage() | UserMessage():
                role = _ROLES[type(message)]
                yield Message(role=role, content=[InputText(t) for t in _texts(message.content)])
            case AssistantMessage():
                thought = message.reasoning_content or message.reasoning
                if thought:
                    yield Reasoning(content=[ReasoningText(thought)])
                parts: list[OutputText | Refusal] = []
                if isinstance(message.content, str):
                    parts.append(OutputText(message.content))
                elif message.content is not None:
                    parts.extend(
                        OutputText(p.text) if isinstance(p, TextPart) else Refusal(p.refusal)
                        for p in message.content
                    )
                if message.refusal:
                    parts.append(Refusal(message.refusal))
                if parts or not message.tool_calls:
                    yield Message(role="assistant", content=list(parts))
                for c, call in enumerate(message.tool_calls or ()):
                    param = f"messages[{m}].tool_calls[{c}]"
                    if call.type == "custom":
                        if call.custom is None:
                            raise invalid_request(
                                "A custom tool call needs its custom object.",
                                f"{param}.custom",
                                "missing_required_parameter",
                            )
                        custom_calls.add(call.id)
                        yield CustomToolCall(call.id, call.custom.name, call.custom.input)
                    elif call.function is None:
                        raise invalid_request(
                            "A function tool call needs its function object.",
                            f"{param}.function",
                            "missing_required_parameter",
                        )
                    else:
                        yield FunctionCall(call.id, call.function.name, call.function.arguments)
            case ToolMessage():
                output = "".join(_texts(message.content))
                if message.tool_call_id in custom_calls:
                    yield CustomToolCallOutput(message.tool_call_id, output)
                else:
                    yield FunctionCallOutput(message.tool_call_id, output)


_ROLES: dict[type, Literal["system", "developer", "user"]] = {
    SystemMessage: "system",
    DeveloperMessage: "developer",
    UserMessage: "user",
}


def _texts(content: TextContent) -> list[str]:
    return [content] if isinstance(content, str) else [part.text for part in content]
