"""Turns conversation items into the chat the model's template renders.

Sealed items are opened first (:func:`model_view`): an encrypted reasoning item becomes its
text again, and the latest compaction item replaces the turns before it: of those, only the
user, system and developer messages stay, and its summary joins the system prompt.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, replace

import msgspec

from exloop.engine.protocol import ChatMessage, ToolCall

from .errors import InvalidRequest
from .items import (
    AdditionalTools,
    Compaction,
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
    ReasoningText,
    ToolSearchCall,
    ToolSearchOutput,
    WebSearchCall,
)
from .resource import ReasoningContext
from .sealing import Sealer, Unsealable
from .toolset import TOOL_SEARCH, describe_loaded, qualified

#: How a compaction summary is introduced in the system prompt.
SUMMARY_HEADING = "Summary of the earlier conversation (written by you when it was compacted):"
#: Roles whose messages outlive a compaction: what the user asked and the instructions.
KEPT_ROLES = frozenset({"user", "system", "developer"})


@dataclass(frozen=True, slots=True)
class ModelView:
    """The conversation as the model reads it: sealed items opened, compacted turns gone."""

    items: tuple[Item, ...]
    #: The latest compaction's summary, shown with the instructions.
    summary: str | None = None


def model_view(context: Sequence[Item], inputs: Sequence[Item], sealer: Sealer) -> ModelView:
    """Open the sealed items of ``context`` (earlier turns, stored by this server) and
    ``inputs`` (this request's ``input``), and apply the latest compaction.

    Raises :class:`InvalidRequest` naming ``input[i].encrypted_content`` for a sealed item
    that does not open (altered, too long, or sealed by a server with another key).
    """
    items = [*context, *inputs]
    last = max((i for i, item in enumerate(items) if isinstance(item, Compaction)), default=-1)
    kept: list[Item] = []
    summary: str | None = None
    for i, item in enumerate(items):
        param = f"input[{i - len(context)}].encrypted_content" if i >= len(context) else None
        match item:
            case Reasoning(encrypted_content=str() as token):
                text = _open(sealer, "reasoning", token, param, item.id)
                item = msgspec.structs.replace(item, content=[ReasoningText(text)])
            case Compaction(encrypted_content=token):
                text = _open(sealer, "compaction", token, param, item.id)
                if i == last:
                    summary = text
                continue
        if i < last and not (isinstance(item, Message) and item.role in KEPT_ROLES):
            continue
        kept.append(item)
    return ModelView(tuple(kept), summary)


def _open(sealer: Sealer, kind: str, token: str, param: str | None, item_id: str | None) -> str:
    try:
        return sealer.open(kind, token)  # type: ignore[arg-type]
    except Unsealable as exc:
        name = f"{kind} item '{item_id}'" if item_id else f"a {kind} item"
        raise InvalidRequest(
            f"The encrypted content of {name} could not be verified: {exc}.",
            param=param or "previous_response_id",
            code="invalid_encrypted_content",
        ) from None


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


def to_messages(
    items: Sequence[Item],
    instructions: str | None = None,
    reasoning_context: ReasoningContext = "auto",
    summary: str | None = None,
) -> list[ChatMessage]:
    """Chat messages for ``items`` (a :func:`model_view`), with ``instructions`` and a
    compaction ``summary`` as the first system message.

    Consecutive calls (of functions, custom tools, a client-run tool search) join the assistant
    turn before them (one turn may hold text and several calls), named as the model wrote them
    (``namespace.tool``); their outputs become ``tool`` messages named after the call, a tool
    search's output the list of tools it loaded. An MCP call is a call and its result; a
    refused approval is the call and the refusal, so the model learns it may not run it (an
    approved one is the ``mcp_call`` that follows). A reasoning item starts an assistant turn
    and becomes its ``reasoning`` (with ``reasoning_context`` ``current_turn``, only after the
    last user message; otherwise all of it, for the template to keep what its model was
    trained to see). Web-search, tool-listing and ``additional_tools`` items carry nothing the
    model can re-read as a turn (added tools join the tool list) and are left out, as are
    approval requests still waiting.
    """
    head = system_prompt(instructions, summary)
    messages: list[ChatMessage] = [head] if head is not None else []
    last_user = max(
        (i for i, item in enumerate(items) if isinstance(item, Message) and item.role == "user"),
        default=-1,
    )
    names: dict[str, str] = {}
    requests: dict[str, McpApprovalRequest] = {}
    #: Reasoning that opens the next assistant turn (None: no new turn was opened).
    thought: str | None = None
    for i, item in enumerate(items):
        match item:
            case Message(role="assistant"):
                messages.append(
                    ChatMessage(role="assistant", content=item.text, reasoning=thought or "")
                )
                thought = None
            case Message(role=role):
                messages.append(ChatMessage(role=role, content=item.text))
                thought = None
            case FunctionCall(call_id=call_id, arguments=arguments):
                name = names[call_id] = qualified(item.name, item.namespace)
                _add_call(messages, ToolCall(call_id, name, arguments), thought)
                thought = None
            case CustomToolCall(call_id=call_id, input=text):
                name = names[call_id] = qualified(item.name, item.namespace)
                _add_call(messages, ToolCall(call_id, name, text, freeform=True), thought)
                thought = None
            case ToolSearchCall(arguments=arguments):
                call_id = item.call_id or item.id or ""
                names[call_id] = TOOL_SEARCH
                _add_call(messages, ToolCall(call_id, TOOL_SEARCH, json.dumps(arguments)), thought)
                thought = None
            case (
                FunctionCallOutput(call_id=call_id, output=output)
                | CustomToolCallOutput(call_id=call_id, output=output)
            ):
                messages.append(
                    ChatMessage(
                        role="tool", content=output, tool_call_id=call_id, name=names.get(call_id)
                    )
                )
                thought = None
            case ToolSearchOutput(tools=tools):
                messages.append(
                    ChatMessage(
                        role="tool",
                        content=describe_loaded(tools),
                        tool_call_id=item.call_id,
                        name=TOOL_SEARCH,
                    )
                )
                thought = None
            case McpCall(id=call_id, name=name, arguments=arguments):
                if item.output is None and item.error is None:
                    continue  # cut off before it ran
                _add_call(messages, ToolCall(call_id, name, arguments), thought)
                thought = None
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
                _add_call(messages, call, thought)
                thought = None
                refusal = "The user declined to run this call."
                if item.reason:
                    refusal += f" Reason: {item.reason}"
                messages.append(
                    ChatMessage(
                        role="tool", content=refusal, tool_call_id=request.id, name=request.name
                    )
                )
            case Reasoning():
                if reasoning_context == "current_turn" and i < last_user:
                    continue
                thought = "\n\n".join(part for part in (thought, item.text) if part)
            case (
                WebSearchCall()
                | McpListTools()
                | McpApprovalResponse()
                | ItemReference()
                | Compaction()
                | AdditionalTools()
            ):
                continue
    return messages


def system_prompt(instructions: str | None, summary: str | None) -> ChatMessage | None:
    """The system message of ``instructions`` and a compaction ``summary`` (None: neither)."""
    text = "\n\n".join(
        part for part in (instructions, summary and f"{SUMMARY_HEADING}\n{summary}") if part
    )
    return ChatMessage(role="system", content=text) if text else None


def _add_call(messages: list[ChatMessage], call: ToolCall, thought: str | None) -> None:
    """Add a call to the assistant turn just before, or start one (always when reasoning,
    ``thought``, opened a new turn)."""
    last = messages[-1] if messages else None
    if thought is None and last is not None and last.role == "assistant":
        messages[-1] = replace(last, tool_calls=(*last.tool_calls, call))
    else:
        messages.append(ChatMessage(role="assistant", tool_calls=(call,), reasoning=thought or ""))


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
