"""MCP in the orchestrator without a network: what create() refuses, and how MCP items read
to the model. (The runs themselves are tested end to end against real servers:
tests/e2e/test_mcp.py.)"""

from __future__ import annotations

import pytest

from exloop.orchestrator.conversation import to_messages
from exloop.orchestrator.errors import InvalidRequest
from exloop.orchestrator.items import (
    InputText,
    McpApprovalRequest,
    McpApprovalResponse,
    McpCall,
    McpListTools,
    McpToolExecutionError,
    Message,
)
from exloop.orchestrator.mcp import McpSettings
from exloop.orchestrator.service import Orchestrator
from exloop.orchestrator.spec import McpApproval, McpServerSpec, McpToolFilter, RunSpec, ToolPolicy

from .scripted import ScriptedEngine, say

pytestmark = pytest.mark.anyio

SERVER = McpServerSpec("fix", "http://mcp.example.com/mcp")
ENABLED = McpSettings()


def user(text: str) -> Message:
    return Message(role="user", content=[InputText(text)])


async def refusal(spec: RunSpec, mcp: McpSettings | None = ENABLED) -> InvalidRequest:
    async with Orchestrator(ScriptedEngine([say("x")]), model_name="m", mcp=mcp) as orch:
        with pytest.raises(InvalidRequest) as info:
            await orch.create(spec)
    return info.value


async def test_mcp_tools_need_mcp_support() -> None:
    spec = RunSpec(input=(user("hi"),), model="m", tools=ToolPolicy(mcp=(SERVER,)))
    assert (await refusal(spec, mcp=None)).param == "tools"


async def test_an_approval_must_answer_a_request_of_the_conversation() -> None:
    answer = McpApprovalResponse(approval_request_id="mcpr_nope", approve=True)
    spec = RunSpec(input=(answer,), model="m", tools=ToolPolicy(mcp=(SERVER,)))
    assert (await refusal(spec)).param == "input[0].approval_request_id"


async def test_an_approved_call_needs_its_server_among_the_tools() -> None:
    request = McpApprovalRequest(id="mcpr_1", server_label="fix", name="add", arguments="{}")
    answer = McpApprovalResponse(approval_request_id="mcpr_1", approve=True)
    spec = RunSpec(input=(request, answer), model="m")
    assert (await refusal(spec)).param == "tools"


async def test_required_tool_choice_needs_a_tool() -> None:
    spec = RunSpec(input=(user("hi"),), model="m", tools=ToolPolicy(mode="required"))
    assert (await refusal(spec)).param == "tool_choice"


def test_approval_filters() -> None:
    read_only_free = McpApproval(never=McpToolFilter(read_only=True))
    assert not read_only_free.needed("add", read_only=True)
    assert read_only_free.needed("write_note", read_only=False)
    named = McpApproval(
        never=McpToolFilter(frozenset({"add", "echo"})), always=McpToolFilter(frozenset({"echo"}))
    )
    assert not named.needed("add", read_only=False)
    assert named.needed("echo", read_only=True)  # always wins
    assert McpApproval().needed("add", read_only=True)  # OpenAI's default: always


def test_mcp_items_as_the_model_reads_them() -> None:
    items = [
        user("add 2 and 3"),
        McpListTools(id="mcpl_1", server_label="fix", tools=[]),
        McpCall(id="mcp_1", server_label="fix", name="add", arguments='{"a": 2}', output="5"),
        McpCall(
            id="mcp_2",
            server_label="fix",
            name="fail",
            arguments="{}",
            error=McpToolExecutionError([{"type": "text", "text": "boom"}]),
            status="failed",
        ),
        McpApprovalRequest(id="mcpr_1", server_label="fix", name="write_note", arguments="{}"),
        McpApprovalResponse(approval_request_id="mcpr_1", approve=False, reason="no"),
    ]
    messages = to_messages(items)
    assert [m.role for m in messages] == [
        "user",
        "assistant",
        "tool",
        "assistant",
        "tool",
        "assistant",
        "tool",
    ]
    assert messages[2].content == "5"
    assert messages[4].content == "Error: boom"
    assert messages[5].tool_calls[0].name == "write_note"
    assert messages[6].content == "The user declined to run this call. Reason: no"
