"""exloop's own tool-call format, for models whose template knows no tools.

The default model, SmolLM2-135M-Instruct, is one: its ChatML template renders only roles and
text. The syntax is Hermes' without the newlines, ``<tool_call>{"name": ..., "arguments":
{...}}</tool_call>``, read by the same parser; the system prompt built by
:func:`~exloop.engine.tool_calls.prompt.tool_prompt` lists the tools with their schemas and
shows one example call.
"""

from __future__ import annotations

from .hermes import HermesFormat

NAME = "exloop"


def fallback_format() -> HermesFormat:
    """The fallback format: Hermes tags without padding or separator.

    Calls follow one another directly: were a newline allowed between them, a small model
    writing its habitual newline after ``</tool_call>`` would be forced into another call.
    """
    return HermesFormat(NAME, padding="", separator="")
