"""The orchestrator's public face: create, retrieve, follow, cancel and delete responses.

Every run executes in the orchestrator's task group inside its own cancel scope. ``/cancel``,
``DELETE`` and a disconnecting streaming client all reach that one scope; the engine job
inside it is cancelled before its next token and the response ends ``cancelled``.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from types import TracebackType

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
from exloop.engine.protocol import Chat, Engine, GenerationRequest, ToolSpec
from exloop.engine.tool_calls import get_format
from exloop.engine.tool_calls.base import ToolCallFormat

from .builtin import BuiltinFactory, BuiltinRegistry
from .conversation import resolve_references
from .errors import InvalidRequest, InvalidState, ResponseNotFound
from .events import StreamEvent
from .items import (
    FunctionCall,
    FunctionCallOutput,
    Item,
    McpApprovalResponse,
    Message,
    Reasoning,
    new_id,
)
from .loop import ToolLoop
from .mcp import McpSettings, McpToolset, approval_requests
from .output import OutputWriter
from .record import ResponseRecord
from .resource import FunctionTool, Response
from .spec import RunSpec
from .state import Phase, Transition
from .store import MemoryStore, ResponseStore
from .telemetry import NoTelemetry, RunMeter, Telemetry

log = logging.getLogger("exloop.orchestrator")

_ID_PREFIX: dict[type, str] = {
    Message: "msg",
    FunctionCall: "fc",
    FunctionCallOutput: "fco",
    Reasoning: "rs",
    McpApprovalResponse: "mcpa",
}


@dataclass(frozen=True, slots=True)
class RunCounts:
    """How many runs wait to start and run now, and how many responses are stored."""

    queued: int
    running: int
    stored: int


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
        return self._record.snapshot()

    def events(self, *, starting_after: int | None = None) -> AsyncIterator[StreamEvent]:
        return self._record.log.follow(starting_after)


class Orchestrator:
    """Runs responses on one engine. Use as an async context manager."""

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
        telemetry: Telemetry | None = None,
    ) -> None:
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
        self._telemetry: Telemetry = telemetry if telemetry is not None else NoTelemetry()
        #: Runs in flight, stored or not (so a disconnect can abort an unstored run).
        self._live: dict[str, ResponseRecord] = {}
        self._tg: TaskGroup | None = None

    async def __aenter__(self) -> Orchestrator:
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        assert self._tg is not None
        self._tg.cancel_scope.cancel()
        return await self._tg.__aexit__(exc_type, exc, tb)

    # -- create ---------------------------------------------------------------------------

    def counts(self) -> RunCounts:
        """Runs queued and running now, and responses stored (read at each metrics scrape)."""
        queued = sum(1 for record in self._live.values() if record.phase is Phase.QUEUED)
        return RunCounts(queued, len(self._live) - queued, len(self._store))

    async def create(self, spec: RunSpec, *, owner: str | None = None) -> RunHandle:
        """Validate ``spec`` against the current state and start running it for ``owner``
        (an API key's id, or None on a server without keys).

        Everything that can be refused is refused here, before any event exists.
        """
        if self._tg is None:
            raise RuntimeError("the orchestrator is not running (use `async with`)")
        meter = RunMeter(self._telemetry)
        context, inputs, loop = await self._prepare(spec, owner)
        await self._check_context(spec, loop.first_chat(spec, (*context, *inputs)))

        record = ResponseRecord(
            id=new_id("resp"), spec=spec, context=context, input_items=inputs, owner=owner
        )
        if not spec.background:
            record.move(Transition.START)
        record.announce()
        if spec.store:
            self._store.put(record)
        self._live[record.id] = record
        self._tg.start_soon(self._run, record, loop, meter)
        return RunHandle(record)

    async def count_input_tokens(self, spec: RunSpec, *, owner: str | None = None) -> int:
        """The tokens the first step of ``spec``'s run would prompt the model with (earlier
        turns, instructions, input and the tools offered), as its template renders them;
        refuses what :meth:`create` refuses, except a prompt too long for the context."""
        context, inputs, loop = await self._prepare(spec, owner)
        return await self._engine.count_tokens(loop.first_chat(spec, (*context, *inputs)))

    async def _prepare(
        self, spec: RunSpec, owner: str | None
    ) -> tuple[tuple[Item, ...], tuple[Item, ...], ToolLoop]:
        """The earlier turns and input items of ``spec`` and the loop to run it, after every
        check that needs no tokenizing."""
        context: tuple[Item, ...] = ()
        if spec.previous_response_id is not None:
            previous = self._owned(
                spec.previous_response_id, owner, "Previous response", "previous_response_id"
            )
            if not previous.done:
                raise InvalidRequest(
                    f"Previous response '{previous.id}' is still {previous.status}.",
                    param="previous_response_id",
                )
            context = previous.conversation()
        resolved = resolve_references(spec.input, self._store, owner)
        inputs = tuple(_as_stored(item) for item in resolved)
        builtins = BuiltinRegistry(self._builtins(spec) if self._builtins else [])
        if spec.tools.web_search is not None and not builtins:
            raise InvalidRequest("Web search is not enabled on this server.", param="tools")
        for tool in spec.tools.functions:
            if tool.name in builtins:
                raise InvalidRequest(
                    f"The function name '{tool.name}' is taken by a built-in tool of this "
                    "request (web search); rename the function.",
                    param="tools",
                )
        self._check_mcp(spec, builtins, (*context, *inputs))
        await self._check_grammars(spec)
        mcp = McpToolset(self._mcp, spec.tools.mcp, self._enforceable)
        loop = ToolLoop(
            self._engine, self._format, builtins, mcp, max_tool_rounds=self._max_tool_rounds
        )
        return context, inputs, loop

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
        offered = spec.tools.functions or builtins or spec.tools.mcp or bool(configured)
        if spec.tools.mode == "required" and not offered and spec.tools.web_search is None:
            raise InvalidRequest(
                "tool_choice 'required' needs at least one tool.", param="tool_choice"
            )

    async def _enforceable(self, tool: ToolSpec) -> bool:
        """Whether the call grammar can enforce ``tool``'s schema (else it is not strict)."""
        try:
            await self._check_call_grammar((tool,))
        except InvalidGrammar:
            return False
        return True

    async def _check_grammars(self, spec: RunSpec) -> None:
        """Check the sampling settings and compile the output constraint and the functions'
        call grammar now, so a schema llguidance cannot use is a 400 naming its field rather
        than a failed response later. All of a request's grammars share one deadline."""
        stage = "grammar"  # the engine's name for the output constraint
        with anyio.move_on_after(self._grammar_timeout) as deadline:
            await self._engine.check(
                GenerationRequest(
                    prompt=Chat(()), sampling=spec.sampling, constraint=spec.constraint
                )
            )
            stage = "tools"
            await self._check_tool_grammars(spec)
        if deadline.cancelled_caught:
            raise GrammarTooComplex(
                f"The request's schemas are too complex: compiling them took longer than "
                f"{self._grammar_timeout:g} s. Simplify them or send fewer tools.",
                param=stage,
            )

    async def _check_tool_grammars(self, spec: RunSpec) -> None:
        """All functions' call grammar, compiled once; when it fails, each function's own
        names the one at fault."""
        functions = spec.tools.functions
        if spec.tools.mode == "none" or not functions:
            return
        try:
            await self._check_call_grammar(functions)
        except GrammarTooComplex as exc:
            raise GrammarTooComplex(
                f"The tools' parameters are too complex to enforce: {exc.message}", param="tools"
            ) from exc
        except InvalidGrammar as exc:
            names = [tool.name for tool in spec.echo.tools if isinstance(tool, FunctionTool)]
            for tool in functions:
                try:
                    await self._check_call_grammar((tool,))
                except InvalidGrammar as culprit:
                    index = names.index(tool.name) if tool.name in names else 0
                    raise InvalidGrammar(
                        f"The parameters of tool '{tool.name}' cannot be enforced: "
                        f"{culprit.message}",
                        param=f"tools[{index}].parameters",
                    ) from culprit
            raise InvalidGrammar(
                f"The tools' parameters cannot be enforced together: {exc.message}", param="tools"
            ) from exc

    async def _check_call_grammar(self, tools: tuple[ToolSpec, ...]) -> None:
        grammar = self._format.call_grammar(tools, include_trigger=True)
        await self._engine.check(GenerationRequest(prompt=Chat(()), constraint=grammar))

    async def _check_context(self, spec: RunSpec, chat: Chat) -> None:
        if spec.truncation == "auto":
            return  # the loop drops the oldest turns as needed
        tokens = await self._engine.count_tokens(chat)
        limit = self._engine.info.context_length
        if tokens + (spec.sampling.max_tokens or 1) > limit:
            raise ContextLengthExceeded(
                f"The input takes {tokens} tokens and the requested output "
                f"{spec.sampling.max_tokens or 1}, more than the model's context of {limit} "
                "tokens. Shorten the input or set truncation to 'auto'.",
                param="input",
            )

    async def _run(self, record: ResponseRecord, loop: ToolLoop, meter: RunMeter) -> None:
        writer = OutputWriter(record, meter)
        try:
            with record.cancel_scope:
                try:
                    if record.phase is Phase.QUEUED:
                        record.move(Transition.START)
                    record.emit_in_progress()
                    await loop.run(record, writer, [*record.context, *record.input_items])
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
            self._live.pop(record.id, None)
            if not record.done:
                # Cancelled by /cancel, DELETE, a disconnect or the server shutting down.
                writer.close_all("incomplete")
                record.cancel()
            self._telemetry.run_finished(record, meter.elapsed)

    # -- the stored responses -------------------------------------------------------------

    def _owned(
        self,
        response_id: str,
        owner: str | None,
        what: str = "Response",
        param: str = "response_id",
    ) -> ResponseRecord:
        """The stored response, if ``owner`` created it: another key's response is as unknown
        as a missing one (404), so ids cannot be probed across keys."""
        record = self._store.get(response_id)
        if record is None or record.owner != owner:
            raise ResponseNotFound(f"{what} with id '{response_id}' not found.", param=param)
        return record

    async def retrieve(self, response_id: str, *, owner: str | None = None) -> Response:
        return self._owned(response_id, owner).snapshot()

    async def subscribe(
        self,
        response_id: str,
        *,
        starting_after: int | None = None,
        owner: str | None = None,
    ) -> AsyncIterator[StreamEvent]:
        record = self._owned(response_id, owner)
        if starting_after is not None and not 0 <= starting_after < len(record.log) + 1:
            raise InvalidRequest(
                f"starting_after must be between 0 and {len(record.log)}.", param="starting_after"
            )
        return record.log.follow(starting_after)

    async def input_items(self, response_id: str, *, owner: str | None = None) -> list[Item]:
        return list(self._owned(response_id, owner).input_items)

    async def cancel(self, response_id: str, *, owner: str | None = None) -> Response:
        """Cancel a background response; a cancelled one is returned as it is."""
        record = self._owned(response_id, owner)
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
        await self._stop(record)
        return record.snapshot()

    async def abort(self, response_id: str) -> None:
        """A streaming client went away: stop its run, whatever its mode."""
        record = self._live.get(response_id)
        if record is not None:
            await self._stop(record)

    async def delete(self, response_id: str, *, owner: str | None = None) -> None:
        """Delete a stored response, cancelling it first if it still runs."""
        record = self._owned(response_id, owner)
        self._store.delete(response_id)
        if not record.done:
            await self._stop(record)

    @staticmethod
    async def _stop(record: ResponseRecord) -> None:
        record.cancel_scope.cancel()
        await record.finished.wait()


def _as_stored(item: Item) -> Item:
    """Input items are stored with an id and a status, as OpenAI lists them under
    ``input_items``; what the client gave is kept."""
    prefix = _ID_PREFIX.get(type(item))
    if prefix is None:
        return item
    item = msgspec.structs.replace(item, id=getattr(item, "id", None) or new_id(prefix))
    if "status" not in item.__struct_fields__:
        return item
    return msgspec.structs.replace(item, status=getattr(item, "status", None) or "completed")
