"""Turns conversation items into the chat the model's template renders."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from exloop.engine.protocol import ChatMessage, ToolCall

from .errors import InvalidRequest
from .items import (
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
    WebSearchCall,
)
from .store import ResponseStore


def resolve_references(
    items: Iterable[Item], store: ResponseStore, owner: str | None
) -> list[Item]:
    """Replace each ``item_reference`` with the stored item it names, among the responses
    ``owner`` created."""
    resolved: list[Item] = []
    for i, item in enumerate(items):
        if isinstance(item, ItemReference):
            found = store.find_item(item.id, owner)
            if found is None:
                raise InvalidRequest(f"Item with id '{item.id}' not found.", param=f"input[{i}].id")
            resolved.append(found)
        else:
            resolved.append(item)
    return resolved


def to_messages(items: Sequence[Item], instructions: str | None = None) -> list[ChatMessage]:
    """Chat messages for ``items``, with ``instructions`` as the first system message.

    Consecutive function calls join the assistant turn before them (one turn may hold text
    and several calls); their outputs become ``tool`` messages named after the call. An MCP
    call is a call and its result; a refused approval is the call and the refusal, so the
    model learns it may not run it (an approved one is the ``mcp_call`` that follows). Reasoning,
    web-search and tool-listing items carry nothing the model can re-read and are left out, as
    are approval requests still waiting.
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
            case FunctionCall(call_id=call_id, name=name, arguments=arguments):
                names[call_id] = name
                _add_call(messages, ToolCall(call_id=call_id, name=name, arguments=arguments))
            case FunctionCallOutput(call_id=call_id, output=output):
                messages.append(
                    ChatMessage(
                        role="tool", content=output, tool_call_id=call_id, name=names.get(call_id)
                    )
                )
            case McpCall(id=call_id, name=name, arguments=arguments):
                if item.output is None and item.error is None:
                    continue  # cut off before it ran
                _add_call(messages, ToolCall(call_id=call_id, name=name, arguments=arguments))
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
                _add_call(messages, call)
                refusal = "The user declined to run this call."
                if item.reason:
                    refusal += f" Reason: {item.reason}"
                messages.append(
                    ChatMessage(
                        role="tool", content=refusal, tool_call_id=request.id, name=request.name
                    )
                )
            case Reasoning() | WebSearchCall() | McpListTools() | McpApprovalResponse():
                continue
            case ItemReference():
                continue
    return messages


def _add_call(messages: list[ChatMessage], call: ToolCall) -> None:
    """Add a call to the assistant turn just before, or start one."""
    last = messages[-1] if messages else None
    if last is not None and last.role == "assistant":
        messages[-1] = ChatMessage(
            role="assistant", content=last.content, tool_calls=(*last.tool_calls, call)
        )
    else:
        messages.append(ChatMessage(role="assistant", tool_calls=(call,)))


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
