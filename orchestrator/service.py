"""The orchestrator's public face: create, retrieve, follow, cancel and delete responses.

Every run executes in the orchestrator's task group inside its own cancel scope. ``/cancel``,
``DELETE`` and a disconnecting streaming client all reach that one scope; the engine job
inside it is cancelled before its next token and the response ends ``cancelled``.

Responses this process runs are read from memory; all others from the store, which a
:class:`~.persist.RecordWriter` keeps up to date in batches. With a store shared by several
replicas (Redis), a response another replica runs is followed live through the store, and a
cancel or delete reaches it as a signal to that replica. Responses left running by a process
that is gone are claimed at start and on every upkeep, and end ``failed`` with the code
``server_restarted``.

A response belongs to the API key that created it (its ``owner``): to any other key it is as
unknown as a missing one, whether asked for by id, as ``previous_response_id`` or through an
``item_reference`` to one of its items.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, ExitStack
from dataclasses import dataclass, replace
from types import TracebackType
from typing import TypeAlias

import anyio
import msgspec
from anyio.abc import TaskGroup

from exloop.engine.errors import (
    ConstraintFailed,
    ContextLengthExceeded,
    EngineError,
    GrammarTooComplex,
    InvalidGrammar,
)
from exloop.engine.grammar_sandbox import CompileBudget
from exloop.engine.protocol import (
    Chat,
    Engine,
    EngineStats,
    GenerationRequest,
    Grammar,
    ModelInfo,
    ToolSpec,
)
from exloop.engine.tool_calls import get_format
from exloop.engine.tool_calls.base import ToolCallFormat

from .builtin import BuiltinFactory, BuiltinRegistry
from .codec import RecordCodec
from .conversation import (
    ModelView,
    last_user_text,
    model_view,
    resolve_references,
    to_messages,
)
from .errors import InvalidRequest, InvalidState, ResponseNotFound, StoreError
from .events import TERMINAL_EVENTS, StreamEvent
from .items import (
    AdditionalTools,
    Compaction,
    CustomToolCall,
    CustomToolCallOutput,
    FunctionCall,
    FunctionCallOutput,
    Item,
    McpApprovalResponse,
    Message,
    Reasoning,
    ToolSearchCall,
    ToolSearchOutput,
    new_id,
)
from .loop import ToolLoop
from .mcp import McpSettings, McpToolset, approval_requests
from .memory_store import MemoryStore
from .output import OutputWriter
from .persist import RecordWriter
from .record import SERVER_RESTARTED, ResponseRecord
from .resource import Response
from .sealing import KEY_BYTES, Sealer
from .spec import CompactionPolicy, RunSpec
from .state import Phase, Transition
from .store import ResponseStore, Stored
from .telemetry import NoTelemetry, RunMeter, Telemetry
from .tool_defs import ToolSearchTool
from .tool_search import ToolSearch
from .toolset import TOOL_SEARCH, Entry, ToolCatalog, entries, grammar_field, loaded_entries

log = logging.getLogger("exloop.orchestrator")

_ID_PREFIX: dict[type, str] = {
    Message: "msg",
    FunctionCall: "fc",
    FunctionCallOutput: "fco",
    CustomToolCall: "ctc",
    CustomToolCallOutput: "ctco",
    ToolSearchCall: "tsc",
    ToolSearchOutput: "tso",
    AdditionalTools: "at",
    Reasoning: "rs",
    McpApprovalResponse: "mcpa",
    Compaction: "cmp",
}


class RunHandle:
    """A response being run, as its creator sees it (stored or not)."""

    def __init__(self, record: ResponseRecord) -> None:
        self._record = record

    @property
    def id(self) -> str:
        return self._record.id

    @property
    def response(self) -> Response:
        return self._record.snapshot()

    async def wait(self) -> Response:
        await self._record.finished.wait()
        await self._record.persisted.wait()
        return self._record.snapshot()

    def events(self, *, starting_after: int | None = None) -> AsyncIterator[StreamEvent]:
        return _live_events(self._record, starting_after)


async def _live_events(
    record: ResponseRecord, starting_after: int | None
) -> AsyncIterator[StreamEvent]:
    """The record's events as they come; the end only once it is stored."""
    async for event in record.log.follow(starting_after):
        if isinstance(event, TERMINAL_EVENTS):
            await record.persisted.wait()
        yield event


@dataclass(frozen=True, slots=True)
class RunCounts:
    """How many runs wait to start and run now, and how many responses are stored."""

    queued: int
    running: int
    stored: int


@dataclass(frozen=True, slots=True)
class _Checked:
    """A request checked against the current state (all but its length), ready to run."""

    context: tuple[Item, ...]
    inputs: tuple[Item, ...]
    builtins: BuiltinRegistry
    #: The conversation as the model will read it.
    view: ModelView
    loop: ToolLoop
    #: The client tools the conversation defines, loaded or deferred.
    catalog: ToolCatalog


@dataclass(frozen=True, slots=True)
class CompactionRun:
    """A compaction being run: its handle, and the user messages its item follows."""

    handle: RunHandle
    kept: tuple[Message, ...]


#: What a run does with its record, writer and conversation: ToolLoop.run or .compact.
_Work: TypeAlias = Callable[[ResponseRecord, OutputWriter, ModelView], Awaitable[None]]


class Orchestrator:
    """Runs responses on one engine. Use as an async context manager, inside the store's
    (the caller opens and closes the store)."""

    def __init__(
        self,
        engine: Engine,
        *,
        model_name: str,
        max_tool_rounds: int = 8,
        store: ResponseStore | None = None,
        builtins: BuiltinFactory | None = None,
        tool_format: ToolCallFormat | None = None,
        mcp: McpSettings | None = None,
        grammar_timeout: float | None = None,
        flush_interval: float = 0.05,
        sealer: Sealer | None = None,
        thinking_constraint: Grammar | None = None,
        telemetry: Telemetry | None = None,
    ) -> None:
        """``sealer`` seals reasoning and compaction for clients (a key of this process's own
        when not given); ``thinking_constraint`` is a test hook: a grammar thinking models
        think under; ``telemetry`` hears of every run's tokens, tool calls and end."""
        self._engine = engine
        #: Seconds all of one request's grammars may take to compile (each one's own budget
        #: is the engine's).
        self._grammar_timeout = grammar_timeout or CompileBudget().timeout
        self.model_name = model_name
        self._max_tool_rounds = max_tool_rounds
        self._store: ResponseStore = store if store is not None else MemoryStore()
        self._builtins = builtins
        self._format = tool_format or get_format(engine.info.tool_call_format)
        self._mcp = mcp
        self.sealer = sealer or Sealer(os.urandom(KEY_BYTES))
        self._thinking_constraint = thinking_constraint
        self._codec = RecordCodec()
        self._telemetry: Telemetry = telemetry if telemetry is not None else NoTelemetry()
        #: Responses in the store when last counted (see :meth:`count_stored`).
        self._stored_count = 0
        #: Records of this process: runs in flight (stored or not, so a disconnect can abort
        #: an unstored run), and finished ones until the store has them.
        self._local: dict[str, ResponseRecord] = {}
        self._writer = RecordWriter(
            self._store,
            self._codec,
            interval=flush_interval,
            on_released=self._released,
        )
        self._tg: TaskGroup | None = None
        self._exit = AsyncExitStack()

    @property
    def model_info(self) -> ModelInfo:
        """The loaded model, as its engine describes it."""
        return self._engine.info

    async def __aenter__(self) -> Orchestrator:
        async with AsyncExitStack() as stack:
            await self._end_orphans()
            self._tg = await stack.enter_async_context(anyio.create_task_group())
            stack.push_async_callback(self._stop_all)
            self._tg.start_soon(self._writer.run)
            self._tg.start_soon(self._upkeep)
            self._tg.start_soon(self._listen)
            self._exit = stack.pop_all()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        return await self._exit.__aexit__(exc_type, exc, tb)

    def _released(self, record: ResponseRecord) -> None:
        self._local.pop(record.id, None)

    async def drain(self, grace: float) -> None:
        """Let running responses finish for up to ``grace`` seconds (a graceful shutdown);
        leaving the context then cancels the rest."""
        running = [record for record in self._local.values() if not record.done]
        if running:
            log.info("waiting up to %gs for %d running responses", grace, len(running))
        with anyio.move_on_after(grace):
            for record in running:
                await record.finished.wait()

    async def _stop_all(self) -> None:
        """Cancel what still runs, store the outcome, stop the background tasks."""
        assert self._tg is not None
        with anyio.CancelScope(shield=True):
            running = [record for record in self._local.values() if not record.done]
            for record in running:
                record.cancel_scope.cancel()
            for record in running:
                await record.finished.wait()
            await self._writer.close()
        self._tg.cancel_scope.cancel()

    # -- upkeep ---------------------------------------------------------------------------

    async def _upkeep(self) -> None:
        """Heartbeat and retention, and ending responses of replicas that are gone."""
        while True:
            await anyio.sleep(self._store.upkeep_interval)
            try:
                await self._store.upkeep()
                await self._end_orphans()
                await self.count_stored()
            except StoreError as exc:
                log.warning("store upkeep failed: %s", exc.message)

    async def _end_orphans(self) -> None:
        for stored in await self._store.claim_orphans():
            record = self._decode(stored)
            log.warning(
                "response %s was left %s by a server that stopped: it ends failed",
                record.id,
                record.status,
            )
            record.close_items()
            record.fail(
                SERVER_RESTARTED,
                "The server running this response stopped before it finished. Create it again.",
            )
            await self._adopt(record, stored)

    async def _adopt(self, record: ResponseRecord, stored: Stored) -> None:
        """Write a record taken over from the store, ended here."""
        self._local[record.id] = record
        try:
            await self._writer.add(record, stored_events=stored.events)
        except BaseException:
            self._local.pop(record.id, None)
            raise

    async def _listen(self) -> None:
        """Stop runs that other replicas were asked to cancel or delete."""
        while True:
            try:
                async for response_id in self._store.signals():
                    record = self._local.get(response_id)
                    if record is not None:
                        record.cancel_scope.cancel()
            except StoreError as exc:
                log.warning("listening for cancels failed (retrying): %s", exc.message)
                await anyio.sleep(1)

    def engine_stats(self) -> EngineStats:
        """How busy the engine is (jobs running and queued, cache use)."""
        return self._engine.stats()

    # -- create ---------------------------------------------------------------------------

    def counts(self) -> RunCounts:
        """Runs queued and running now, and the responses stored when last counted (read at
        each metrics scrape, which must not wait on the store)."""
        running = [record for record in self._local.values() if not record.done]
        queued = sum(1 for record in running if record.phase is Phase.QUEUED)
        return RunCounts(queued, len(running) - queued, self._stored_count)

    async def count_stored(self) -> int:
        """Count the responses in the store now (:meth:`counts` reports the last count)."""
        self._stored_count = await self._store.count()
        return self._stored_count

    async def create(self, spec: RunSpec, *, owner: str | None = None) -> RunHandle:
        """Validate ``spec`` against the current state and start running it for ``owner``
        (an API key's id, or None on a server without keys).

        Everything that can be refused is refused here, before any event exists.
        """
        record, _ = await self._begin(spec, owner, lambda loop: loop.run)
        return RunHandle(record)

    async def compact(self, spec: RunSpec, *, owner: str | None = None) -> CompactionRun:
        """Validate ``spec`` and start compacting its conversation (``/v1/responses/compact``)
        for ``owner``: the run's output is the compaction item; the user messages it follows
        come along."""
        compacting = replace(spec, compaction=CompactionPolicy())
        record, view = await self._begin(compacting, owner, lambda loop: loop.compact)
        kept = tuple(
            item for item in view.items if isinstance(item, Message) and item.role == "user"
        )
        return CompactionRun(RunHandle(record), kept)

    async def count_input_tokens(self, spec: RunSpec, *, owner: str | None = None) -> int:
        """The tokens the first step of ``spec``'s run would prompt the model with (earlier
        turns, instructions, input and the tools offered), as its template renders them;
        refuses what :meth:`create` refuses, except a prompt too long for the context."""
        checked = await self._check(spec, owner)
        conversation = (*checked.context, *checked.inputs)
        chat = checked.loop.first_chat(spec, checked.view, conversation)
        return await self._engine.count_tokens(chat)

    async def _begin(
        self, spec: RunSpec, owner: str | None, work: Callable[[ToolLoop], _Work]
    ) -> tuple[ResponseRecord, ModelView]:
        """Check ``spec`` and start its run doing ``work``.

        From the start of the checks until the run submits its first job (or ends), the
        engine knows that a job is on its way (:meth:`Engine.arriving`), so that a burst of
        requests starts generating together rather than behind the first one's prompt."""
        meter = RunMeter(self._telemetry)
        with ExitStack() as arriving:
            arriving.enter_context(self._engine.arriving())
            record, loop, view = await self._prepare(spec, owner)
            record.arrival.push(arriving.pop_all())
        try:
            await self._start(record, work(loop), view, meter)
        except BaseException:
            record.arrival.close()
            raise
        return record, view

    async def _prepare(
        self, spec: RunSpec, owner: str | None
    ) -> tuple[ResponseRecord, ToolLoop, ModelView]:
        if self._tg is None:
            raise RuntimeError("the orchestrator is not running (use `async with`)")
        checked = await self._check(spec, owner)
        await self._check_context(spec, checked.view, checked.catalog, checked.builtins)
        record = ResponseRecord(
            id=new_id("resp"),
            spec=spec,
            context=checked.context,
            input_items=checked.inputs,
            owner=owner,
        )
        return record, checked.loop, checked.view

    async def _check(self, spec: RunSpec, owner: str | None) -> _Checked:
        """Every check of ``spec`` that needs no tokenizing, for ``owner``: what it chains on
        and refers to must be ``owner``'s."""
        context: tuple[Item, ...] = ()
        if spec.previous_response_id is not None:
            previous, _ = await self._stored(
                spec.previous_response_id, owner, "Previous response", "previous_response_id"
            )
            if not previous.done:
                raise InvalidRequest(
                    f"Previous response '{previous.id}' is still {previous.status}.",
                    param="previous_response_id",
                )
            context = previous.conversation()

        async def find(item_id: str) -> Item | None:
            return await self._find_item(item_id, owner)

        inputs = tuple(_as_stored(item) for item in await resolve_references(spec.input, find))
        web = self._builtins(spec) if self._builtins else []
        if spec.tools.web_search is not None and not web:
            raise InvalidRequest("Web search is not enabled on this server.", param="tools")
        search = _server_search(spec)
        taken = {tool.spec.name for tool in web} | ({TOOL_SEARCH} if search else set())
        _check_names(spec, inputs, taken)
        catalog = await self._check_grammars(spec, context, inputs)
        question = last_user_text(inputs)
        searching = [ToolSearch(search, catalog.deferred, question)] if search else []
        builtins = BuiltinRegistry([*web, *searching])
        self._check_mcp(spec, builtins, (*context, *inputs))
        view = model_view(context, inputs, self.sealer)
        mcp = McpToolset(self._mcp, spec.tools.mcp, self._enforceable)
        loop = ToolLoop(
            self._engine,
            self._format,
            builtins,
            mcp,
            max_tool_rounds=self._max_tool_rounds,
            thinking_constraint=self._thinking_constraint,
            catalog=catalog,
        )
        return _Checked(context, inputs, builtins, view, loop, catalog)

    async def _start(
        self, record: ResponseRecord, work: _Work, view: ModelView, meter: RunMeter
    ) -> None:
        assert self._tg is not None
        if not record.spec.background:
            record.move(Transition.START)
        record.announce()
        self._local[record.id] = record
        if record.spec.store:
            try:
                await self._writer.add(record)
            except BaseException:
                self._local.pop(record.id, None)
                raise
        else:
            record.persisted.set()
        self._tg.start_soon(self._run, record, work, view, meter)

    def _check_mcp(
        self, spec: RunSpec, builtins: BuiltinRegistry, conversation: tuple[Item, ...]
    ) -> None:
        """MCP tools need the server's MCP support; an approval must answer a request of the
        conversation whose server is among this request's tools; ``tool_choice: required``
        needs some tool (the server's own MCP tools count)."""
        configured = self._mcp.configured if self._mcp is not None else None
        if spec.tools.mcp and self._mcp is None:
            raise InvalidRequest("MCP tools are not enabled on this server.", param="tools")
        requests = approval_requests(conversation)
        labels = {server.label for server in spec.tools.mcp}
        for i, item in enumerate(spec.input):
            if not isinstance(item, McpApprovalResponse):
                continue
            request = requests.get(item.approval_request_id)
            if request is None:
                raise InvalidRequest(
                    f"No mcp_approval_request with id '{item.approval_request_id}' in the "
                    "conversation.",
                    param=f"input[{i}].approval_request_id",
                )
            if item.approve and request.server_label not in labels:
                raise InvalidRequest(
                    f"The approved call runs on the MCP server '{request.server_label}', which "
                    "is not among this request's tools; send its mcp tool again.",
                    param="tools",
                )
        offered = spec.tools.tools or builtins or spec.tools.mcp or bool(configured)
        if spec.tools.mode == "required" and not offered and spec.tools.web_search is None:
            raise InvalidRequest(
                "tool_choice 'required' needs at least one tool.", param="tool_choice"
            )

    async def _enforceable(self, tool: ToolSpec) -> bool:
        """Whether the call grammar can enforce ``tool``'s schema (else it is not strict)."""
        return await self._call_grammar_error((tool,)) is None

    async def _check_grammars(
        self, spec: RunSpec, context: tuple[Item, ...], inputs: tuple[Item, ...]
    ) -> ToolCatalog:
        """Check the sampling settings and compile the output constraint and the client
        tools' call grammar now, so a schema or grammar llguidance cannot use is a 400 naming
        its field rather than a failed response later; returns the response's tool catalog.
        All of a request's grammars share one deadline."""
        stage = "grammar"  # the engine's name for the output constraint
        catalog: ToolCatalog | None = None
        conversation = [*loaded_entries(context, None), *loaded_entries(inputs)]
        with anyio.move_on_after(self._grammar_timeout) as deadline:
            await self._engine.check(
                GenerationRequest(
                    prompt=Chat(()), sampling=spec.sampling, constraint=spec.constraint
                )
            )
            stage = "tools"
            checking = self._call_grammar_error if spec.tools.mode != "none" else None
            catalog = await ToolCatalog.build(spec.tools.tools, conversation, checking)
        if deadline.cancelled_caught or catalog is None:
            if stage == "tools":
                stage = grammar_field(spec.tools.tools, conversation)
            raise GrammarTooComplex(
                f"The request's schemas are too complex: compiling them took longer than "
                f"{self._grammar_timeout:g} s. Simplify them or send fewer tools.",
                param=stage,
            )
        return catalog

    async def _call_grammar_error(self, tools: tuple[ToolSpec, ...]) -> InvalidGrammar | None:
        """Why the call grammar of ``tools`` does not compile (None when it does)."""
        grammar = self._format.call_grammar(tools, include_trigger=True)
        try:
            await self._engine.check(GenerationRequest(prompt=Chat(()), constraint=grammar))
        except InvalidGrammar as exc:
            return exc
        return None

    async def _check_context(
        self,
        spec: RunSpec,
        view: ModelView,
        catalog: ToolCatalog,
        builtins: BuiltinRegistry,
    ) -> None:
        """The input, with the definitions of every tool the first step may show, must leave
        room for the output (the steps count the same way)."""
        if spec.truncation == "auto" or spec.compaction is not None:
            return  # the loop drops the oldest turns, or compacts them, as needed
        tools = (*catalog.offered(view.items).specs, *builtins.specs)
        messages = to_messages(view.items, spec.instructions, spec.reasoning.context, view.summary)
        tokens = await self._engine.count_tokens(Chat(tuple(messages), tools))
        limit = self._engine.info.context_length
        if tokens + (spec.sampling.max_tokens or 1) > limit:
            raise ContextLengthExceeded(
                f"The input takes {tokens} tokens and the requested output "
                f"{spec.sampling.max_tokens or 1}, more than the model's context of {limit} "
                "tokens. Shorten the input or set truncation to 'auto'.",
                param="input",
            )

    async def _run(
        self, record: ResponseRecord, work: _Work, view: ModelView, meter: RunMeter
    ) -> None:
        writer = OutputWriter(
            record, self.sealer, seal_reasoning=record.spec.reasoning.encrypted, meter=meter
        )
        try:
            with record.cancel_scope:
                try:
                    if record.phase is Phase.GENERATING:
                        record.emit_in_progress()
                    # A background response stays queued until the engine begins its first
                    # job (ModelStep calls record.begin()).
                    await work(record, writer, view)
                except (ConstraintFailed, InvalidGrammar) as exc:
                    # The client's grammar gave out while generating: its fault, not ours.
                    log.info("response %s failed: %s", record.id, exc)
                    writer.close_all("incomplete")
                    record.fail("invalid_prompt", exc.message)
                except EngineError as exc:
                    log.warning("response %s failed: %s", record.id, exc)
                    writer.close_all("incomplete")
                    record.fail("server_error", exc.message)
                except Exception:
                    log.exception("response %s failed", record.id)
                    writer.close_all("incomplete")
                    record.fail("server_error", "The model failed while generating the response.")
        finally:
            record.arrival.close()  # a run that ends before its first job
            if not record.done:
                # Cancelled by /cancel, DELETE, a disconnect, another replica or the server
                # shutting down.
                writer.close_all("incomplete")
                record.cancel()
            self._telemetry.run_finished(record, meter.elapsed)
            if record.spec.store:
                self._writer.finished()  # the writer releases it once stored
            else:
                self._local.pop(record.id, None)

    # -- the stored responses -------------------------------------------------------------

    async def _find(self, response_id: str) -> tuple[ResponseRecord, Stored | None] | None:
        """The response and, unless it is this process's own, how the store holds it."""
        record = self._local.get(response_id)
        if record is not None:
            return (record, None) if record.spec.store else None
        stored = await self._store.load(response_id)
        if stored is None:
            return None
        return self._decode(stored), stored

    def _decode(self, stored: Stored) -> ResponseRecord:
        return self._codec.decode(stored.record, stored.fixed, events=stored.events)

    async def _stored(
        self,
        response_id: str,
        owner: str | None,
        what: str = "Response",
        param: str = "response_id",
    ) -> tuple[ResponseRecord, Stored | None]:
        """The stored response, if ``owner`` created it: another key's response is as unknown
        as a missing one (404), so ids cannot be probed across keys."""
        found = await self._find(response_id)
        if found is None or found[0].owner != owner:
            raise ResponseNotFound(f"{what} with id '{response_id}' not found.", param=param)
        return found

    async def _find_item(self, item_id: str, owner: str | None) -> Item | None:
        """An item of a stored response that ``owner`` created."""
        for record in self._local.values():
            mine = record.spec.store and record.owner == owner
            if mine and (item := _item(record, item_id)) is not None:
                return item
        response_id = await self._store.response_of_item(item_id)
        found = await self._find(response_id) if response_id else None
        if found is None or found[0].owner != owner:
            return None
        return _item(found[0], item_id)

    async def retrieve(self, response_id: str, *, owner: str | None = None) -> Response:
        record, _ = await self._stored(response_id, owner)
        return record.snapshot()

    async def subscribe(
        self,
        response_id: str,
        *,
        starting_after: int | None = None,
        owner: str | None = None,
    ) -> AsyncIterator[StreamEvent]:
        record, stored = await self._stored(response_id, owner)
        if stored is None or stored.replica is None:
            # Here, or finished: the events there are all there will be.
            count = record.log.next_sequence_number
            if starting_after is not None and not 0 <= starting_after <= count:
                raise InvalidRequest(
                    f"starting_after must be between 0 and {count}.", param="starting_after"
                )
        elif starting_after is not None and starting_after < 0:
            raise InvalidRequest("starting_after must be at least 0.", param="starting_after")
        if stored is None:
            return _live_events(record, starting_after)
        return self._stored_events(response_id, starting_after)

    async def _stored_events(
        self, response_id: str, starting_after: int | None
    ) -> AsyncIterator[StreamEvent]:
        """Events from the store, live while another replica runs the response."""
        after = -1 if starting_after is None else starting_after
        async for data in self._store.events(response_id, after):
            event = self._codec.decode_event(data)
            yield event
            if isinstance(event, TERMINAL_EVENTS):
                return

    async def input_items(self, response_id: str, *, owner: str | None = None) -> list[Item]:
        record, _ = await self._stored(response_id, owner)
        return list(record.input_items)

    async def cancel(self, response_id: str, *, owner: str | None = None) -> Response:
        """Cancel a background response; a cancelled one is returned as it is."""
        record, stored = await self._stored(response_id, owner)
        if not record.spec.background:
            raise InvalidState(
                "Only responses created with background=true can be cancelled.", param="response_id"
            )
        if record.phase is Phase.CANCELLED:
            return record.snapshot()
        if record.done:
            article = "an" if record.status[0] in "aeiou" else "a"
            raise InvalidState(
                f"Cannot cancel {article} {record.status} response.", param="response_id"
            )
        if stored is None:
            await self._stop(record)
            return record.snapshot()
        return await self._cancel_elsewhere(response_id, stored, owner)

    async def _cancel_elsewhere(
        self, response_id: str, stored: Stored, owner: str | None
    ) -> Response:
        """Cancel a response another replica runs: signal it and follow the response to its
        end; when that replica is gone, end the response here."""
        replica = stored.replica or ""
        claimed = await self._store.claim(response_id, replica)
        if claimed is not None:
            record = self._decode(claimed)
            record.close_items()
            record.cancel()
            await self._adopt(record, claimed)
            return record.snapshot()
        await self._store.signal(replica, response_id)
        async for _ in self._stored_events(response_id, stored.events - 1):
            pass
        record, _ = await self._stored(response_id, owner)
        return record.snapshot()

    async def abort(self, response_id: str) -> None:
        """A streaming client went away: stop its run, whatever its mode."""
        record = self._local.get(response_id)
        if record is not None and not record.done:
            await self._stop(record)

    async def delete(self, response_id: str, *, owner: str | None = None) -> None:
        """Delete a stored response, cancelling it first if it still runs (here or on
        another replica)."""
        record, stored = await self._stored(response_id, owner)
        if stored is None:
            await self._writer.forget(response_id)
            await self._store.delete(response_id)
            if not record.done:
                await self._stop(record)
            return
        removed = await self._store.delete(response_id)
        if removed is not None and removed.replica not in (None, self._store.replica):
            await self._store.signal(removed.replica, response_id)

    @staticmethod
    async def _stop(record: ResponseRecord) -> None:
        record.cancel_scope.cancel()
        await record.finished.wait()


def _item(record: ResponseRecord, item_id: str) -> Item | None:
    for item in (*record.input_items, *record.output):
        if getattr(item, "id", None) == item_id:
            return item
    return None


def _as_stored(item: Item) -> Item:
    """Input items are stored with an id (and a status, where the item has one), as OpenAI
    lists them under ``input_items``; what the client gave is kept."""
    prefix = _ID_PREFIX.get(type(item))
    if prefix is None:
        return item
    changes: dict[str, object] = {"id": getattr(item, "id", None) or new_id(prefix)}
    if "status" in item.__struct_fields__:
        changes["status"] = getattr(item, "status", None) or "completed"
    return msgspec.structs.replace(item, **changes)


def _server_search(spec: RunSpec) -> ToolSearchTool | None:
    """The request's ``tool_search`` tool when the server runs the search."""
    for tool in spec.tools.tools:
        if isinstance(tool, ToolSearchTool) and tool.execution != "client":
            return tool
    return None


def _check_names(spec: RunSpec, inputs: tuple[Item, ...], taken: set[str]) -> None:
    """Refuse client tools named like a built-in tool of this request."""
    defined: list[Entry] = [*entries(spec.tools.tools, "tools"), *loaded_entries(inputs)]
    for entry in defined:
        if entry.target.kind != "tool_search" and entry.spec.name in taken:
            raise InvalidRequest(
                f"The tool name '{entry.spec.name}' is taken by a built-in tool of this "
                "request (web search or tool search); rename the tool.",
                param=f"{entry.param}.name" if entry.param else "tools",
            )
