"""Reasoning for models that think: what ``reasoning.effort`` means, and routing thinking text.

``effort`` maps to the template's thinking switch and to a thinking budget in tokens. When
the budget runs out, the think block is closed for the model (as Qwen3's authors recommend
for budget forcing) and it answers from what it has thought; the budget also never exceeds
what ``max_output_tokens`` leaves.

=========  ========  ===============
effort     thinking  budget (tokens)
=========  ========  ===============
none       off       0
minimal    on        128
low        on        1,024
medium     on        4,096 (also when ``effort`` is not given)
high       on        16,384
xhigh      on        32,768
max        on        no cap
=========  ========  ===============

No summaries are generated: a reasoning item carries the model's whole thinking as
``reasoning_text`` content and an empty ``summary``, whatever ``reasoning.summary`` asks (a
summary would take another generation and could misstate what the model thought).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final

from exloop.engine.protocol import Grammar
from exloop.engine.reasoning import ThinkingSyntax

from .resource import ReasoningEffort
from .spec import ReasoningOptions

#: Thinking budget per effort; ``None``: no cap besides ``max_output_tokens``.
BUDGETS: Final[MappingProxyType[ReasoningEffort, int | None]] = MappingProxyType(
    {
        "none": 0,
        "minimal": 128,
        "low": 1024,
        "medium": 4096,
        "high": 16384,
        "xhigh": 32768,
        "max": None,
    }
)
DEFAULT_EFFORT: Final[ReasoningEffort] = "medium"


@dataclass(frozen=True, slots=True)
class ThinkingPlan:
    """How one response's steps think, for a model whose template has ``syntax``."""

    syntax: ThinkingSyntax
    enabled: bool
    #: Tokens one step may spend thinking; ``None``: no cap.
    budget: int | None
    #: A grammar the thinking is generated under (the server's test hook; normally None).
    constraint: Grammar | None = None


def thinking_plan(
    syntax: ThinkingSyntax | None,
    options: ReasoningOptions,
    constraint: Grammar | None = None,
) -> ThinkingPlan | None:
    """The plan for a model with thinking ``syntax``; ``None`` for a model that does not
    think (whatever the request asks)."""
    if syntax is None:
        return None
    budget = BUDGETS[options.effort or DEFAULT_EFFORT]
    return ThinkingPlan(syntax, enabled=budget != 0, budget=budget, constraint=constraint)


class ThoughtSink:
    """Routes thinking text to the reasoning item as it streams: whitespace at its start is
    dropped and whitespace at its end held back, so the item reads as the trimmed thought
    while ``raw`` keeps exactly what the model wrote (to continue the turn from)."""

    def __init__(self, write: Callable[[str], None]) -> None:
        self._write = write
        self.raw = ""
        self._held = ""
        self._started = False

    def __call__(self, text: str, logprobs: object = None) -> None:
        self.raw += text
        if not self._started:
            text = text.lstrip()
            if not text:
                return
            self._started = True
        text = self._held + text
        body = text.rstrip()
        self._held = text[len(body) :]
        self._write(body)
