from collections.abc import Iterator

import pytest

from tests.fixtures.redis import RedisServer


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A fresh redis-server on a free loopback port, for this test alone."""
    with RedisServer() as server:
        yield server
