"""A test-only hook that steers a tiny model through an agent's turn: ``--test-steer-tool``.

Real agent clients (Codex CLI) cannot be told to force a tool call, and the default test model
is too small to choose one by itself. With ``--test-steer-tool NAME`` (hidden from ``--help``,
never for production), a create request that opens a turn (its input ends with a user
message) gets ``tool_choice`` naming the tool ``NAME`` (a function or custom tool;
``namespace.tool`` inside a namespace) when it has that tool, and one that answers tool
results (its input ends with a tool call's output) gets ``tool_choice: "none"``, so the turn
is: one call, then a worded answer. The response still echoes the client's own
``tool_choice``."""

from __future__ import annotations

from dataclasses import replace

from exloop.orchestrator.items import CustomToolCallOutput, FunctionCallOutput, Message
from exloop.orchestrator.spec import RunSpec
from exloop.orchestrator.toolset import entries


def steered(spec: RunSpec, tool: str | None) -> RunSpec:
    """``spec`` with its tool choice steered toward ``tool`` (unchanged when ``tool`` is None
    or the request does not offer it)."""
    if tool is None or not spec.input:
        return spec
    policy = spec.tools
    last = spec.input[-1]
    if isinstance(last, Message) and last.role == "user":
        if any(entry.spec.name == tool for entry in entries(policy.tools, None)):
            return replace(spec, tools=replace(policy, mode="auto", forced=tool))
    elif isinstance(last, FunctionCallOutput | CustomToolCallOutput):
        return replace(spec, tools=replace(policy, mode="none", forced=None))
    return spec
