from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.redis import RedisServer


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(autouse=True)
def data_dir(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test keeps exloop's data (the default response store) in a directory of its own,
    never in the user's."""
    path = tmp_path_factory.mktemp("exloop-data")
    monkeypatch.setenv("EXLOOP_DATA_DIR", str(path))
    return path


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A fresh redis-server on a free loopback port, for this test alone."""
    with RedisServer() as server:
        yield server
