"""Response records and events to bytes and back, for every store.

A record is stored as JSON of all its fields but the :func:`~.record.live` ones, derived from
the dataclass itself: a field someone adds to :class:`~.record.ResponseRecord` (an owner, a
new kind of output) is stored and read back without a change here. Fields a stored record
lacks take their defaults, so records written before a field existed still load.

It comes in two parts: the :func:`~.record.fixed` fields (the request, earlier turns, the
input), written once, and the *state* (status, output, usage...), rewritten as the response
progresses. The run's input is stored once, as ``input_items``; the copy inside ``spec`` is
dropped, so a large input (say 10 MB that then overflowed the context) is not kept twice.
Secrets a request carries for its run (MCP servers' headers, with their authorization
tokens) are never stored.
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
from .spec import RunSpec


def _stored_fields(*, fixed: bool) -> list[dataclasses.Field[Any]]:
    return [
        f
        for f in dataclasses.fields(ResponseRecord)
        if not f.metadata.get("live") and bool(f.metadata.get("fixed")) is fixed
    ]


def _stored_type(name: str, *, fixed: bool) -> type[msgspec.Struct]:
    """A msgspec Struct with those stored fields of ResponseRecord, their types and defaults."""
    hints = typing.get_type_hints(ResponseRecord, vars(record_module))
    fields: list[tuple[str, Any] | tuple[str, Any, Any]] = []
    for f in _stored_fields(fixed=fixed):
        if f.default is not dataclasses.MISSING:
            fields.append((f.name, hints[f.name], f.default))
        elif f.default_factory is not dataclasses.MISSING:
            fields.append((f.name, hints[f.name], msgspec.field(default_factory=f.default_factory)))
        else:
            fields.append((f.name, hints[f.name]))
    return msgspec.defstruct(name, fields, kw_only=True)


def _stored_spec(spec: RunSpec) -> RunSpec:
    """The request as stored: without its input (stored as ``input_items``) or secrets."""
    servers = tuple(dataclasses.replace(server, headers={}) for server in spec.tools.mcp)
    tools = dataclasses.replace(spec.tools, mcp=servers)
    return dataclasses.replace(spec, input=(), tools=tools)


class RecordCodec:
    """Encodes and decodes records (without their events) and events."""

    def __init__(self) -> None:
        self._state_names = [f.name for f in _stored_fields(fixed=False)]
        self._fixed_names = [f.name for f in _stored_fields(fixed=True)]
        self._encoder = msgspec.json.Encoder()
        self._state = msgspec.json.Decoder(_stored_type("StoredState", fixed=False))
        self._fixed = msgspec.json.Decoder(_stored_type("StoredFixed", fixed=True))
        self._event = msgspec.json.Decoder(StreamEvent)

    def encode(self, record: ResponseRecord) -> bytes:
        """The record's state: what changes while it runs."""
        return self._encoder.encode({name: getattr(record, name) for name in self._state_names})

    def encode_fixed(self, record: ResponseRecord) -> bytes:
        """The fields set once, when the record was made."""
        fields = {name: getattr(record, name) for name in self._fixed_names}
        fields["spec"] = _stored_spec(record.spec)
        return self._encoder.encode(fields)

    def decode(self, state: bytes, fixed: bytes, *, events: int) -> ResponseRecord:
        """The record, whose log goes on after its ``events`` stored events (not loaded)."""
        try:
            stored, made = self._state.decode(state), self._fixed.decode(fixed)
        except msgspec.DecodeError as exc:
            raise StoreError(f"A stored response cannot be read: {exc}") from exc
        version = stored.schema_version  # type: ignore[attr-defined]
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"A stored response has layout version {version}, newer than this exloop's "
                f"({SCHEMA_VERSION}): it was written by a newer exloop."
            )
        record = ResponseRecord(
            **{name: getattr(stored, name) for name in self._state_names},
            **{name: getattr(made, name) for name in self._fixed_names},
        )
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
