"""Tool-call formats by model family, and how to pick one for a model.

==================  ===========================================================  ===============
name                syntax                                                       models
==================  ===========================================================  ===============
``hermes``          ``<tool_call>\\n{"name": .., "arguments": {..}}\\n</tool_call>``  Qwen, Hermes
``llama3``          ``{"name": .., "parameters": {..}}``, ``; `` between calls     Llama 3.1-3.3
``mistral``         ``[TOOL_CALLS][{"name": .., "arguments": {..}}, ..]``         Mistral (v3)
``mistral-args``    ``[TOOL_CALLS]name[ARGS]{..}`` per call                       Mistral (v11+)
``exloop``          ``<tool_call>{"name": .., "arguments": {..}}</tool_call>``    no tool template
==================  ===========================================================  ===============

:func:`detect_format` picks one from the chat template and the vocabulary; ``--tool-call-format``
overrides it by name through :func:`get_format`.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from types import MappingProxyType

from .base import ToolCallFormat
from .fallback import NAME as FALLBACK
from .fallback import fallback_format
from .hermes import OPEN as HERMES_OPEN
from .hermes import HermesFormat
from .llama3 import PYTHON_TAG, Llama3Format
from .mistral import ARGS as MISTRAL_ARGS
from .mistral import TRIGGER as MISTRAL_TRIGGER
from .mistral import MistralFormat

FORMATS: Mapping[str, ToolCallFormat] = MappingProxyType(
    {
        f.name: f
        for f in (
            HermesFormat(),
            Llama3Format(),
            MistralFormat(args_tag=False),
            MistralFormat(args_tag=True),
            fallback_format(),
        )
    }
)


def get_format(name: str) -> ToolCallFormat:
    """The format registered as ``name``; ValueError listing the known names otherwise."""
    try:
        return FORMATS[name]
    except KeyError:
        known = ", ".join(sorted(FORMATS))
        raise ValueError(f"Unknown tool-call format {name!r}; known formats: {known}.") from None


def detect_format(chat_template: str, special_tokens: Collection[str]) -> str:
    """The format a model writes calls in, judged by its template text and its vocabulary.

    The template is the better witness (it shows how calls are rendered back to the model);
    the vocabulary decides when the template is silent. Without either sign, the fallback.
    """
    if HERMES_OPEN in chat_template:
        return "hermes"
    if MISTRAL_TRIGGER in chat_template:
        return "mistral-args" if MISTRAL_ARGS in chat_template else "mistral"
    if PYTHON_TAG in chat_template or "ipython" in chat_template:
        return "llama3"
    if MISTRAL_TRIGGER in special_tokens:
        return "mistral-args" if MISTRAL_ARGS in special_tokens else "mistral"
    if PYTHON_TAG in special_tokens:
        return "llama3"
    if HERMES_OPEN in special_tokens:
        return "hermes"
    return FALLBACK


__all__ = ["FORMATS", "detect_format", "get_format"]
