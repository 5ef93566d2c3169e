from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.fixtures.web import WebFixture


@pytest.fixture(scope="session")
def web() -> Iterator[WebFixture]:
    """The loopback web (articles, search stand-ins, hostile pages), shared by the session."""
    with WebFixture() as fixture:
        yield fixture
