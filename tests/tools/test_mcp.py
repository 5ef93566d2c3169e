"""The MCP client against the real fixture server over stdio, the SSRF-guarded transport, and
the ``--mcp-config`` file."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from exloop.tools.mcp_client import (
    ExecutionError,
    HttpTarget,
    McpLimits,
    McpUnavailable,
    ProtocolError,
    StdioTarget,
    connect,
)
from exloop.tools.mcp_servers import ConfigError, ConfiguredServers, load_config

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = StdioTarget(
    sys.executable,
    ("-m", "tests.fixtures.mcp_server", "stdio"),
    {"PYTHONPATH": str(ROOT)},
    str(ROOT),
)


async def test_list_and_call_over_stdio() -> None:
    limits = McpLimits(max_output_chars=60, call_timeout=20)
    async with connect(FIXTURE, limits) as connection:
        tools = {tool.name: tool for tool in await connection.list_tools()}
        assert {"add", "echo", "write_note", "fail", "slow", "big"} <= set(tools)
        assert tools["add"].read_only and not tools["write_note"].read_only
        assert tools["add"].input_schema["required"] == ["a", "b"]

        assert (await connection.call_tool("add", {"a": 2, "b": 3})).output == "5"
        failed = await connection.call_tool("fail", {"message": "boom"})
        assert isinstance(failed.error, ExecutionError) and failed.output is None
        assert "the tool failed: boom" in failed.text
        big = await connection.call_tool("big", {"size": 100})
        assert big.output is not None and big.output.startswith("0123456789" * 6)
        assert "[Output truncated: the first 60 of 100 characters are shown.]" in big.output


async def test_a_call_past_its_timeout_is_an_error() -> None:
    async with connect(FIXTURE, McpLimits(call_timeout=1)) as connection:
        result = await connection.call_tool("slow", {"task": "x"})
    assert isinstance(result.error, ProtocolError) and "1 s" in result.error.message


async def test_guarded_connection_refuses_loopback() -> None:
    with pytest.raises(McpUnavailable, match="Refused to connect .* 127.0.0.1"):
        async with connect(HttpTarget("http://127.0.0.1:9/mcp"), McpLimits(), guarded=True):
            pass


async def test_unreachable_server_is_unavailable() -> None:
    with pytest.raises(McpUnavailable, match="Could not connect"):
        async with connect(HttpTarget("http://127.0.0.1:9/mcp"), McpLimits(connect_timeout=2)):
            pass


async def test_configured_servers_connect_and_call() -> None:
    async with ConfiguredServers({"calc": FIXTURE}, McpLimits()) as servers:
        assert "add" in {tool.name for tool in servers.tools()["calc"]}
        assert (await servers.call("calc", "add", {"a": 1, "b": 1})).output == "2"
        down = await servers.call("nope", "add", {})
        assert down.error is not None and "not connected" in down.error.message


def test_config_file_shapes(tmp_path: Path) -> None:
    path = tmp_path / "mcp.json"
    path.write_text(
        json.dumps(
            {
                "mcpServers": {
                    "files": {"command": "npx", "args": ["-y", "server"], "env": {"A": "1"}},
                    "remote": {"url": "https://mcp.example.com/mcp", "headers": {"X": "y"}},
                    "legacy": {"url": "http://127.0.0.1:8000/sse", "type": "sse"},
                    "off": {"command": "x", "disabled": True},
                }
            }
        )
    )
    targets = load_config(path)
    assert targets == {
        "files": StdioTarget("npx", ("-y", "server"), {"A": "1"}),
        "remote": HttpTarget("https://mcp.example.com/mcp", {"X": "y"}),
        "legacy": HttpTarget("http://127.0.0.1:8000/sse", {}, "sse"),
    }


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ("not json", "not valid JSON"),
        ({"servers": {}}, '"mcpServers"'),
        ({"mcpServers": {"bad name": {"command": "x"}}}, "name"),
        ({"mcpServers": {"a": {"args": []}}}, '"command"'),
        ({"mcpServers": {"a": {"command": "x", "args": "y"}}}, "args"),
        ({"mcpServers": {"a": {"url": "ftp://x"}}}, "url"),
        ({"mcpServers": {"a": {"url": "http://x", "type": "ws"}}}, "type"),
    ],
)
def test_config_errors_name_the_problem(tmp_path: Path, document: object, message: str) -> None:
    path = tmp_path / "mcp.json"
    path.write_text(document if isinstance(document, str) else json.dumps(document))
    with pytest.raises(ConfigError, match=message):
        load_config(path)
