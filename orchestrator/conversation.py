"""Turns conversation items into the chat the model's template renders."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterable, Sequence

from exloop.engine.protocol import ChatMessage, ToolCall

from .errors import InvalidRequest
from .items import (
    AdditionalTools,
    CustomToolCall,
    CustomToolCallOutput,
    FunctionCall,
    FunctionCallOutput,
    Item,
    ItemReference,
    McpApprovalRequest,
    McpApprovalResponse,
    McpCall,
    McpCallError,
    McpHttpError,
    McpListTools,
    McpProtocolError,
    McpToolExecutionError,
    Message,
    Reasoning,
    ToolSearchCall,
    ToolSearchOutput,
    WebSearchCall,
)
from .toolset import TOOL_SEARCH, describe_loaded, qualified


async def resolve_references(
    items: Iterable[Item], find: Callable[[str], Awaitable[Item | None]]
) -> list[Item]:
    """Replace each ``item_reference`` with the stored item it names (``find`` looks it up)."""
    resolved: list[Item] = []
    for i, item in enumerate(items):
        if isinstance(item, ItemReference):
            found = await find(item.id)
            if found is None:
                raise InvalidRequest(f"Item with id '{item.id}' not found.", param=f"input[{i}].id")
            resolved.append(found)
        else:
            resolved.append(item)
    return resolved


def to_messages(items: Sequence[Item], instructions: str | None = None) -> list[ChatMessage]:
    """Chat messages for ``items``, with ``instructions`` as the first system message.

    Consecutive calls (of functions, custom tools, a client-run tool search) join the assistant
    turn before them (one turn may hold text and several calls), named as the model wrote them
    (``namespace.tool``); their outputs become ``tool`` messages named after the call, a tool
    search's output the list of tools it loaded. An MCP call is a call and its result; a
    refused approval is the call and the refusal, so the model learns it may not run it (an
    approved one is the ``mcp_call`` that follows). Reasoning, web-search, tool-listing and
    ``additional_tools`` items carry nothing the model can re-read as a turn (added tools join
    the tool list) and are left out, as are approval requests still waiting.
    """
    messages: list[ChatMessage] = []
    if instructions:
        messages.append(ChatMessage(role="system", content=instructions))
    names: dict[str, str] = {}
    requests: dict[str, McpApprovalRequest] = {}
    for item in items:
        match item:
            case Message(role=role):
                messages.append(ChatMessage(role=role, content=item.text))
            case FunctionCall(call_id=call_id, arguments=arguments):
                name = qualified(item.name, item.namespace)
                _add_call(messages, names, ToolCall(call_id, name, arguments))
            case CustomToolCall(call_id=call_id, input=text):
                name = qualified(item.name, item.namespace)
                _add_call(messages, names, ToolCall(call_id, name, text, freeform=True))
            case ToolSearchCall(arguments=arguments):
                call_id = item.call_id or item.id or ""
                _add_call(messages, names, ToolCall(call_id, TOOL_SEARCH, json.dumps(arguments)))
            case (
                FunctionCallOutput(call_id=call_id, output=output)
                | CustomToolCallOutput(call_id=call_id, output=output)
            ):
                messages.append(
                    ChatMessage(
                        role="tool", content=output, tool_call_id=call_id, name=names.get(call_id)
                    )
                )
            case ToolSearchOutput(tools=tools):
                messages.append(
                    ChatMessage(
                        role="tool",
                        content=describe_loaded(tools),
                        tool_call_id=item.call_id,
                        name=TOOL_SEARCH,
                    )
                )
            case McpCall(id=call_id, name=name, arguments=arguments):
                if item.output is None and item.error is None:
                    continue  # cut off before it ran
                _add_call(
                    messages, names, ToolCall(call_id=call_id, name=name, arguments=arguments)
                )
                error = item.error
                result = item.output if error is None else f"Error: {_error_text(error)}"
                messages.append(
                    ChatMessage(role="tool", content=result or "", tool_call_id=call_id, name=name)
                )
            case McpApprovalRequest(id=request_id):
                requests[request_id] = item
            case McpApprovalResponse(approve=False, approval_request_id=request_id):
                request = requests.get(request_id)
                if request is None:
                    continue
                call = ToolCall(request.id, request.name, request.arguments)
                _add_call(messages, names, call)
                refusal = "The user declined to run this call."
                if item.reason:
                    refusal += f" Reason: {item.reason}"
                messages.append(
                    ChatMessage(
                        role="tool", content=refusal, tool_call_id=request.id, name=request.name
                    )
                )
            case (
                Reasoning()
                | WebSearchCall()
                | McpListTools()
                | McpApprovalResponse()
                | AdditionalTools()
                | ItemReference()
            ):
                continue
    return messages


def _add_call(messages: list[ChatMessage], names: dict[str, str], call: ToolCall) -> None:
    """Join ``call`` to the assistant turn that ends ``messages``, or start one; ``names``
    learns the call's name for its result."""
    names[call.call_id] = call.name
    last = messages[-1] if messages else None
    if last is not None and last.role == "assistant":
        messages[-1] = ChatMessage(
            role="assistant", content=last.content, tool_calls=(*last.tool_calls, call)
        )
    else:
        messages.append(ChatMessage(role="assistant", tool_calls=(call,)))


def last_user_text(items: Sequence[Item]) -> str | None:
    """The text of the last user message, the fallback for a search query that finds nothing."""
    for item in reversed(items):
        if isinstance(item, Message) and item.role == "user" and item.text.strip():
            return item.text.strip()
    return None


def _error_text(error: McpCallError) -> str:
    match error:
        case McpToolExecutionError(content=content):
            texts = [str(block.get("text", "")) for block in content]
            return " ".join(text for text in texts if text) or "the tool failed"
        case McpProtocolError(message=message) | McpHttpError(message=message):
            return message


def drop_oldest_turn(messages: list[ChatMessage]) -> bool:
    """Remove the oldest non-system turn (with the tool results that belong to it), keeping
    the last user message. Returns False when nothing more can go."""
    removable = [i for i, m in enumerate(messages) if m.role not in ("system", "developer")]
    last_user = max((i for i, m in enumerate(messages) if m.role == "user"), default=-1)
    removable = [i for i in removable if i < last_user]
    if not removable:
        return False
    first = removable[0]
    del messages[first]
    # Tool results whose call went with the removed turn would dangle: drop them too.
    while first < len(messages) and messages[first].role == "tool" and first < last_user - 1:
        del messages[first]
        last_user -= 1
    return True
