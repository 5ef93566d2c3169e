"""Thinking blocks: how a reasoning model's chat template marks its reasoning.

Reasoning models of the ``<think>`` family (Qwen3, QwQ, DeepSeek-R1 and its distills, SmolLM3,
GLM-4.5, ...) write their reasoning between ``<think>`` and ``</think>`` before the answer. Their
templates differ in three ways, all read from the template text by :func:`detect_thinking`:

* **the switch**: a template variable that turns thinking off (Qwen3's and SmolLM3's
  ``enable_thinking``, DeepSeek-V3.1's ``thinking``). With it off, the template itself writes an
  empty block (``<think>\\n\\n</think>\\n\\n``) or a ``/no_think`` system line;
* **who opens the block**: DeepSeek-R1's template ends the generation prompt with ``<think>\\n``,
  Qwen3's leaves the model to write it. :meth:`ThinkingSyntax.prompt_state` tells them apart
  from the rendered prompt's tail;
* **earlier reasoning**: templates that read ``reasoning_content`` on assistant turns (Qwen3)
  decide themselves which turns keep it; the others get it written back into the assistant's
  content as a think block, which such templates strip or keep as they were trained to.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal, TypeAlias

OPEN = "<think>"
CLOSE = "</think>"

#: Template variables known to switch thinking on and off, in the order they are looked for.
SWITCHES = ("enable_thinking", "thinking")

#: ``open``: the prompt ends inside a think block; ``closed``: it ends right after an (empty)
#: block, so the model answers; ``none``: no block is open.
PromptState: TypeAlias = Literal["open", "closed", "none"]


@dataclass(frozen=True, slots=True)
class ThinkingSyntax:
    """How one chat template writes reasoning."""

    open: str = OPEN
    close: str = CLOSE
    #: The template variable that turns thinking on (True) and off (False), if it has one.
    switch: str | None = None
    #: Whether the template renders ``reasoning_content`` of assistant turns itself.
    reads_reasoning_content: bool = False

    def prompt_state(self, prompt: str) -> PromptState:
        """Whether the rendered ``prompt`` leaves the model inside a think block."""
        tail = prompt.rstrip()
        if tail.endswith(self.open):
            return "open"
        if tail.endswith(self.close):
            return "closed"
        return "none"

    def block(self, reasoning: str) -> str:
        """``reasoning`` as a closed think block, as the model writes one before its answer."""
        return f"{self.open}\n{reasoning.strip()}\n{self.close}\n\n"


def detect_thinking(chat_template: str) -> ThinkingSyntax | None:
    """The thinking syntax of a template that writes ``<think>`` blocks, else ``None``."""
    if OPEN not in chat_template or CLOSE not in chat_template:
        return None
    switch = next((name for name in SWITCHES if _uses_variable(chat_template, name)), None)
    return ThinkingSyntax(
        switch=switch, reads_reasoning_content="reasoning_content" in chat_template
    )


def _uses_variable(template: str, name: str) -> bool:
    """Whether a Jinja expression of the template reads the variable ``name`` (as a whole
    word, not as a message key such as ``message.thinking``)."""
    return re.search(rf"(?<![\w.'\"]){re.escape(name)}(?![\w'\"])", template) is not None
