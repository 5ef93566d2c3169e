"""OpenAI's cursor pagination over a response's input items."""

from __future__ import annotations

import pytest

from exloop.server.errors import ApiError
from exloop.server.pagination import PageQuery, paginate

IDS = [f"msg_{i}" for i in range(5)]


def page_ids(**query: object) -> tuple[list[str], bool]:
    page = paginate(IDS, str, PageQuery(**query))  # type: ignore[arg-type]
    assert page.first_id == (page.data[0] if page.data else None)
    assert page.last_id == (page.data[-1] if page.data else None)
    return page.data, page.has_more


def test_default_is_newest_first() -> None:
    assert page_ids() == (list(reversed(IDS)), False)


def test_limit_and_cursors() -> None:
    assert page_ids(order="asc", limit=2) == (["msg_0", "msg_1"], True)
    assert page_ids(order="asc", limit=2, after="msg_1") == (["msg_2", "msg_3"], True)
    assert page_ids(order="asc", limit=2, after="msg_3") == (["msg_4"], False)
    assert page_ids(order="desc", after="msg_3") == (["msg_2", "msg_1", "msg_0"], False)
    assert page_ids(order="asc", before="msg_2") == (["msg_0", "msg_1"], False)
    assert page_ids(order="asc", after="msg_4") == ([], False)


def test_unknown_cursor_is_a_400() -> None:
    with pytest.raises(ApiError) as info:
        page_ids(after="msg_x")
    assert info.value.param == "after"


@pytest.mark.parametrize(
    ("query", "param"),
    [
        ({"limit": ["0"]}, "limit"),
        ({"limit": ["101"]}, "limit"),
        ({"limit": ["x"]}, "limit"),
        ({"order": ["sideways"]}, "order"),
    ],
)
def test_bad_query_values(query: dict[str, list[str]], param: str) -> None:
    with pytest.raises(ApiError) as info:
        PageQuery.from_query(query)
    assert info.value.param == param


def test_query_parsing() -> None:
    query = PageQuery.from_query({"limit": ["7"], "order": ["asc"], "after": ["msg_1"]})
    assert query == PageQuery(after="msg_1", limit=7, order="asc")
