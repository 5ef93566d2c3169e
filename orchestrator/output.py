"""Writes output items into a response record, with the item-level events in OpenAI's order.

A message: ``output_item.added`` → ``content_part.added`` → ``output_text.delta`` × N →
``output_text.done`` → ``content_part.done`` → ``output_item.done``. A function call:
``output_item.added`` → ``function_call_arguments.delta`` × N → ``.done`` →
``output_item.done``; a custom tool call the same with ``custom_tool_call_input.delta`` /
``.done``. A web search: ``output_item.added`` → ``web_search_call.in_progress`` →
``.searching`` → ``.completed`` → ``output_item.done``. An MCP call: ``output_item.added`` →
``mcp_call.in_progress`` → ``mcp_call_arguments.delta`` × N → ``.done`` (as the model writes
the call) → ``mcp_call.completed`` or ``.failed`` (when it has run) → ``output_item.done``. An
MCP tool listing: ``output_item.added`` → ``mcp_list_tools.in_progress`` → ``.completed`` or
``.failed`` → ``output_item.done``. Reasoning:
``output_item.added`` → ``content_part.added`` (reasoning_text) → ``reasoning_text.delta`` × N
→ ``.done`` → ``content_part.done`` → ``output_item.done`` (with ``encrypted_content`` when
asked for). A compaction: ``output_item.added`` → ``compaction.compacting`` →
``output_item.done``. Items without events of their own (tool search calls and outputs, MCP
approval requests): ``output_item.added`` → ``output_item.done``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import msgspec

from . import events as ev
from .items import (
    Compaction,
    CustomToolCall,
    FunctionCall,
    ItemStatus,
    Logprob,
    McpApprovalRequest,
    McpCall,
    McpCallError,
    McpListTools,
    McpListToolsTool,
    McpProtocolError,
    Message,
    OutputItem,
    OutputText,
    Reasoning,
    ReasoningText,
    SearchAction,
    UrlCitation,
    WebSearchAction,
    WebSearchCall,
    WebSearchStatus,
    new_id,
)
from .record import ResponseRecord
from .sealing import Sealer
from .telemetry import NoTelemetry, RunMeter


@dataclass
class _OpenMessage:
    index: int
    id: str
    text: str = ""
    logprobs: list[Logprob] = field(default_factory=list)


@dataclass
class _OpenCall:
    index: int
    id: str
    call_id: str
    name: str
    arguments: str = ""
    #: Set for an MCP call (an ``mcp_call`` item rather than a ``function_call``).
    server_label: str | None = None
    approval_request_id: str | None = None
    #: A namespaced function's or custom tool's namespace.
    namespace: str | None = None
    #: A custom tool's call: ``arguments`` is its raw input (a ``custom_tool_call`` item).
    custom: bool = False


@dataclass
class _OpenReasoning:
    index: int
    id: str
    text: str = ""


class OutputWriter:
    """The one place output items are added to a record.

    ``sealer`` seals compaction summaries, and the text of finished reasoning items into their
    ``encrypted_content`` when ``seal_reasoning`` (the request includes
    ``reasoning.encrypted_content``).

    ``meter`` is the run's :class:`~.telemetry.RunMeter`: the steps and tools that write
    through this writer report their timing to it, and the writer reports each tool call item
    that ends (by tool and final status).
    """

    def __init__(
        self,
        record: ResponseRecord,
        sealer: Sealer,
        *,
        seal_reasoning: bool = False,
        meter: RunMeter | None = None,
    ) -> None:
        self._record = record
        self._sealer = sealer
        self._seal_reasoning = seal_reasoning
        self.meter = meter if meter is not None else RunMeter(NoTelemetry())
        self._message: _OpenMessage | None = None
        self._call: _OpenCall | None = None
        #: MCP calls whose arguments are complete, waiting to run, by call id.
        self._mcp_calls: dict[str, _OpenCall] = {}
        self._reasoning: _OpenReasoning | None = None
        self._compaction: int | None = None

    # -- reasoning ------------------------------------------------------------------------

    def reasoning(self, delta: str) -> None:
        """Append thinking text to the open reasoning item, opening one first if needed."""
        if not delta:
            return
        item = self._reasoning or self._open_reasoning()
        item.text += delta
        self._record.output[item.index] = self._reasoning_item(item, "in_progress")
        self._record.emit(
            lambda n: ev.ReasoningTextDelta(
                sequence_number=n,
                item_id=item.id,
                output_index=item.index,
                content_index=0,
                delta=delta,
            )
        )

    def close_reasoning(self, status: ItemStatus = "completed") -> Reasoning | None:
        """Finish the open reasoning item (if any), sealing its text when asked to."""
        item, self._reasoning = self._reasoning, None
        if item is None:
            return None
        record = self._record
        part = ReasoningText(item.text)
        record.emit(
            lambda n: ev.ReasoningTextDone(
                sequence_number=n,
                item_id=item.id,
                output_index=item.index,
                content_index=0,
                text=item.text,
            )
        )
        self._part_done(item.id, item.index, part)
        sealed = self._sealer.seal("reasoning", item.text) if self._seal_reasoning else None
        done = Reasoning(
            id=item.id, content=[part], encrypted_content=sealed, status=status, summary=[]
        )
        record.output[item.index] = done
        record.emit(
            lambda n: ev.OutputItemDone(sequence_number=n, output_index=item.index, item=done)
        )
        return done

    def _open_reasoning(self) -> _OpenReasoning:
        record = self._record
        item = _OpenReasoning(index=len(record.output), id=new_id("rs"))
        self._reasoning = item
        empty = Reasoning(id=item.id, content=[], status="in_progress", summary=[])
        record.add_output(empty)
        record.emit(
            lambda n: ev.OutputItemAdded(sequence_number=n, output_index=item.index, item=empty)
        )
        self._part_added(item.id, item.index, ReasoningText(""))
        return item

    @staticmethod
    def _reasoning_item(item: _OpenReasoning, status: ItemStatus) -> Reasoning:
        return Reasoning(id=item.id, content=[ReasoningText(item.text)], status=status, summary=[])

    # -- compaction -----------------------------------------------------------------------

    def open_compaction(self) -> int:
        """Add a compaction item whose summary is being written; returns its output index."""
        record = self._record
        item = Compaction(id=new_id("cmp"), encrypted_content="")
        index = self.open_item(item)
        self._compaction = index
        record.emit(
            lambda n: ev.CompactionCompacting(
                sequence_number=n, item_id=item.id or "", output_index=index
            )
        )
        return index

    def close_compaction(self, index: int, summary: str) -> Compaction:
        """Finish the compaction item at ``index``, sealing its ``summary``."""
        record = self._record
        self._compaction = None
        sealed = self._sealer.seal("compaction", summary)
        item = Compaction(id=record.output[index].id, encrypted_content=sealed)
        self.close_item(index, item)
        return item

    # -- assistant text -------------------------------------------------------------------

    def text(self, delta: str, logprobs: list[Logprob] | None = None) -> None:
        """Append text to the open message, opening one first if needed."""
        if not delta:
            return
        msg = self._message or self._open_message()
        msg.text += delta
        if logprobs:
            msg.logprobs.extend(logprobs)
        self._record.output[msg.index] = self._message_item(msg, "in_progress")
        self._record.emit(
            lambda n: ev.OutputTextDelta(
                sequence_number=n,
                item_id=msg.id,
                output_index=msg.index,
                content_index=0,
                delta=delta,
                logprobs=logprobs or [],
            )
        )

    @property
    def message_text(self) -> str:
        return self._message.text if self._message else ""

    def close_message(
        self,
        status: ItemStatus = "completed",
        annotations: list[UrlCitation] | None = None,
    ) -> Message | None:
        """Finish the open message (if any), with citations found in its text."""
        msg, self._message = self._message, None
        if msg is None:
            return None
        record = self._record
        part = OutputText(text=msg.text, annotations=annotations or [], logprobs=msg.logprobs)
        where = msg.id, msg.index
        for i, annotation in enumerate(annotations or []):
            # emit() calls the factory at once, so the loop variables are current.
            record.emit(
                lambda n: ev.OutputTextAnnotationAdded(
                    sequence_number=n,
                    item_id=where[0],
                    output_index=where[1],
                    content_index=0,
                    annotation_index=i,  # noqa: B023
                    annotation=annotation,  # noqa: B023
                )
            )
        record.emit(
            lambda n: ev.OutputTextDone(
                sequence_number=n,
                item_id=where[0],
                output_index=where[1],
                content_index=0,
                text=msg.text,
                logprobs=msg.logprobs,
            )
        )
        self._part_done(msg.id, msg.index, part)
        item = Message(role="assistant", content=[part], id=msg.id, status=status)
        record.output[msg.index] = item
        record.emit(
            lambda n: ev.OutputItemDone(sequence_number=n, output_index=msg.index, item=item)
        )
        return item

    def _open_message(self) -> _OpenMessage:
        record = self._record
        msg = _OpenMessage(index=len(record.output), id=new_id("msg"))
        self._message = msg
        empty = Message(role="assistant", content=[], id=msg.id, status="in_progress")
        record.add_output(empty)
        record.emit(
            lambda n: ev.OutputItemAdded(sequence_number=n, output_index=msg.index, item=empty)
        )
        self._part_added(msg.id, msg.index, OutputText(text=""))
        return msg

    @staticmethod
    def _message_item(msg: _OpenMessage, status: ItemStatus) -> Message:
        part = OutputText(text=msg.text, logprobs=msg.logprobs)
        return Message(role="assistant", content=[part], id=msg.id, status=status)

    # -- the content part of messages and reasoning ----------------------------------------

    def _part_added(self, item_id: str, index: int, part: OutputText | ReasoningText) -> None:
        self._record.emit(
            lambda n: ev.ContentPartAdded(
                sequence_number=n, item_id=item_id, output_index=index, content_index=0, part=part
            )
        )

    def _part_done(self, item_id: str, index: int, part: OutputText | ReasoningText) -> None:
        self._record.emit(
            lambda n: ev.ContentPartDone(
                sequence_number=n, item_id=item_id, output_index=index, content_index=0, part=part
            )
        )

    # -- function, custom tool and MCP calls ----------------------------------------------

    def open_call(
        self,
        name: str,
        call_id: str,
        *,
        server_label: str | None = None,
        namespace: str | None = None,
        custom: bool = False,
    ) -> None:
        """Start a call item as the model starts writing the call (closing any open message
        first): a ``function_call``, a ``custom_tool_call`` (``custom``), or an ``mcp_call``
        when ``server_label`` is given."""
        self.close_message()
        record = self._record
        prefix = "mcp" if server_label is not None else "ctc" if custom else "fc"
        call = _OpenCall(
            len(record.output),
            new_id(prefix),
            call_id,
            name,
            "",
            server_label,
            namespace=namespace,
            custom=custom,
        )
        self._open(call)

    def _open(self, call: _OpenCall) -> None:
        self._call = call
        record = self._record
        item = self._call_item(call, "in_progress")
        record.add_output(item)
        record.emit(
            lambda n: ev.OutputItemAdded(sequence_number=n, output_index=call.index, item=item)
        )
        if call.server_label is not None:
            record.emit(
                lambda n: ev.McpCallInProgress(
                    sequence_number=n, item_id=call.id, output_index=call.index
                )
            )

    def call_arguments(self, delta: str) -> None:
        """More of the open call's arguments (a custom tool's input)."""
        call = self._call
        if call is None or not delta:
            return
        call.arguments += delta
        self._record.output[call.index] = self._call_item(call, "in_progress")
        kind: type[
            ev.FunctionCallArgumentsDelta | ev.CustomToolCallInputDelta | ev.McpCallArgumentsDelta
        ]
        if call.server_label is not None:
            kind = ev.McpCallArgumentsDelta
        elif call.custom:
            kind = ev.CustomToolCallInputDelta
        else:
            kind = ev.FunctionCallArgumentsDelta
        self._record.emit(
            lambda n: kind(sequence_number=n, item_id=call.id, output_index=call.index, delta=delta)
        )

    def close_call(self, arguments: str, status: ItemStatus = "completed") -> None:
        """Finish the open call's arguments with their complete text. A function call is done;
        an MCP call stays in progress until :meth:`finish_mcp_call`."""
        call, self._call = self._call, None
        if call is None:
            return
        if arguments.startswith(call.arguments) and len(arguments) > len(call.arguments):
            # The parser may hold back the tail until the call closes: stream it now.
            self._call = call
            self.call_arguments(arguments[len(call.arguments) :])
            self._call = None
        call.arguments = arguments
        record = self._record
        where = call.id, call.index
        if call.server_label is not None:
            record.emit(
                lambda n: ev.McpCallArgumentsDone(
                    sequence_number=n, item_id=where[0], output_index=where[1], arguments=arguments
                )
            )
            record.output[call.index] = self._call_item(call, "in_progress")
            self._mcp_calls[call.call_id] = call
            return
        if call.custom:
            record.emit(
                lambda n: ev.CustomToolCallInputDone(
                    sequence_number=n, item_id=where[0], output_index=where[1], input=arguments
                )
            )
        else:
            record.emit(
                lambda n: ev.FunctionCallArgumentsDone(
                    sequence_number=n,
                    item_id=where[0],
                    output_index=where[1],
                    name=call.name,
                    arguments=arguments,
                )
            )
        item = self._call_item(call, status)
        record.output[call.index] = item
        record.emit(
            lambda n: ev.OutputItemDone(sequence_number=n, output_index=call.index, item=item)
        )
        self.meter.telemetry.tool_call("custom" if call.custom else "function", status)

    @staticmethod
    def _call_item(call: _OpenCall, status: ItemStatus) -> FunctionCall | CustomToolCall | McpCall:
        if call.custom:
            return CustomToolCall(
                call_id=call.call_id,
                name=call.name,
                input=call.arguments,
                id=call.id,
                status=status,
                namespace=call.namespace,
            )
        if call.server_label is not None:
            return McpCall(
                id=call.id,
                server_label=call.server_label,
                name=call.name,
                arguments=call.arguments,
                status=status,
                approval_request_id=call.approval_request_id,
            )
        return FunctionCall(
            call_id=call.call_id,
            name=call.name,
            arguments=call.arguments,
            id=call.id,
            status=status,
            namespace=call.namespace,
        )

    # -- items without events of their own ------------------------------------------------

    def open_item(self, item: OutputItem) -> int:
        """Add an item in progress (closing any open message first); returns its index."""
        self.close_message()
        record = self._record
        index = len(record.output)
        record.add_output(item)
        record.emit(lambda n: ev.OutputItemAdded(sequence_number=n, output_index=index, item=item))
        return index

    def close_item(self, index: int, item: OutputItem) -> None:
        """Replace the item at ``index`` by its final state."""
        self._record.output[index] = item
        self._record.emit(
            lambda n: ev.OutputItemDone(sequence_number=n, output_index=index, item=item)
        )

    def add_item(self, item: OutputItem) -> None:
        """Add an item that is complete as it arrives."""
        self.close_item(self.open_item(item), item)

    # -- MCP ------------------------------------------------------------------------------

    def open_mcp_call(
        self,
        server_label: str,
        name: str,
        call_id: str,
        arguments: str,
        approval_request_id: str | None = None,
    ) -> None:
        """Add an ``mcp_call`` whose arguments are known (an approved call), ready to run."""
        self.close_message()
        call = _OpenCall(
            len(self._record.output),
            new_id("mcp"),
            call_id,
            name,
            "",
            server_label,
            approval_request_id,
        )
        self._open(call)
        self.close_call(arguments)

    def finish_mcp_call(
        self,
        call_id: str,
        *,
        output: str | None = None,
        error: McpCallError | None = None,
        status: Literal["completed", "failed", "incomplete"] = "completed",
    ) -> None:
        """End a ready MCP call: ``completed`` with its output, ``failed`` with its error, or
        ``incomplete`` (cancelled while it ran)."""
        call = self._mcp_calls.pop(call_id, None)
        if call is None:
            return
        record = self._record
        item = msgspec.structs.replace(
            self._call_item(call, "in_progress"), output=output, error=error, status=status
        )
        record.output[call.index] = item
        if status == "completed":
            record.emit(
                lambda n: ev.McpCallCompleted(
                    sequence_number=n, item_id=call.id, output_index=call.index
                )
            )
        elif status == "failed":
            record.emit(
                lambda n: ev.McpCallFailed(
                    sequence_number=n, item_id=call.id, output_index=call.index
                )
            )
        record.emit(
            lambda n: ev.OutputItemDone(sequence_number=n, output_index=call.index, item=item)
        )
        self.meter.telemetry.tool_call("mcp", status)

    def abandon_call(self, call_id: str, message: str) -> None:
        """A ready call that cannot run (its tool is gone, its arguments unreadable): an MCP
        call's item ends failed with ``message``; other calls have no item open."""
        if call_id in self._mcp_calls:
            error = McpProtocolError(code=-32602, message=message)
            self.finish_mcp_call(call_id, error=error, status="failed")

    def approval_request(self, server_label: str, name: str, arguments: str) -> None:
        """Add an ``mcp_approval_request``: a call that waits for the client's approval."""
        self.add_item(
            McpApprovalRequest(
                id=new_id("mcpr"), server_label=server_label, name=name, arguments=arguments
            )
        )

    def open_mcp_list_tools(self, server_label: str) -> int:
        """Add an ``mcp_list_tools`` item in progress; returns its output index."""
        record = self._record
        item = McpListTools(id=new_id("mcpl"), server_label=server_label, tools=[])
        index = self.open_item(item)
        record.emit(
            lambda n: ev.McpListToolsInProgress(
                sequence_number=n, item_id=item.id, output_index=index
            )
        )
        return index

    def close_mcp_list_tools(
        self, index: int, tools: list[McpListToolsTool], error: str | None = None
    ) -> None:
        """Finish an ``mcp_list_tools`` item with the tools listed, or the error met."""
        record = self._record
        current = record.output[index]
        assert isinstance(current, McpListTools)
        item = msgspec.structs.replace(current, tools=tools, error=error)
        if error is None:
            record.emit(
                lambda n: ev.McpListToolsCompleted(
                    sequence_number=n, item_id=item.id, output_index=index
                )
            )
        else:
            record.emit(
                lambda n: ev.McpListToolsFailed(
                    sequence_number=n, item_id=item.id, output_index=index
                )
            )
        self.close_item(index, item)

    def close_all(self, status: ItemStatus) -> None:
        """Close whatever is open, e.g. when the output stops short."""
        self.close_reasoning(status)
        if self._compaction is not None:
            # Cut off while summarizing: the item stays, with an empty summary.
            self.close_compaction(self._compaction, "")
        self.close_message(status)
        if self._call is not None:
            self.close_call(self._call.arguments, status)
        for call_id in list(self._mcp_calls):
            self.finish_mcp_call(call_id, status="incomplete")

    # -- built-in web search --------------------------------------------------------------

    def open_web_search(self, action: WebSearchAction) -> int:
        """Add a web_search_call item in progress; returns its output index."""
        record = self._record
        item = WebSearchCall(id=new_id("ws"), status="in_progress", action=action)
        index = self.open_item(item)
        record.emit(
            lambda n: ev.WebSearchCallInProgress(
                sequence_number=n, item_id=item.id, output_index=index
            )
        )
        record.emit(
            lambda n: ev.WebSearchCallSearching(
                sequence_number=n, item_id=item.id, output_index=index
            )
        )
        record.output[index] = WebSearchCall(id=item.id, status="searching", action=action)
        return index

    def close_web_search(
        self, index: int, action: WebSearchAction, status: WebSearchStatus = "completed"
    ) -> None:
        """Finish a web_search_call item: ``completed``, ``failed`` (the tool raised) or
        ``incomplete`` (the response was cancelled while it ran)."""
        current = self._record.output[index]
        item = WebSearchCall(id=current.id or "", status=status, action=action)
        if status == "completed":
            self._record.emit(
                lambda n: ev.WebSearchCallCompleted(
                    sequence_number=n, item_id=item.id, output_index=index
                )
            )
        self.close_item(index, item)
        tool = "web_search" if isinstance(action, SearchAction) else "open_page"
        self.meter.telemetry.tool_call(tool, status)
