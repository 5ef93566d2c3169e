"""One response's live record: its phase, output so far, usage and event log.

All changes go through the methods here, and each appends the matching event, so the log,
``GET`` and the final object never disagree.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

import anyio
import msgspec

from exloop.engine.protocol import Usage

from . import events as ev
from .items import Item, OutputItem
from .log import EventLog
from .resource import (
    IncompleteDetails,
    InputTokensDetails,
    OutputTokensDetails,
    Response,
    ResponseError,
    ResponseUsage,
)
from .spec import RunSpec
from .state import STATUS, TERMINAL, Phase, Transition, advance

#: Version of the stored record layout; bump it when the shape changes.
SCHEMA_VERSION = 1

#: Error code of a response whose server stopped (or died) while it ran.
SERVER_RESTARTED = "server_restarted"

#: Statuses of an output item still being produced (a web search, an MCP call...).
_UNFINISHED = frozenset({"in_progress", "searching", "calling"})


def live(factory: Callable[[], Any]) -> Any:
    """A field that exists only while the record is in this process (never stored)."""
    return field(default_factory=factory, repr=False, compare=False, metadata={"live": True})


def fixed() -> Any:
    """A field set when the record is made and never changed: stored once, not rewritten
    with every batch of progress (a large input or a long chain costs its size once)."""
    return field(metadata={"fixed": True})


@dataclass
class UsageTotals:
    """Token counts summed over every model step of a response."""

    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    #: The part of ``output_tokens`` a thinking model spent reasoning.
    reasoning_tokens: int = 0

    def add(self, usage: Usage) -> None:
        self.input_tokens += usage.prompt_tokens
        self.output_tokens += usage.completion_tokens
        self.cached_tokens += usage.cached_tokens

    def to_api(self) -> ResponseUsage:
        return ResponseUsage(
            input_tokens=self.input_tokens,
            output_tokens=self.output_tokens,
            total_tokens=self.input_tokens + self.output_tokens,
            input_tokens_details=InputTokensDetails(cached_tokens=self.cached_tokens),
            output_tokens_details=OutputTokensDetails(reasoning_tokens=self.reasoning_tokens),
        )


@dataclass
class ResponseRecord:
    """A response, live while it runs and stored afterwards.

    Every field not marked :func:`live` is stored (see :mod:`.codec`), so a field added here
    is kept across restarts and replicas without further work; those marked :func:`fixed` are
    written once, the others with every batch of progress. The event log is stored beside the
    record, event by event.
    """

    id: str
    spec: RunSpec = fixed()
    #: Items of earlier turns (previous_response_id chain), before this response's input.
    context: tuple[Item, ...] = fixed()
    #: This response's input items, each with an id.
    input_items: tuple[Item, ...] = fixed()
    created_at: int = field(default_factory=lambda: int(time.time()))
    phase: Phase = Phase.QUEUED
    output: list[OutputItem] = field(default_factory=list)
    usage: UsageTotals = field(default_factory=UsageTotals)
    completed_at: int | None = None
    incomplete: IncompleteDetails | None = None
    error: ResponseError | None = None
    #: Set when the run stopped because --max-tool-rounds was reached.
    tool_rounds_capped: bool = False
    #: Who created it: an id of the API key (a hash, never the key itself), or None on a
    #: server without keys. Only the same owner may read, follow, cancel or delete it.
    owner: str | None = None
    schema_version: int = SCHEMA_VERSION
    log: EventLog = live(EventLog)
    cancel_scope: anyio.CancelScope = live(anyio.CancelScope)
    finished: anyio.Event = live(anyio.Event)
    #: Set once the final state is in the store (at once for unstored responses), so that a
    #: client who saw the end can chain or fetch it from any replica.
    persisted: anyio.Event = live(anyio.Event)
    #: The engine's note that this response's first job is on its way
    #: (:meth:`~exloop.engine.protocol.Engine.arriving`): closed once the job is submitted.
    arrival: ExitStack = live(ExitStack)

    @property
    def status(self) -> str:
        return STATUS[self.phase]

    @property
    def done(self) -> bool:
        return self.phase in TERMINAL

    def conversation(self) -> tuple[Item, ...]:
        """Everything a follow-up turn sees: earlier turns, this input, this output."""
        return (*self.context, *self.input_items, *self.output)

    def snapshot(self) -> Response:
        """The response object as of now (partial output while it runs)."""
        spec, echo = self.spec, self.spec.echo
        metadata = dict(spec.metadata)
        if self.tool_rounds_capped:
            metadata.setdefault("exloop_max_tool_rounds_reached", "true")
        return Response(
            id=self.id,
            created_at=self.created_at,
            status=STATUS[self.phase],
            model=spec.model,
            output=list(self.output),
            tools=list(echo.tools),
            tool_choice=echo.tool_choice,
            text=echo.text,
            parallel_tool_calls=spec.tools.parallel_tool_calls,
            truncation=spec.truncation,
            temperature=spec.sampling.temperature,
            top_p=spec.sampling.top_p,
            presence_penalty=spec.sampling.presence_penalty,
            frequency_penalty=spec.sampling.frequency_penalty,
            top_logprobs=echo.top_logprobs,
            store=spec.store,
            background=spec.background,
            metadata=metadata,
            completed_at=self.completed_at,
            incomplete_details=self.incomplete,
            error=self.error,
            previous_response_id=spec.previous_response_id,
            instructions=spec.instructions,
            reasoning=echo.reasoning,
            usage=self.usage.to_api() if self.phase in TERMINAL else None,
            max_output_tokens=echo.max_output_tokens,
            max_tool_calls=spec.tools.max_tool_calls,
            safety_identifier=echo.safety_identifier,
            prompt_cache_key=echo.prompt_cache_key,
            user=echo.user,
        )

    # -- events ---------------------------------------------------------------------------

    def emit(self, make: Callable[[int], ev.StreamEvent]) -> None:
        """Append the event ``make(sequence_number)`` to the log."""
        self.log.append(make(self.log.next_sequence_number))

    def move(self, transition: Transition) -> None:
        """Change phase through the state table (raises InvalidState on an illegal move)."""
        self.phase = advance(self.phase, transition)
        if self.phase in TERMINAL:
            self.completed_at = int(time.time()) if self.phase is Phase.COMPLETED else None
            self.finished.set()

    def announce(self) -> None:
        """The opening events: created (and queued for background responses), in_progress."""
        self.emit(lambda n: ev.ResponseCreated(sequence_number=n, response=self.snapshot()))
        if self.phase is Phase.QUEUED:
            self.emit(lambda n: ev.ResponseQueued(sequence_number=n, response=self.snapshot()))

    def emit_in_progress(self) -> None:
        self.emit(lambda n: ev.ResponseInProgress(sequence_number=n, response=self.snapshot()))

    def begin(self) -> None:
        """The response's work began (the engine started one of its jobs, or it has a first
        output item): a queued (background) response starts now, with its
        ``response.in_progress``; later calls change nothing."""
        if self.phase is Phase.QUEUED:
            self.move(Transition.START)
            self.emit_in_progress()

    def add_output(self, item: OutputItem) -> None:
        """Append an output item; a queued response starts first, as output means its work
        began (tools listed or approved calls run before the engine is reached)."""
        self.begin()
        self.output.append(item)

    def complete(self) -> None:
        self.move(Transition.COMPLETE)
        self.emit(lambda n: ev.ResponseCompleted(sequence_number=n, response=self.snapshot()))

    def stop_short(self, details: IncompleteDetails) -> None:
        self.incomplete = details
        self.move(Transition.STOP_SHORT)
        self.emit(lambda n: ev.ResponseIncomplete(sequence_number=n, response=self.snapshot()))

    def cancel(self) -> None:
        self.move(Transition.CANCEL)
        self.emit(lambda n: ev.ResponseCancelled(sequence_number=n, response=self.snapshot()))

    def close_items(self) -> None:
        """Mark output items still in progress ``incomplete``: their run can no longer add to
        them (it was stopped by another process, or that process died)."""
        for index, item in enumerate(self.output):
            if getattr(item, "status", None) in _UNFINISHED:
                closed = msgspec.structs.replace(item, status="incomplete")
                self.output[index] = closed
                self.emit(
                    lambda n: ev.OutputItemDone(
                        sequence_number=n,
                        output_index=index,  # noqa: B023 (emit calls it at once)
                        item=closed,  # noqa: B023
                    )
                )

    def fail(self, code: str, message: str) -> None:
        """End failed: the stream gets OpenAI's flat ``error`` event, then ``response.failed``."""
        self.error = ResponseError(code=code, message=message)
        self.move(Transition.FAIL)
        self.emit(
            lambda n: ev.ErrorEvent(sequence_number=n, code=code, message=message, param=None)
        )
        self.emit(lambda n: ev.ResponseFailed(sequence_number=n, response=self.snapshot()))
