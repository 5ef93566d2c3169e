"""The lifecycle table: legal moves change the phase, illegal ones raise and change nothing."""

import pytest

from exloop.orchestrator.errors import InvalidState
from exloop.orchestrator.state import STATUS, TERMINAL, TRANSITIONS, Phase, Transition, advance


def test_every_phase_has_a_status_and_a_row() -> None:
    assert set(STATUS) == set(Phase) == set(TRANSITIONS)


def test_terminal_phases_accept_nothing() -> None:
    assert {Phase.COMPLETED, Phase.INCOMPLETE, Phase.CANCELLED, Phase.FAILED} == TERMINAL
    for phase in TERMINAL:
        for transition in Transition:
            with pytest.raises(InvalidState):
                advance(phase, transition)


@pytest.mark.parametrize(
    ("phase", "transition", "expected"),
    [
        (Phase.QUEUED, Transition.START, Phase.GENERATING),
        (Phase.QUEUED, Transition.CANCEL, Phase.CANCELLED),
        (Phase.GENERATING, Transition.RUN_TOOLS, Phase.RUNNING_TOOLS),
        (Phase.RUNNING_TOOLS, Transition.GENERATE, Phase.GENERATING),
        (Phase.GENERATING, Transition.COMPLETE, Phase.COMPLETED),
        (Phase.GENERATING, Transition.STOP_SHORT, Phase.INCOMPLETE),
        (Phase.RUNNING_TOOLS, Transition.FAIL, Phase.FAILED),
    ],
)
def test_legal_moves(phase: Phase, transition: Transition, expected: Phase) -> None:
    assert advance(phase, transition) is expected


@pytest.mark.parametrize(
    ("phase", "transition"),
    [
        (Phase.QUEUED, Transition.COMPLETE),
        (Phase.QUEUED, Transition.RUN_TOOLS),
        (Phase.RUNNING_TOOLS, Transition.COMPLETE),
        (Phase.GENERATING, Transition.START),
    ],
)
def test_illegal_moves_raise(phase: Phase, transition: Transition) -> None:
    with pytest.raises(InvalidState):
        advance(phase, transition)


def test_status_is_derived() -> None:
    assert STATUS[Phase.GENERATING] == STATUS[Phase.RUNNING_TOOLS] == "in_progress"
    assert STATUS[Phase.QUEUED] == "queued"
