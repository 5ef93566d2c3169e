"""Servers the benchmarks start as subprocesses: ``exloop serve`` and llama.cpp's llama-server.

Imported by the bench scripts both when run as ``python bench/x.py`` and as
``python -m bench.x`` (see :mod:`workloads`).
"""

from __future__ import annotations

import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import httpx

#: How much of a server's log to show when it fails to start (characters).
_LOG_TAIL = 2000


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Served:
    """A server process on a free loopback port, ready once ``/health`` answers 200 (it may
    answer 503 while its model loads); its output goes to a temporary file, as a deployed
    server's log would (closed by :meth:`stop`)."""

    def __init__(self, command: Sequence[str], *, startup: float = 300.0) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 (closed in stop())
        self.process = subprocess.Popen(
            [*command, "--host", "127.0.0.1", "--port", str(self.port)],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + startup
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.log.seek(0)
                tail = self.log.read().decode(errors="replace")[-_LOG_TAIL:]
                self.log.close()
                raise SystemExit(f"{command[0]} exited with {self.process.returncode}:\n{tail}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.3)
        self.stop()
        raise SystemExit(f"{command[0]} did not start in {startup:.0f}s")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()


def exloop(model: Path, *flags: str) -> Served:
    """``exloop serve`` on ``model`` with extra ``flags``."""
    return Served(
        [sys.executable, "-m", "exloop.server.cli", "serve", "--model", str(model), *flags]
    )
