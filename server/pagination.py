"""OpenAI's cursor pagination for lists (``GET /v1/responses/{id}/input_items``).

``order`` sorts (``desc``, newest first, by default), ``after`` / ``before`` are item ids to
start after or end before, ``limit`` (1-100, default 20) caps the page, and the answer says
whether more items follow.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar

import msgspec

from .errors import invalid_request

T = TypeVar("T")

DEFAULT_LIMIT = 20
MAX_LIMIT = 100


@dataclass(frozen=True, slots=True)
class PageQuery:
    after: str | None = None
    before: str | None = None
    limit: int = DEFAULT_LIMIT
    order: Literal["asc", "desc"] = "desc"

    @classmethod
    def from_query(cls, query: Mapping[str, Sequence[str]]) -> PageQuery:
        """Read the query string; a bad value is a 400 naming it."""

        def one(name: str) -> str | None:
            values = query.get(name)
            return values[-1] if values else None

        limit = DEFAULT_LIMIT
        if (raw := one("limit")) is not None:
            try:
                limit = int(raw)
            except ValueError:
                raise invalid_request(f"limit must be an integer, got {raw!r}.", "limit") from None
            if not 1 <= limit <= MAX_LIMIT:
                raise invalid_request(
                    f"limit must be between 1 and {MAX_LIMIT}, got {limit}.", "limit"
                )
        order = one("order") or "desc"
        if order not in ("asc", "desc"):
            raise invalid_request(f"order must be 'asc' or 'desc', got {order!r}.", "order")
        return cls(one("after"), one("before"), limit, order)  # type: ignore[arg-type]


class Page(msgspec.Struct, Generic[T], frozen=True, omit_defaults=False):
    data: list[T]
    first_id: str | None
    last_id: str | None
    has_more: bool
    object: Literal["list"] = "list"


def paginate(items: Sequence[T], item_id: Callable[[T], str], query: PageQuery) -> Page[T]:
    """The page of ``items`` (given oldest first) that ``query`` asks for."""
    ordered = list(items) if query.order == "asc" else list(reversed(items))
    ids = [item_id(item) for item in ordered]
    start, end = 0, len(ordered)
    if query.after is not None:
        start = _position(ids, query.after, "after") + 1
    if query.before is not None:
        end = _position(ids, query.before, "before")
    window = ordered[start:end]
    data = window[: query.limit]
    return Page(
        data=data,
        first_id=item_id(data[0]) if data else None,
        last_id=item_id(data[-1]) if data else None,
        has_more=len(window) > len(data),
    )


def _position(ids: list[str], cursor: str, param: str) -> int:
    try:
        return ids.index(cursor)
    except ValueError:
        raise invalid_request(f"No item with id {cursor!r} in this list.", param) from None


def item_id(item: Any) -> str:
    """The id of a stored item (every stored input item has one)."""
    return str(item.id)
