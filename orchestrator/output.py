"""Writes output items into a response record, with the item-level events in OpenAI's order.

A message: ``output_item.added`` → ``content_part.added`` → ``output_text.delta`` × N →
``output_text.done`` → ``content_part.done`` → ``output_item.done``. A function call:
``output_item.added`` → ``function_call_arguments.delta`` × N → ``.done`` →
``output_item.done``. A web search: ``output_item.added`` → ``web_search_call.in_progress`` →
``.searching`` → ``.completed`` → ``output_item.done``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from . import events as ev
from .items import (
    FunctionCall,
    ItemStatus,
    Logprob,
    Message,
    OutputText,
    UrlCitation,
    WebSearchAction,
    WebSearchCall,
    WebSearchStatus,
    new_id,
)
from .record import ResponseRecord


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


class OutputWriter:
    """The one place output items are added to a record."""

    def __init__(self, record: ResponseRecord) -> None:
        self._record = record
        self._message: _OpenMessage | None = None
        self._call: _OpenCall | None = None

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
        record.emit(
            lambda n: ev.ContentPartDone(
                sequence_number=n,
                item_id=where[0],
                output_index=where[1],
                content_index=0,
                part=part,
            )
        )
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
        record.output.append(empty)
        record.emit(
            lambda n: ev.OutputItemAdded(sequence_number=n, output_index=msg.index, item=empty)
        )
        record.emit(
            lambda n: ev.ContentPartAdded(
                sequence_number=n,
                item_id=msg.id,
                output_index=msg.index,
                content_index=0,
                part=OutputText(text=""),
            )
        )
        return msg

    @staticmethod
    def _message_item(msg: _OpenMessage, status: ItemStatus) -> Message:
        part = OutputText(text=msg.text, logprobs=msg.logprobs)
        return Message(role="assistant", content=[part], id=msg.id, status=status)

    # -- function calls -------------------------------------------------------------------

    def open_call(self, name: str, call_id: str) -> None:
        """Start a function_call item (closing any open message first)."""
        self.close_message()
        record = self._record
        call = _OpenCall(index=len(record.output), id=new_id("fc"), call_id=call_id, name=name)
        self._call = call
        item = self._call_item(call, "in_progress")
        record.output.append(item)
        record.emit(
            lambda n: ev.OutputItemAdded(sequence_number=n, output_index=call.index, item=item)
        )

    def call_arguments(self, delta: str) -> None:
        call = self._call
        if call is None or not delta:
            return
        call.arguments += delta
        self._record.output[call.index] = self._call_item(call, "in_progress")
        self._record.emit(
            lambda n: ev.FunctionCallArgumentsDelta(
                sequence_number=n, item_id=call.id, output_index=call.index, delta=delta
            )
        )

    def close_call(self, arguments: str, status: ItemStatus = "completed") -> FunctionCall | None:
        """Finish the open call with its complete arguments text."""
        call, self._call = self._call, None
        if call is None:
            return None
        if arguments.startswith(call.arguments) and len(arguments) > len(call.arguments):
            # The parser may hold back the tail until the call closes: stream it now.
            self._call = call
            self.call_arguments(arguments[len(call.arguments) :])
            self._call = None
        call.arguments = arguments
        record = self._record
        record.emit(
            lambda n: ev.FunctionCallArgumentsDone(
                sequence_number=n, item_id=call.id, output_index=call.index, arguments=arguments
            )
        )
        item = self._call_item(call, status)
        record.output[call.index] = item
        record.emit(
            lambda n: ev.OutputItemDone(sequence_number=n, output_index=call.index, item=item)
        )
        return item

    @staticmethod
    def _call_item(call: _OpenCall, status: ItemStatus) -> FunctionCall:
        return FunctionCall(
            call_id=call.call_id,
            name=call.name,
            arguments=call.arguments,
            id=call.id,
            status=status,
        )

    def close_all(self, status: ItemStatus) -> None:
        """Close whatever is open, e.g. when the output stops short."""
        self.close_message(status)
        if self._call is not None:
            self.close_call(self._call.arguments, status)

    # -- built-in web search --------------------------------------------------------------

    def open_web_search(self, action: WebSearchAction) -> int:
        """Add a web_search_call item in progress; returns its output index."""
        self.close_message()
        record = self._record
        index = len(record.output)
        item = WebSearchCall(id=new_id("ws"), status="in_progress", action=action)
        record.output.append(item)
        record.emit(lambda n: ev.OutputItemAdded(sequence_number=n, output_index=index, item=item))
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
        record = self._record
        current = record.output[index]
        item = WebSearchCall(id=current.id or "", status=status, action=action)
        record.output[index] = item
        if status == "completed":
            record.emit(
                lambda n: ev.WebSearchCallCompleted(
                    sequence_number=n, item_id=item.id, output_index=index
                )
            )
        record.emit(lambda n: ev.OutputItemDone(sequence_number=n, output_index=index, item=item))
