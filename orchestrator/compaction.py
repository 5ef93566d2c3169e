"""Compaction: the model summarizes the conversation so far, and the summary replaces it.

``POST /v1/responses/compact`` compacts on request; ``context_management`` with a
``compact_threshold`` compacts inside a response, before any step whose prompt takes more
tokens than the threshold (80% of the context window when no threshold is given).

The summary is the model's own: the conversation is shown to it with one more user turn,
:data:`SUMMARY_REQUEST`, and what it writes (thinking off; at most half as many tokens as the
conversation takes, within :data:`SUMMARY_MIN_TOKENS` and :data:`SUMMARY_MAX_TOKENS`) is
sealed into a ``compaction`` item. From then on the model sees the user, system and
developer messages, and the summary in its system prompt; assistant turns, tool calls and
their results are gone (:func:`compacted`).
"""

from __future__ import annotations

from collections.abc import Sequence

from exloop.engine.protocol import ChatMessage

from .conversation import KEPT_ROLES, system_prompt

SUMMARY_REQUEST = (
    "Your context is about to be compacted: everything but the user's messages will be "
    "replaced by a summary you write now. Summarize the conversation so far for yourself to "
    "continue from: what the user wants, what you did and found (with the tool calls you made "
    "and their results), the decisions taken, and what remains to be done. Be factual and "
    "concise, and write only the summary."
)
#: The most tokens a summary may take, and the least it is allowed however short the
#: conversation (a summary longer than half of what it replaces saves little).
SUMMARY_MAX_TOKENS = 1024
SUMMARY_MIN_TOKENS = 64
#: The share of the context window a prompt may fill before compaction, when
#: ``context_management`` gives no ``compact_threshold``.
DEFAULT_THRESHOLD_SHARE = 0.8
#: The least ``compact_threshold`` the server accepts: below it a summary barely fits.
MIN_THRESHOLD = 256


def summary_limit(conversation_tokens: int, context_length: int) -> int:
    """The most tokens the summary of a conversation of ``conversation_tokens`` may take."""
    share = max(SUMMARY_MIN_TOKENS, conversation_tokens // 2)
    return min(SUMMARY_MAX_TOKENS, context_length // 4, share)


def summary_prompt(messages: Sequence[ChatMessage]) -> list[ChatMessage]:
    """The conversation, with the request for its summary as the last user turn."""
    return [*messages, ChatMessage(role="user", content=SUMMARY_REQUEST)]


def compactable(messages: Sequence[ChatMessage], *, has_head: bool) -> bool:
    """Whether compaction would drop anything (else it cannot make the prompt shorter)."""
    body = messages[1:] if has_head else messages
    return any(message.role not in KEPT_ROLES for message in body)


def compacted(
    messages: Sequence[ChatMessage],
    *,
    has_head: bool,
    instructions: str | None,
    summary: str,
) -> list[ChatMessage]:
    """``messages`` after compaction: a new system prompt of ``instructions`` and ``summary``
    in place of the old one (``has_head``: ``messages[0]`` is it), then the user, system and
    developer messages."""
    body = messages[1:] if has_head else messages
    head = system_prompt(instructions, summary)
    kept = [message for message in body if message.role in KEPT_ROLES]
    return [head, *kept] if head is not None else kept
