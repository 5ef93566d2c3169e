"""End-to-end tests run the real server (``exloop serve``, default model) as a subprocess and
talk to it over HTTP, with raw httpx or OpenAI's own SDK."""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from functools import partial
from pathlib import Path

import httpx
import openai
import pytest

from tests.fixtures.web import WebFixture

#: Loading the model and llguidance's tokenizer takes a few seconds on two cores.
STARTUP_TIMEOUT = 120.0
SHUTDOWN_TIMEOUT = 20.0
#: Long prompts prefill slowly on two busy cores.
REQUEST_TIMEOUT = 300.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerProcess:
    """``exloop serve`` on a free loopback port, with its log in a temporary file; with
    ``memory_limit``, its address space is capped at that many bytes (``RLIMIT_AS``)."""

    def __init__(
        self,
        *flags: str,
        env: dict[str, str] | None = None,
        memory_limit: int | None = None,
        wait_ready: bool = True,
    ) -> None:
        """Start the server; return once ``/health`` says it is ready, or with ``wait_ready``
        False once it answers at all (the model may still be loading)."""
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self._log = tempfile.NamedTemporaryFile(  # noqa: SIM115 (closed in stop())
            prefix="exloop-e2e-", suffix=".log", delete=False
        )
        self.log_path = Path(self._log.name)
        command = [
            sys.executable,
            "-m",
            "exloop.server.cli",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            # One llama.cpp thread unless a test says otherwise: servers, in-process engines
            # and the test client share few cores, and oversubscribed threads slow sharply.
            *(() if "--threads" in flags else ("--threads", "1")),
            *flags,
        ]
        self._process = subprocess.Popen(
            command,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            preexec_fn=None if memory_limit is None else partial(_limit_memory, memory_limit),
        )
        self._wait(ready=wait_ready)

    def _wait(self, *, ready: bool) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                self.stop()
                pytest.fail(f"exloop serve exited with {self._process.returncode}:\n{self.log()}")
            try:
                status = httpx.get(f"{self.base_url}/health", timeout=1.0).status_code
                if status == 200 or not ready:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        self.stop()
        pytest.fail(f"exloop serve did not answer /health in {STARTUP_TIMEOUT}s:\n{self.log()}")

    @property
    def pid(self) -> int:
        return self._process.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)
            try:
                self._process.wait(SHUTDOWN_TIMEOUT)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._log.close()

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        """Stop the server and delete its log."""
        self.stop()
        self.log_path.unlink(missing_ok=True)


def _limit_memory(limit: int) -> None:
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


@pytest.fixture(scope="session")
def server() -> Iterator[ServerProcess]:
    """The shared server, with default settings."""
    with ServerProcess() as process:
        yield process


@pytest.fixture(scope="session")
def base_url(server: ServerProcess) -> str:
    return server.base_url


@pytest.fixture
def start_server() -> Iterator[Callable[..., ServerProcess]]:
    """Start another server with extra flags (``start_server("--api-key", "k")``); it stops
    when the test ends."""
    with contextlib.ExitStack() as started:

        def start(
            *flags: str, env: dict[str, str] | None = None, wait_ready: bool = True
        ) -> ServerProcess:
            return started.enter_context(ServerProcess(*flags, env=env, wait_ready=wait_ready))

        yield start


@pytest.fixture
def http(base_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base_url, timeout=REQUEST_TIMEOUT) as client:
        yield client


@pytest.fixture
def client(base_url: str) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(
        base_url=f"{base_url}/v1", api_key="test", max_retries=0, timeout=REQUEST_TIMEOUT
    ) as sdk:
        yield sdk


@pytest.fixture
async def async_client(base_url: str) -> AsyncIterator[openai.AsyncOpenAI]:
    """For tests marked ``pytest.mark.anyio``."""
    async with openai.AsyncOpenAI(
        base_url=f"{base_url}/v1", api_key="test", max_retries=0, timeout=REQUEST_TIMEOUT
    ) as sdk:
        yield sdk


@pytest.fixture
def web() -> Iterator[WebFixture]:
    """The loopback web (articles and search stand-ins), fresh per test so its request log is
    the test's own; servers search it when started with ``web_flags(web)``."""
    with WebFixture() as fixture:
        yield fixture


def web_flags(web: WebFixture) -> tuple[str, ...]:
    """``exloop serve`` flags that search the loopback web through its SearXNG stand-in."""
    return (
        "--search-provider", "searxng", "--searxng-url", web.searxng_url,
        "--fetch-allow-private",
    )  # fmt: skip
