"""Response records and events to bytes and back, for every store.

A record is stored as JSON of all its fields but the :func:`~.record.live` ones, derived from
the dataclass itself: a field someone adds to :class:`~.record.ResponseRecord` (an owner, a
new kind of output) is stored and read back without a change here. Fields a stored record
lacks take their defaults, so records written before a field existed still load.

The run's input is stored once, as ``input_items``; the copy inside ``spec`` is dropped, so a
large input (say 10 MB that then overflowed the context) is not kept twice.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

import msgspec

from . import record as record_module
from .errors import StoreError
from .events import StreamEvent
from .log import EventLog
from .record import SCHEMA_VERSION, ResponseRecord


def _stored_fields() -> list[dataclasses.Field[Any]]:
    return [f for f in dataclasses.fields(ResponseRecord) if not f.metadata.get("live")]


def _stored_type() -> type[msgspec.Struct]:
    """A msgspec Struct with the stored fields of ResponseRecord, their types and defaults."""
    hints = typing.get_type_hints(ResponseRecord, vars(record_module))
    fields: list[tuple[str, Any] | tuple[str, Any, Any]] = []
    for f in _stored_fields():
        if f.default is not dataclasses.MISSING:
            fields.append((f.name, hints[f.name], f.default))
        elif f.default_factory is not dataclasses.MISSING:
            fields.append((f.name, hints[f.name], msgspec.field(default_factory=f.default_factory)))
        else:
            fields.append((f.name, hints[f.name]))
    return msgspec.defstruct("StoredRecord", fields, kw_only=True)


class RecordCodec:
    """Encodes and decodes records (without their events) and events."""

    def __init__(self) -> None:
        self._names = [f.name for f in _stored_fields()]
        self._encoder = msgspec.json.Encoder()
        self._record = msgspec.json.Decoder(_stored_type())
        self._event = msgspec.json.Decoder(StreamEvent)

    def encode(self, record: ResponseRecord) -> bytes:
        fields = {name: getattr(record, name) for name in self._names}
        fields["spec"] = dataclasses.replace(record.spec, input=())
        return self._encoder.encode(fields)

    def decode(self, data: bytes, *, events: int) -> ResponseRecord:
        """The record, whose log goes on after its ``events`` stored events (not loaded)."""
        try:
            stored = self._record.decode(data)
        except msgspec.DecodeError as exc:
            raise StoreError(f"A stored response cannot be read: {exc}") from exc
        version = stored.schema_version  # type: ignore[attr-defined]
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"A stored response has layout version {version}, newer than this exloop's "
                f"({SCHEMA_VERSION}): it was written by a newer exloop."
            )
        record = ResponseRecord(**{name: getattr(stored, name) for name in self._names})
        record.log = EventLog(start=events)
        if record.done:
            record.finished.set()
            record.persisted.set()
        return record

    def encode_event(self, event: StreamEvent) -> bytes:
        return self._encoder.encode(event)

    def decode_event(self, data: bytes) -> StreamEvent:
        try:
            return self._event.decode(data)
        except msgspec.DecodeError as exc:
            raise StoreError(f"A stored event cannot be read: {exc}") from exc
