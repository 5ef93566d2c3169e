"""Records and events to bytes and back: every stored field, the input once, old samples."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import msgspec
import pytest

from exloop.engine.sampling import SamplingParams
from exloop.orchestrator import events as ev
from exloop.orchestrator.codec import RecordCodec
from exloop.orchestrator.errors import StoreError
from exloop.orchestrator.items import InputText, Message
from exloop.orchestrator.output import OutputWriter
from exloop.orchestrator.record import SCHEMA_VERSION, ResponseRecord
from exloop.orchestrator.sealing import KEY_BYTES, Sealer
from exloop.orchestrator.spec import McpServerSpec, RunSpec
from exloop.orchestrator.state import Transition

SAMPLES = Path(__file__).parent / "samples"

#: Records hold anyio primitives, made inside an event loop.
pytestmark = pytest.mark.anyio


def finished_record(text: str = "hello") -> ResponseRecord:
    question = Message(role="user", content=[InputText(text)], id="msg_in", status="completed")
    spec = RunSpec(
        input=(question,),
        model="m",
        sampling=SamplingParams(temperature=0.5, logit_bias={7: -2.0}, stop=("END",)),
        metadata={"k": "v"},
        background=True,
    )
    record = ResponseRecord(id="resp_1", spec=spec, context=(), input_items=(question,))
    record.announce()
    record.move(Transition.START)
    record.emit_in_progress()
    writer = OutputWriter(record, Sealer(os.urandom(KEY_BYTES)))
    writer.text("Hi ")
    writer.text("there.")
    writer.close_message()
    record.complete()
    return record


async def test_a_record_round_trips() -> None:
    codec = RecordCodec()
    record = finished_record()
    back = codec.decode(
        codec.encode(record), codec.encode_fixed(record), events=record.log.next_sequence_number
    )
    assert back.snapshot() == record.snapshot()
    assert back.input_items == record.input_items
    assert back.spec == dataclasses.replace(record.spec, input=())
    assert back.usage == record.usage
    assert back.done and back.finished.is_set() and back.persisted.is_set()
    # The log goes on after the stored events.
    assert back.log.next_sequence_number == record.log.next_sequence_number


async def test_every_field_but_the_live_ones_is_stored() -> None:
    """A field someone adds to ResponseRecord is stored without touching the codec."""
    codec = RecordCodec()
    record = finished_record()
    state = msgspec.json.decode(codec.encode(record))
    fixed = msgspec.json.decode(codec.encode_fixed(record))
    live = {"log", "cancel_scope", "finished", "persisted", "arrival"}
    assert set(state) | set(fixed) == {f.name for f in dataclasses.fields(ResponseRecord)} - live
    assert set(fixed) == {"spec", "context", "input_items"}


async def test_a_large_input_is_stored_once_and_not_rewritten() -> None:
    codec = RecordCodec()
    big = "x" * 2_000_000
    record = finished_record(big)
    fixed = codec.encode_fixed(record)
    assert big.encode() in fixed
    assert len(fixed) < len(big) * 1.1
    # What is rewritten as the response progresses holds none of it.
    assert len(codec.encode(record)) < 10_000


async def test_events_round_trip() -> None:
    codec = RecordCodec()
    record = finished_record()
    events = record.log.since(0)
    assert [codec.decode_event(codec.encode_event(e)) for e in events] == events
    assert isinstance(events[-1], ev.ResponseCompleted)


async def test_a_record_from_a_newer_exloop_is_refused() -> None:
    codec = RecordCodec()
    record = finished_record()
    data = msgspec.json.decode(codec.encode(record))
    data["schema_version"] = SCHEMA_VERSION + 1
    with pytest.raises(StoreError, match="newer"):
        codec.decode(msgspec.json.encode(data), codec.encode_fixed(record), events=0)


async def test_stored_samples_of_every_layout_still_load() -> None:
    """Records written by earlier versions (samples/record_v*.json: the state, then the fixed
    part, one per line) must keep loading."""
    codec = RecordCodec()
    samples = sorted(SAMPLES.glob("record_v*.json"))
    assert samples
    for sample in samples:
        state, fixed = sample.read_bytes().splitlines()
        record = codec.decode(state, fixed, events=11)
        response = record.snapshot()
        assert response.status == "completed" and response.metadata == {"k": "v"}
        assert record.input_items[0].text == "hello"  # type: ignore[union-attr]
        assert response.output[0].text == "Hi there."  # type: ignore[union-attr]


async def test_mcp_authorization_is_never_stored() -> None:
    codec = RecordCodec()
    record = finished_record()
    server = McpServerSpec("tools", "https://mcp.example/", {"Authorization": "Bearer s3cr3t"})
    record.spec = dataclasses.replace(
        record.spec, tools=dataclasses.replace(record.spec.tools, mcp=(server,))
    )
    stored = codec.encode_fixed(record) + codec.encode(record)
    assert b"s3cr3t" not in stored
    back = codec.decode(codec.encode(record), codec.encode_fixed(record), events=0)
    assert back.spec.tools.mcp[0].url == "https://mcp.example/"
