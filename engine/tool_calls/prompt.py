"""The fallback tool prompt and tool-result text, for templates that cannot render tools.

Every format teaches its own syntax the same way: the tools with their JSON schemas, then one
example call written exactly as the format's parser reads it (built from the first tool's
schema), then where results will appear.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ..protocol import ToolCall, ToolSpec

RESULT_OPEN = "<tool_response>"
RESULT_CLOSE = "</tool_response>"


def tool_prompt(
    tools: Sequence[ToolSpec], render_calls: Callable[[Sequence[ToolCall]], str]
) -> str:
    """Tell the model which tools exist and how to call them, with ``render_calls`` giving
    the syntax of the example."""
    lines = ["You can call the following tools:", ""]
    for tool in tools:
        summary = f"- {tool.name}: {tool.description}" if tool.description else f"- {tool.name}"
        lines.append(summary)
        lines.append(
            f"  Arguments (JSON Schema): {json.dumps(tool.parameters or {'type': 'object'})}"
        )
    if tools:
        example = ToolCall(
            call_id="example",
            name=tools[0].name,
            arguments=json.dumps(example_arguments(tools[0].parameters)),
        )
        lines += [
            "",
            "To call a tool, write the call exactly like this, with the arguments as a JSON object:",
            render_calls([example]),
            (
                "You may write several calls one after another. Each result comes back to you "
                f"between {RESULT_OPEN} and {RESULT_CLOSE}. If no tool is needed, answer directly."
            ),
        ]
    return "\n".join(lines)


def render_result(name: str | None, content: str) -> str:
    """A tool result as plain text, naming the tool when known."""
    opening = f'<tool_response name="{name}">' if name else RESULT_OPEN
    return f"{opening}\n{content}\n{RESULT_CLOSE}"


def example_arguments(schema: Mapping[str, Any]) -> dict[str, Any]:
    """Placeholder arguments for an example call: each required property (or the first few
    properties when none is required) with a value of its type."""
    properties = schema.get("properties")
    if not isinstance(properties, Mapping):
        return {}
    required = [key for key in schema.get("required", ()) if key in properties]
    keys = required or list(properties)[:2]
    return {key: _example_value(properties[key]) for key in keys}


def _example_value(schema: Any) -> Any:
    if not isinstance(schema, Mapping):
        return "..."
    if schema.get("enum"):
        return schema["enum"][0]
    if "const" in schema:
        return schema["const"]
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "string")
    examples: dict[str, Any] = {
        "integer": 1,
        "number": 1.5,
        "boolean": True,
        "array": [],
        "null": None,
    }
    if kind == "object":
        return example_arguments(schema)
    return examples.get(str(kind), "...")
