"""End-to-end tests run the real server (``exloop serve``, default model) as a subprocess and
talk to it over HTTP, with raw httpx or OpenAI's own SDK."""

from __future__ import annotations

import contextlib
import os
import re
import resource
import shutil
import signal
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
from openai.types.responses import Response

from tests.fixtures.web import WebFixture

#: Loading the model and llguidance's tokenizer takes a few seconds on two cores.
STARTUP_TIMEOUT = 120.0
SHUTDOWN_TIMEOUT = 20.0
#: Long prompts prefill slowly on two busy cores.
REQUEST_TIMEOUT = 300.0


#: The line ``exloop serve`` logs once its socket is bound.
_LISTENING = re.compile(r"listening on http://127\.0\.0\.1:(\d+)")


class ServerProcess:
    """``exloop serve`` on a free loopback port (``--port 0``: the server binds any free port
    and logs which), with its log in a temporary file and its default response store in a
    temporary data directory (``--store`` overrides it); with ``memory_limit``, its address
    space is capped at that many bytes (``RLIMIT_AS``)."""

    port: int
    base_url: str

    def __init__(
        self,
        *flags: str,
        env: dict[str, str] | None = None,
        memory_limit: int | None = None,
        wait_ready: bool = True,
    ) -> None:
        """Start the server; return once ``/health`` says it is ready, or with ``wait_ready``
        False once it answers at all (the model may still be loading)."""
        self.data_dir = Path(tempfile.mkdtemp(prefix="exloop-e2e-data-"))
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
            "0",
            # One llama.cpp thread unless a test says otherwise: servers, in-process engines
            # and the test client share few cores, and oversubscribed threads slow sharply.
            *(() if "--threads" in flags else ("--threads", "1")),
            *flags,
        ]
        self._process = subprocess.Popen(
            command,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "EXLOOP_DATA_DIR": str(self.data_dir), **(env or {})},
            preexec_fn=None if memory_limit is None else partial(_limit_memory, memory_limit),
        )
        self._wait(ready=wait_ready)

    def _wait(self, *, ready: bool) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                self.stop()
                pytest.fail(f"exloop serve exited with {self._process.returncode}:\n{self.log()}")
            listening = _LISTENING.search(self.log())
            if listening is not None:
                self.port = int(listening[1])
                self.base_url = f"http://127.0.0.1:{self.port}"
                with contextlib.suppress(httpx.TransportError):
                    status = httpx.get(f"{self.base_url}/health", timeout=10.0).status_code
                    if status == 200 or not ready:
                        return
            time.sleep(0.2)
        self.stop()
        pytest.fail(f"exloop serve did not answer /health in {STARTUP_TIMEOUT}s:\n{self.log()}")

    @property
    def pid(self) -> int:
        return self._process.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait(self, timeout: float = SHUTDOWN_TIMEOUT) -> int:
        """Wait for the process to exit (after a signal the test sent); its exit code."""
        return self._process.wait(timeout)

    def send_signal(self, sig: int) -> None:
        self._process.send_signal(sig)

    def kill(self) -> None:
        """SIGKILL: the process dies at once, as in a crash."""
        self._process.kill()
        self._process.wait()

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
        """Stop the server and delete its log and data directory."""
        self.stop()
        self.log_path.unlink(missing_ok=True)
        shutil.rmtree(self.data_dir, ignore_errors=True)


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


@pytest.fixture
def sdk() -> Iterator[Callable[[ServerProcess], openai.OpenAI]]:
    """OpenAI's SDK pointed at a given server (for tests that run several); the clients close
    when the test ends."""
    with contextlib.ExitStack() as clients:

        def connect(server: ServerProcess) -> openai.OpenAI:
            return clients.enter_context(
                openai.OpenAI(
                    base_url=f"{server.base_url}/v1",
                    api_key="k",
                    max_retries=0,
                    timeout=REQUEST_TIMEOUT,
                )
            )

        yield connect


@pytest.fixture(scope="session")
def endless() -> Callable[[openai.OpenAI], Response]:
    """Creates a background response that runs until it is stopped (the end of turn banned, a
    large budget): work to resume, cancel, delete or kill."""
    import llama_cpp

    from exloop.engine.default_model import default_model_path

    vocab = llama_cpp.Llama(str(default_model_path()), vocab_only=True, verbose=False)
    try:
        eos = int(vocab.token_eos())
    finally:
        vocab.close()

    def create(client: openai.OpenAI) -> Response:
        return client.responses.create(
            model="default",
            input="Write a very long story about a dragon.",
            background=True,
            max_output_tokens=4000,
            extra_body={"logit_bias": {str(eos): -100}},
        )

    return create
