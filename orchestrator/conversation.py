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
    Message,
    Reasoning,
    WebSearchCall,
)
from .store import ResponseStore


def resolve_references(items: Iterable[Item], store: ResponseStore) -> list[Item]:
    """Replace each ``item_reference`` with the stored item it names."""
    resolved: list[Item] = []
    for i, item in enumerate(items):
        if isinstance(item, ItemReference):
            found = store.find_item(item.id)
            if found is None:
                raise InvalidRequest(f"Item with id '{item.id}' not found.", param=f"input[{i}].id")
            resolved.append(found)
        else:
            resolved.append(item)
    return resolved


def to_messages(items: Sequence[Item], instructions: str | None = None) -> list[ChatMessage]:
    """Chat messages for ``items``, with ``instructions`` as the first system message.

    Consecutive function calls join the assistant turn before them (one turn may hold text
    and several calls); their outputs become ``tool`` messages named after the call. Reasoning
    and web-search items carry nothing the model can re-read and are left out.
    """
    messages: list[ChatMessage] = []
    if instructions:
        messages.append(ChatMessage(role="system", content=instructions))
    names: dict[str, str] = {}
    for item in items:
        match item:
            case Message(role=role):
                messages.append(ChatMessage(role=role, content=item.text))
            case FunctionCall(call_id=call_id, name=name, arguments=arguments):
                names[call_id] = name
                call = ToolCall(call_id=call_id, name=name, arguments=arguments)
                last = messages[-1] if messages else None
                if last is not None and last.role == "assistant":
                    messages[-1] = ChatMessage(
                        role="assistant",
                        content=last.content,
                        tool_calls=(*last.tool_calls, call),
                    )
                else:
                    messages.append(ChatMessage(role="assistant", tool_calls=(call,)))
            case FunctionCallOutput(call_id=call_id, output=output):
                messages.append(
                    ChatMessage(
                        role="tool", content=output, tool_call_id=call_id, name=names.get(call_id)
                    )
                )
            case Reasoning() | WebSearchCall() | ItemReference():
                continue
    return messages


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
