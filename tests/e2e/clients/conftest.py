"""Real clients for the end-to-end tests: Python ones come with the test extra; Codex CLI is
installed from npm on first use into ``~/.cache/exloop/clients`` (``EXLOOP_CLIENTS_DIR``).
The Agents SDK's tests share a server that searches the loopback web."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from agents import OpenAIResponsesModel, set_tracing_disabled

from tests.fixtures.web import WebFixture

from ..conftest import REQUEST_TIMEOUT, ServerProcess

#: The Codex CLI release the tests drive (``EXLOOP_CODEX_VERSION`` picks another).
CODEX_VERSION = os.environ.get("EXLOOP_CODEX_VERSION", "0.171.0")
#: npm downloads a 400 MB platform binary.
INSTALL_TIMEOUT = 900


def clients_dir() -> Path:
    default = Path.home() / ".cache" / "exloop" / "clients"
    return Path(os.environ.get("EXLOOP_CLIENTS_DIR", default))


@pytest.fixture(scope="session")
def codex() -> Path:
    """The ``codex`` executable of :data:`CODEX_VERSION`, installed once with npm."""
    prefix = clients_dir() / f"codex-{CODEX_VERSION}"
    binary = prefix / "node_modules" / ".bin" / "codex"
    if not binary.exists():
        npm = shutil.which("npm")
        if npm is None:
            pytest.fail("npm is needed to install Codex CLI for its end-to-end tests")
        prefix.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [npm, "install", "--prefix", str(prefix), "--no-audit", "--no-fund",
             f"@openai/codex@{CODEX_VERSION}"],
            check=True,
            timeout=INSTALL_TIMEOUT,
            capture_output=True,
        )  # fmt: skip
    return binary


# -- the Agents SDK --------------------------------------------------------------------------

#: Greedy, with the answer under exloop's ``grammar`` field so it is short and sure (a forced
#: tool call before it is generated under its own grammar).
SETTINGS: dict[str, Any] = {"temperature": 0.0, "max_tokens": 200}


def answer(pattern: str) -> dict[str, object]:
    """``extra_body`` that makes the answer match ``pattern``."""
    return {"grammar": {"type": "regex", "value": pattern}}


@pytest.fixture(scope="module")
def web() -> Iterator[WebFixture]:
    with WebFixture() as fixture:
        yield fixture


@pytest.fixture(scope="module")
def search_server(web: WebFixture) -> Iterator[ServerProcess]:
    """A server whose web search reads the loopback web; one search round per response."""
    with ServerProcess(
        "--search-provider", "searxng", "--searxng-url", web.searxng_url,
        "--fetch-allow-private", "--max-tool-rounds", "1",
    ) as server:  # fmt: skip
        yield server


@pytest.fixture
async def model(search_server: ServerProcess) -> AsyncIterator[OpenAIResponsesModel]:
    set_tracing_disabled(True)  # traces would go to OpenAI's backend
    async with openai.AsyncOpenAI(
        base_url=f"{search_server.base_url}/v1",
        api_key="unused",
        max_retries=0,
        timeout=REQUEST_TIMEOUT,
    ) as client:
        yield OpenAIResponsesModel(model="exloop", openai_client=client)
