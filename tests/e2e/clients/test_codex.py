"""Codex CLI against exloop: ``codex exec`` with its default configuration and a custom
provider on the Responses API completes a turn that runs a command and answers, and
``codex exec resume`` a second turn over the replayed history.

The default model is tiny, so the server steers each turn (``--test-steer-tool
exec_command``, test-only): a new turn must call ``exec_command`` (its arguments under the
tool's schema), and the command's output is answered in words.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ..conftest import ServerProcess

#: Codex's first request holds its instructions and tool schemas: about 9,000 tokens here.
CONTEXT = "16384"
#: A turn prefills that prompt on two cores before generating (minutes when they are busy).
TURN_TIMEOUT = 2400


def provider_config(base_url: str) -> str:
    """The ``config.toml`` the README gives for exloop, pointed at ``base_url``; no update
    check (no internet here), no retries (a failure shows at once), and a long stream idle
    timeout for a CPU that prefills Codex's prompt for minutes before the first token."""
    return f"""\
model = "exloop"
model_provider = "exloop"
check_for_update_on_startup = false

[model_providers.exloop]
name = "exloop"
base_url = "{base_url}/v1"
wire_api = "responses"
stream_idle_timeout_ms = 3600000
request_max_retries = 0
stream_max_retries = 0
"""


@pytest.fixture(scope="module")
def codex_server() -> Iterator[ServerProcess]:
    with ServerProcess("--test-steer-tool", "exec_command", "--n-ctx", CONTEXT) as server:
        yield server


@pytest.fixture
def codex_home(tmp_path: Path, codex_server: ServerProcess) -> Path:
    home = tmp_path / "codex-home"
    home.mkdir()
    (home / "config.toml").write_text(provider_config(codex_server.base_url))
    return home


@dataclass(frozen=True)
class Turn:
    """What ``codex exec --json`` printed: its events, and its own log (stderr), which says
    why a tool call was refused."""

    events: list[dict[str, Any]]
    log: str

    def items(self, kind: str) -> list[dict[str, Any]]:
        """The completed items of ``kind``."""
        return [
            e["item"]
            for e in self.events
            if e["type"] == "item.completed" and e["item"]["type"] == kind
        ]


def run_codex(codex: Path, home: Path, workdir: Path, *args: str) -> Turn:
    """Run ``codex exec --json ...``; fails with Codex's output."""
    done = subprocess.run(
        [str(codex), "exec", "--json", "--skip-git-repo-check", "-C", str(workdir), *args],
        env={"PATH": "/usr/bin:/bin", "HOME": str(home.parent), "CODEX_HOME": str(home)},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=TURN_TIMEOUT,
    )
    events = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert done.returncode == 0, f"codex exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    assert not [e for e in events if e["type"] == "error"], done.stdout
    return Turn(events, done.stderr)


def test_exec_runs_a_command_answers_and_resumes(
    codex: Path, codex_home: Path, codex_server: ServerProcess, tmp_path: Path
) -> None:
    workdir = tmp_path / "work"
    workdir.mkdir()
    first = run_codex(codex, codex_home, workdir, "Run the shell command: echo hello")
    types = [event["type"] for event in first.events]
    assert types[0] == "thread.started" and types[-1] == "turn.completed", types
    # Run, whatever the tiny model made of the command: its exit status is not ours to test.
    commands = first.items("command_execution")
    assert len(commands) == 1 and commands[0]["command"], (first.events, first.log)
    answers = first.items("agent_message")
    assert answers and answers[-1]["text"].strip()
    thread = first.events[0]["thread_id"]

    # The second turn resumes the session: Codex replays the first turn as input.
    second = run_codex(codex, codex_home, workdir, "resume", thread, "Now run: echo bye")
    assert [e["type"] for e in second.events][-1] == "turn.completed"
    assert second.items("command_execution"), (second.events, second.log)
    assert second.items("agent_message")
    log = codex_server.log()
    assert "Traceback" not in log
