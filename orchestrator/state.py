"""The response lifecycle as one table.

Every phase change goes through :func:`advance`, which refuses moves the table does not list
and changes nothing when it does. The public ``status`` is derived from the phase in
:data:`STATUS`; nothing else assigns it.

    QUEUED ──start──▶ GENERATING ◀──generate── RUNNING_TOOLS
       │                 │   └──────run_tools──────▶ │
       │                 ├─complete─▶ COMPLETED       │
       │                 ├─stop_short─▶ INCOMPLETE    │
       └──cancel / fail──┴─cancel / fail─────────────┴──▶ CANCELLED / FAILED
"""

from __future__ import annotations

import enum
from types import MappingProxyType
from typing import Final

from .errors import InvalidState
from .resource import ResponseStatus


class Phase(enum.Enum):
    QUEUED = "queued"
    GENERATING = "generating"
    RUNNING_TOOLS = "running_tools"
    COMPLETED = "completed"
    INCOMPLETE = "incomplete"
    CANCELLED = "cancelled"
    FAILED = "failed"


class Transition(enum.Enum):
    START = "start"
    RUN_TOOLS = "run_tools"
    GENERATE = "generate"
    COMPLETE = "complete"
    STOP_SHORT = "stop_short"
    CANCEL = "cancel"
    FAIL = "fail"


_T = Transition
TRANSITIONS: Final = MappingProxyType(
    {
        Phase.QUEUED: {
            _T.START: Phase.GENERATING,
            _T.CANCEL: Phase.CANCELLED,
            _T.FAIL: Phase.FAILED,
        },
        Phase.GENERATING: {
            _T.RUN_TOOLS: Phase.RUNNING_TOOLS,
            _T.COMPLETE: Phase.COMPLETED,
            _T.STOP_SHORT: Phase.INCOMPLETE,
            _T.CANCEL: Phase.CANCELLED,
            _T.FAIL: Phase.FAILED,
        },
        Phase.RUNNING_TOOLS: {
            _T.GENERATE: Phase.GENERATING,
            _T.CANCEL: Phase.CANCELLED,
            _T.FAIL: Phase.FAILED,
        },
        Phase.COMPLETED: {},
        Phase.INCOMPLETE: {},
        Phase.CANCELLED: {},
        Phase.FAILED: {},
    }
)

STATUS: Final[MappingProxyType[Phase, ResponseStatus]] = MappingProxyType(
    {
        Phase.QUEUED: "queued",
        Phase.GENERATING: "in_progress",
        Phase.RUNNING_TOOLS: "in_progress",
        Phase.COMPLETED: "completed",
        Phase.INCOMPLETE: "incomplete",
        Phase.CANCELLED: "cancelled",
        Phase.FAILED: "failed",
    }
)

TERMINAL: Final = frozenset(phase for phase, moves in TRANSITIONS.items() if not moves)


def advance(phase: Phase, transition: Transition) -> Phase:
    """The phase after ``transition``; :class:`InvalidState` if the table has no such move."""
    try:
        return TRANSITIONS[phase][transition]
    except KeyError:
        raise InvalidState(
            f"A response that is {STATUS[phase]} cannot {transition.value.replace('_', ' ')}."
        ) from None
