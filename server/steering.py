"""A test-only hook that steers a tiny model through an agent's turn: ``--test-steer-tool``.

Real agent clients (Codex CLI) cannot be told to force a tool call, and the default test model
is too small to choose one by itself. With ``--test-steer-tool NAME`` (hidden from ``--help``,
never for production), a create request that opens a turn (its input ends with a user
message) gets ``tool_choice`` naming the tool ``NAME`` (a function or custom tool;
``namespace.tool`` inside a namespace) when it has that tool, and one that answers tool
results (its input ends with a tool call's output) gets ``tool_choice: "none"``, so the turn
is: one call, then a worded answer. Both are drawn greedily: sampled at the client's
temperature, the tiny model sometimes wrote a command other than the one asked for, whose
output could fill the context window before the next turn. The steered call writes only the
function's required arguments: its schema's optional ones are where a tiny model sampling at
random writes values that the client's own types refuse though the schema allows them (a
fractional ``yield_time_ms`` where Codex reads an unsigned integer). The response still echoes the
client's own ``tool_choice`` and tools."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import msgspec

from exloop.engine.sampling import SamplingParams
from exloop.orchestrator.items import CustomToolCallOutput, FunctionCallOutput, Message
from exloop.orchestrator.spec import RunSpec
from exloop.orchestrator.tool_defs import ClientTool, FunctionTool, NamespacedTool, NamespaceTool
from exloop.orchestrator.toolset import entries, qualified


def steered(spec: RunSpec, tool: str | None) -> RunSpec:
    """``spec`` with its tool choice steered toward ``tool`` (unchanged when ``tool`` is None
    or the request does not offer it)."""
    if tool is None or not spec.input:
        return spec
    policy = spec.tools
    last = spec.input[-1]
    if isinstance(last, Message) and last.role == "user":
        if any(entry.spec.name == tool for entry in entries(policy.tools, None)):
            narrowed = tuple(_required_only(t, tool) for t in policy.tools)
            return replace(
                spec,
                tools=replace(policy, tools=narrowed, mode="auto", forced=tool),
                sampling=_greedy(spec),
            )
    elif isinstance(last, FunctionCallOutput | CustomToolCallOutput):
        return replace(
            spec, tools=replace(policy, mode="none", forced=None), sampling=_greedy(spec)
        )
    return spec


def _greedy(spec: RunSpec) -> SamplingParams:
    return replace(spec.sampling, temperature=0.0)


def _required_only(tool: ClientTool, name: str) -> ClientTool:
    """``tool`` with the parameters of the function named ``name`` cut to the required ones."""
    if isinstance(tool, NamespaceTool):
        members = [_narrowed(m, qualified(m.name, tool.name) == name) for m in tool.tools]
        return msgspec.structs.replace(tool, tools=members)
    return _narrowed(tool, tool.name == name) if isinstance(tool, FunctionTool) else tool


def _narrowed(tool: NamespacedTool, chosen: bool) -> NamespacedTool:
    if not chosen or not isinstance(tool, FunctionTool):
        return tool
    return msgspec.structs.replace(tool, parameters=_required_schema(tool.parameters))


def _required_schema(schema: dict[str, Any] | None) -> dict[str, Any] | None:
    properties = (schema or {}).get("properties")
    if schema is None or not isinstance(properties, dict):
        return schema
    required = schema.get("required") or []
    kept = {key: value for key, value in properties.items() if key in required}
    return {**schema, "properties": kept, "additionalProperties": False}
