"""Server-sent events: the only place stream events become text.

A Responses stream sends each event as ``event: <type>`` plus ``data: <json>``; a Chat
Completions stream sends bare ``data:`` lines. Both end with ``data: [DONE]`` (the Open
Responses spec requires it and OpenAI's SDKs accept it).
"""

from __future__ import annotations

import msgspec

from exloop.orchestrator.events import StreamEvent

DONE = b"data: [DONE]\n\n"

_encoder = msgspec.json.Encoder()


def encode_event(event: StreamEvent) -> bytes:
    """``event: <type>\\ndata: <json>\\n\\n`` for one stream event."""
    tag = type(event).__struct_config__.tag
    return b"event: " + str(tag).encode() + b"\ndata: " + _encoder.encode(event) + b"\n\n"


def encode_data(payload: object) -> bytes:
    """``data: <json>\\n\\n`` for one payload (a chat chunk or a stream error)."""
    return b"data: " + _encoder.encode(payload) + b"\n\n"
