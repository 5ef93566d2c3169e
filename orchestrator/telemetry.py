"""What the orchestrator reports about its runs, for whoever measures them.

The orchestrator knows nothing of Prometheus or logs: it calls a :class:`Telemetry` at the
moments an operator cares about (a run's first token and the gaps between tokens, a tool call
ending, a run finishing), and the server implements it. Counts
that are states rather than events (runs queued and running, responses stored) are read when
asked for, from :meth:`Orchestrator.counts <exloop.orchestrator.service.Orchestrator.counts>`,
so nothing has to keep a second tally in step.

A run's timing lives in a :class:`RunMeter`, one per run: its first token against the moment
the run was accepted (time to first token), and each later token against the one before it
within the same engine job (inter-token latency; a tool round between two jobs is no token gap).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from .record import ResponseRecord


class Telemetry(Protocol):
    """Receives the orchestrator's measurements; every method must be cheap and not raise."""

    def first_token(self, seconds: float) -> None:
        """A response's first output token came ``seconds`` after the run was accepted."""

    def inter_token(self, seconds: float, tokens: int) -> None:
        """``tokens`` more output tokens arrived, ``seconds`` apart each (on average)."""

    def tool_call(self, tool: str, outcome: str) -> None:
        """A tool call item ended: ``tool`` is a built-in tool's name, ``function`` or
        ``custom`` (a client function or custom tool) or ``tool_search`` (client or server
        run), ``outcome`` the item's final status."""

    def run_finished(self, record: ResponseRecord, seconds: float) -> None:
        """A run ended (any terminal status) after ``seconds``; its usage is final."""


class NoTelemetry:
    """Measures nothing: the default when no one listens."""

    def first_token(self, seconds: float) -> None:
        pass

    def inter_token(self, seconds: float, tokens: int) -> None:
        pass

    def tool_call(self, tool: str, outcome: str) -> None:
        pass

    def run_finished(self, record: ResponseRecord, seconds: float) -> None:
        pass


class RunMeter:
    """The token timing of one run."""

    __slots__ = ("_last", "_seen_first", "_started", "telemetry")

    def __init__(self, telemetry: Telemetry) -> None:
        self.telemetry = telemetry
        self._started = time.perf_counter()
        self._seen_first = False
        self._last: float | None = None

    @property
    def elapsed(self) -> float:
        """Seconds since the run was accepted."""
        return time.perf_counter() - self._started

    def job_started(self) -> None:
        """A new engine job begins: its first token is not measured against the last job's."""
        self._last = None

    def tokens(self, count: int) -> None:
        """``count`` output tokens arrived now."""
        if count <= 0:
            return
        now = time.perf_counter()
        if not self._seen_first:
            self._seen_first = True
            self.telemetry.first_token(now - self._started)
        elif self._last is not None:
            self.telemetry.inter_token((now - self._last) / count, count)
        self._last = now


class Telemetries:
    """Several telemetries as one (say, metrics and a log): each hears every call."""

    def __init__(self, *parts: Telemetry) -> None:
        self._parts = parts

    def first_token(self, seconds: float) -> None:
        for part in self._parts:
            part.first_token(seconds)

    def inter_token(self, seconds: float, tokens: int) -> None:
        for part in self._parts:
            part.inter_token(seconds, tokens)

    def tool_call(self, tool: str, outcome: str) -> None:
        for part in self._parts:
            part.tool_call(tool, outcome)

    def run_finished(self, record: ResponseRecord, seconds: float) -> None:
        for part in self._parts:
            part.run_finished(record, seconds)
