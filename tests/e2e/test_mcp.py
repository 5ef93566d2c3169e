"""MCP tools end to end: real MCP servers (the ``mcp`` SDK's MCPServer, in
``tests/fixtures/mcp_server.py``) started on loopback, the real exloop server and model, and
OpenAI's SDK. One server speaks streamable HTTP and is named by the requests' ``mcp`` tools;
another runs over stdio from an ``--mcp-config`` file.

The tiny default model does not reliably choose a tool, so the tests force calls with
``tool_choice``; ``--max-tool-rounds 1`` makes it answer right after one round of calls.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
import pydantic
import pytest
from openai.types.responses import Response, ResponseStreamEvent
from openai.types.responses.response_output_item import McpApprovalRequest, McpCall, McpListTools

from tests.fixtures.mcp_server import LOG_ENV

from .conftest import REQUEST_TIMEOUT, ServerProcess

ROOT = Path(__file__).resolve().parents[2]
SDK_EVENT: pydantic.TypeAdapter[ResponseStreamEvent] = pydantic.TypeAdapter(ResponseStreamEvent)
QUESTION = "What is 2 plus 3? Use the add tool."
#: Keeps the answer after the calls short and sure to end (calls are generated under their
#: own grammar): the tests are about the calls.
SHORT = {"seed": 1, "grammar": {"type": "regex", "value": "(Done|The answer is [0-9]{1,6})\\."}}


@dataclass
class McpFixture:
    """A fixture MCP server process and the log of what reached it."""

    url: str
    log_path: Path
    process: subprocess.Popen[bytes]

    def entries(self) -> list[dict[str, Any]]:
        if not self.log_path.exists():
            return []
        return [json.loads(line) for line in self.log_path.read_text().splitlines() if line]

    def calls(self, tool: str, event: str = "called") -> list[dict[str, Any]]:
        return [e for e in self.entries() if e.get("tool") == tool and e.get("event") == event]

    def wait_for(self, tool: str, event: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.calls(tool, event):
            if time.monotonic() > deadline:
                pytest.fail(f"the MCP server never logged {tool} {event}: {self.entries()}")
            time.sleep(0.1)


def _env(log_path: Path) -> dict[str, str]:
    return {**os.environ, LOG_ENV: str(log_path), "PYTHONPATH": str(ROOT)}


@pytest.fixture(scope="module")
def mcp_http(tmp_path_factory: pytest.TempPathFactory) -> Iterator[McpFixture]:
    """The fixture server over streamable HTTP on a loopback port."""
    log_path = tmp_path_factory.mktemp("mcp") / "http.log"
    # Port 0: the server binds a free port and prints it once it listens.
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.fixtures.mcp_server", "streamable-http", "0"],
        env=_env(log_path),
        cwd=ROOT,
        stdout=subprocess.PIPE,
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    if not line.strip().isdigit():
        process.kill()
        process.wait()
        process.stdout.close()
        pytest.fail(f"the MCP fixture server did not start: {line!r}")
    port = int(line)
    with process.stdout:
        yield McpFixture(f"http://127.0.0.1:{port}/mcp", log_path, process)
        process.terminate()
        process.wait(10)


@pytest.fixture(scope="module")
def stdio_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("mcp") / "stdio.log"


@pytest.fixture(scope="module")
def mcp_server(
    tmp_path_factory: pytest.TempPathFactory, stdio_log: Path
) -> Iterator[ServerProcess]:
    """exloop with loopback MCP servers allowed and the stdio fixture configured as 'calc'."""
    config = tmp_path_factory.mktemp("mcp") / "mcp.json"
    server = {
        "command": sys.executable,
        "args": ["-m", "tests.fixtures.mcp_server", "stdio"],
        "cwd": str(ROOT),
        "env": {LOG_ENV: str(stdio_log), "PYTHONPATH": str(ROOT)},
    }
    config.write_text(json.dumps({"mcpServers": {"calc": server}}))
    flags = ("--fetch-allow-private", "--max-tool-rounds", "1", "--mcp-config", str(config))
    with ServerProcess(*flags) as process:
        yield process


@pytest.fixture
def mcp_client(mcp_server: ServerProcess) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(
        base_url=f"{mcp_server.base_url}/v1",
        api_key="test",
        max_retries=0,
        timeout=REQUEST_TIMEOUT,
    ) as sdk:
        yield sdk


def mcp_tool(url: str, **fields: Any) -> Any:
    return {"type": "mcp", "server_label": "fix", "server_url": url, **fields}


def force(name: str) -> Any:
    return {"type": "mcp", "server_label": "fix", "name": name}


def create(client: openai.OpenAI, **fields: Any) -> Response:
    fields.setdefault("input", QUESTION)
    fields.setdefault("max_output_tokens", 120)
    response: Response = client.responses.create(model="default", extra_body=SHORT, **fields)
    Response.model_validate(response.model_dump())
    return response


def items(response: Response, kind: type[Any]) -> list[Any]:
    return [item for item in response.output if isinstance(item, kind)]


def test_list_call_answer_with_allowed_tools(
    mcp_client: openai.OpenAI, mcp_http: McpFixture
) -> None:
    before = len(mcp_http.calls("add"))
    response = create(
        mcp_client,
        tools=[mcp_tool(mcp_http.url, require_approval="never", allowed_tools=["add", "echo"])],
        tool_choice=force("add"),
    )
    assert response.status == "completed"
    [listing] = items(response, McpListTools)
    assert listing.server_label == "fix" and listing.error is None
    assert sorted(tool.name for tool in listing.tools) == ["add", "echo"]
    add = next(tool for tool in listing.tools if tool.name == "add")
    assert add.annotations == {"readOnlyHint": True}
    [call] = items(response, McpCall)
    assert call.name == "add" and call.server_label == "fix" and call.status == "completed"
    arguments = json.loads(call.arguments)
    assert call.output == str(arguments["a"] + arguments["b"])
    assert call.error is None
    assert [e["arguments"] for e in mcp_http.calls("add")[before:]] == [arguments]
    assert response.output[-1].type == "message"
    # The request's mcp tool is echoed without its secrets.
    echoed = response.tools[0].model_dump()
    assert echoed["server_label"] == "fix" and echoed["headers"] is None


def test_stream_events_in_order(mcp_client: openai.OpenAI, mcp_http: McpFixture) -> None:
    with mcp_client.responses.stream(
        model="default",
        input=QUESTION,
        tools=[mcp_tool(mcp_http.url, require_approval="never")],
        tool_choice=force("add"),
        max_output_tokens=120,
        extra_body=SHORT,
    ) as stream:
        events = [event.model_dump(mode="json", warnings=False) for event in stream]
        final = stream.get_final_response()
    for event in events:
        SDK_EVENT.validate_python(event)
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    listing = [e["type"] for e in events if e.get("output_index") == 0]
    assert listing == [
        "response.output_item.added",
        "response.mcp_list_tools.in_progress",
        "response.mcp_list_tools.completed",
        "response.output_item.done",
    ]
    call = [e for e in events if e.get("output_index") == 1]
    kinds = [e["type"] for e in call]
    deltas = kinds.count("response.mcp_call_arguments.delta")
    assert deltas >= 1
    assert kinds == [
        "response.output_item.added",
        "response.mcp_call.in_progress",
        *["response.mcp_call_arguments.delta"] * deltas,
        "response.mcp_call_arguments.done",
        "response.mcp_call.completed",
        "response.output_item.done",
    ]
    streamed = "".join(e["delta"] for e in call if e["type"] == "response.mcp_call_arguments.delta")
    assert streamed == call[-1]["item"]["arguments"]
    assert call[-1]["item"]["output"] is not None
    assert final.status == "completed" and isinstance(final.output[1], McpCall)


def test_approval_requested_then_approved_or_refused(
    mcp_client: openai.OpenAI, mcp_http: McpFixture
) -> None:
    tools = [mcp_tool(mcp_http.url)]  # require_approval defaults to "always"
    before = len(mcp_http.calls("add"))
    asked = create(mcp_client, tools=tools, tool_choice=force("add"))
    assert asked.status == "completed"
    [request] = items(asked, McpApprovalRequest)
    assert request.name == "add" and request.server_label == "fix"
    assert not items(asked, McpCall)
    assert len(mcp_http.calls("add")) == before

    refused = create(
        mcp_client,
        previous_response_id=asked.id,
        input=[
            {
                "type": "mcp_approval_response",
                "approval_request_id": request.id,
                "approve": False,
                "reason": "not now",
            }
        ],
        tools=tools,
    )
    assert refused.status == "completed"
    assert not items(refused, McpCall) and not items(refused, McpListTools)
    assert len(mcp_http.calls("add")) == before

    approved = create(
        mcp_client,
        previous_response_id=asked.id,
        input=[
            {"type": "mcp_approval_response", "approval_request_id": request.id, "approve": True}
        ],
        tools=tools,
        tool_choice=force("add"),
    )
    assert approved.status == "completed"
    # The approved call runs first; the conversation's listing is not repeated.
    first = approved.output[0]
    assert isinstance(first, McpCall)
    assert first.approval_request_id == request.id and first.arguments == request.arguments
    assert first.status == "completed" and first.output is not None
    assert not items(approved, McpListTools)
    assert [e["arguments"] for e in mcp_http.calls("add")[before:]] == [
        json.loads(request.arguments)
    ]
    assert approved.output[-1].type == "message"


def test_a_background_response_starts_with_its_approved_call(
    mcp_client: openai.OpenAI, mcp_http: McpFixture
) -> None:
    # Queued until its work begins; here that is the approved call, before any generation.
    tools = [mcp_tool(mcp_http.url)]
    asked = create(mcp_client, tools=tools, tool_choice=force("add"))
    [request] = items(asked, McpApprovalRequest)
    approval = {"type": "mcp_approval_response", "approval_request_id": request.id}
    queued = create(
        mcp_client,
        previous_response_id=asked.id,
        input=[{**approval, "approve": True}],
        tools=tools,
        background=True,
    )
    assert queued.status == "queued"
    events = [e.type for e in mcp_client.responses.retrieve(queued.id, stream=True)]
    assert events[:3] == ["response.created", "response.queued", "response.in_progress"]
    final = mcp_client.responses.retrieve(queued.id)
    assert final.status == "completed"
    assert isinstance(final.output[0], McpCall) and final.output[0].status == "completed"


def test_server_down_is_a_listing_error(mcp_client: openai.OpenAI) -> None:
    # A port bound here but not listening refuses connections, and stays ours meanwhile.
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        down = f"http://127.0.0.1:{closed.getsockname()[1]}/mcp"
        response = create(mcp_client, tools=[mcp_tool(down)], max_output_tokens=30)
    assert response.status == "completed"
    [listing] = items(response, McpListTools)
    assert listing.error and "connect" in listing.error.lower()
    assert listing.tools == []


def test_tool_error_is_the_calls_error(mcp_client: openai.OpenAI, mcp_http: McpFixture) -> None:
    response = create(
        mcp_client,
        input="Call the fail tool.",
        tools=[mcp_tool(mcp_http.url, require_approval="never", allowed_tools=["fail"])],
        tool_choice=force("fail"),
    )
    assert response.status == "completed"
    [call] = items(response, McpCall)
    assert call.status == "failed" and call.output is None
    assert call.error is not None and call.error.type == "mcp_tool_execution_error"
    assert "the tool failed" in json.dumps(call.error.content)


def test_slow_tool_is_cancelled_mid_call(mcp_client: openai.OpenAI, mcp_http: McpFixture) -> None:
    before = len(mcp_http.calls("slow", "started"))
    job = create(
        mcp_client,
        input="Start the long task.",
        tools=[mcp_tool(mcp_http.url, require_approval="never", allowed_tools=["slow"])],
        tool_choice=force("slow"),
        background=True,
        # Greedy: MCP schemas allow extra properties, and a draw at temperature 1 may write
        # them until max_output_tokens (which one depends on what the prefix cache reused).
        temperature=0,
    )
    deadline = time.monotonic() + REQUEST_TIMEOUT
    while len(mcp_http.calls("slow", "started")) == before:
        assert time.monotonic() < deadline, "the slow tool never started"
        assert mcp_client.responses.retrieve(job.id).status in ("queued", "in_progress")
        time.sleep(0.2)
    cancelled = mcp_client.responses.cancel(job.id)
    assert cancelled.status == "cancelled"
    [call] = items(cancelled, McpCall)
    assert call.status == "incomplete" and call.output is None
    # The cancellation reached the server: the tool's own task was cancelled.
    mcp_http.wait_for("slow", "cancelled", timeout=30)
    assert not mcp_http.calls("slow", "finished")


def test_private_server_url_is_refused(client: openai.OpenAI, mcp_http: McpFixture) -> None:
    """The shared server runs without --fetch-allow-private: the SSRF rule applies."""
    seen = len(mcp_http.entries())
    response = create(client, tools=[mcp_tool(mcp_http.url)], max_output_tokens=30)
    [listing] = items(response, McpListTools)
    assert listing.error is not None and "Refused to connect" in listing.error
    assert "127.0.0.1" in listing.error
    assert len(mcp_http.entries()) == seen  # nothing reached the server


def test_connector_id_is_a_clear_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.responses.create(
            model="default",
            input="hi",
            tools=[{"type": "mcp", "server_label": "x", "connector_id": "connector_gmail"}],
        )
    assert info.value.body["param"] == "tools[0].connector_id"  # type: ignore[index]


def test_chat_completions_uses_a_configured_server(
    mcp_client: openai.OpenAI, stdio_log: Path
) -> None:
    def calls() -> list[dict[str, Any]]:
        lines = stdio_log.read_text().splitlines() if stdio_log.exists() else []
        return [json.loads(line) for line in lines if '"event": "called"' in line]

    before = len(calls())
    completion = mcp_client.chat.completions.create(
        model="default",
        messages=[{"role": "user", "content": "Echo the word hello."}],
        tool_choice="required",
        max_tokens=120,
        extra_body=SHORT,
    )
    assert completion.choices[0].finish_reason == "stop"
    assert completion.choices[0].message.tool_calls is None
    assert len(calls()) == before + 1  # the stdio server ran the call

    # On the Responses API the same tool shows as an mcp_call on the configured server.
    response = create(mcp_client, input="Echo the word hello.", tool_choice="required")
    [call] = items(response, McpCall)
    assert call.server_label == "calc" and call.status == "completed"


def test_a_configured_stdio_server_is_restarted(mcp_client: openai.OpenAI, stdio_log: Path) -> None:
    def starts() -> list[int]:
        lines = stdio_log.read_text().splitlines() if stdio_log.exists() else []
        return [json.loads(line)["pid"] for line in lines if "stdio-start" in line]

    [*_, pid] = starts()
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 60
    while starts()[-1] == pid:
        assert time.monotonic() < deadline, "the stdio server was not restarted"
        time.sleep(0.2)
    deadline = time.monotonic() + 30
    while True:  # the restarted server lists its tools, then they are offered again
        response = create(mcp_client, input="Echo the word hi.", tool_choice="required")
        if items(response, McpCall) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    [call] = items(response, McpCall)
    assert call.server_label == "calc" and call.status == "completed"


def test_example_mcp_agent(mcp_server: ServerProcess, mcp_http: McpFixture) -> None:
    """examples/mcp_agent.py against the fixture server, approving the call on stdin."""
    before = len(mcp_http.calls("add"))
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "examples" / "mcp_agent.py"),
            QUESTION,
            "--server-url",
            mcp_http.url,
            "--base-url",
            f"{mcp_server.base_url}/v1",
            "--tool",
            "add",
        ],
        input="y\n",
        capture_output=True,
        text=True,
        timeout=REQUEST_TIMEOUT,
        check=True,
    )
    assert "[local] tools: add, echo, write_note, fail, slow, big" in result.stdout
    assert "Run add(" in result.stdout  # the approval prompt
    assert "[local] add(" in result.stdout and "-> " in result.stdout
    assert len(mcp_http.calls("add")) == before + 1
