"""``POST /v1/responses/compact``: the request (a conversation) and the compacted answer.

The body is OpenAI's: ``model``, ``input`` (a string or items, as on create),
``instructions`` and ``previous_response_id``, and the caching and tier hints, which are
accepted and not used. The answer is ``{"id", "object": "response.compaction",
"created_at", "output", "usage"}``: the conversation's user messages followed by one
``compaction`` item, to send as the input of the next create.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from exloop.orchestrator.items import Compaction, Message
from exloop.orchestrator.resource import ResponseUsage
from exloop.orchestrator.spec import RunSpec

from .decode import decode_json
from .errors import invalid_request
from .limits import Limits
from .responses_request import input_items
from .schema_bounds import SchemaBudget


class CompactRequest(msgspec.Struct, kw_only=True, frozen=True):
    model: str | None = None
    input: str | list[Any] | None = None
    instructions: str | None = None
    previous_response_id: str | None = None
    prompt_cache_key: str | None = None
    prompt_cache_retention: str | None = None
    service_tier: str | None = None


class CompactedResponse(msgspec.Struct, frozen=True, omit_defaults=False):
    id: str
    created_at: int
    output: list[Message | Compaction]
    usage: ResponseUsage | None
    object: Literal["response.compaction"] = "response.compaction"


def parse_compact_request(body: bytes, *, served_model: str, limits: Limits) -> RunSpec:
    """Decode and validate a compact request into the run that compacts it (unstored)."""
    request = decode_json(body, CompactRequest, max_depth=limits.max_json_depth)
    budget = SchemaBudget(limits)
    items = input_items(request.input, budget) if request.input is not None else ()
    if not items and request.previous_response_id is None:
        raise invalid_request(
            "input must hold at least one item, or previous_response_id name a response.",
            "input",
            "missing_required_parameter",
        )
    return RunSpec(
        input=items,
        model=request.model or served_model,
        instructions=request.instructions,
        previous_response_id=request.previous_response_id,
        store=False,
    )
