"""The fallback tool prompt and tool-result text, for templates that cannot render tools.

Every format teaches its own syntax the same way: the tools with their JSON schemas (a freeform
tool with the grammar of its raw input), then one example call written exactly as the format's
parser reads it (built from the first function's schema, and one for the first freeform tool),
then where results will appear.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ..protocol import FreeformInput, ToolCall, ToolSpec

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
        if tool.freeform is not None:
            lines.append("  " + freeform_note(tool.freeform).replace("\n", "\n  "))
        else:
            lines.append(
                f"  Arguments (JSON Schema): {json.dumps(tool.parameters or {'type': 'object'})}"
            )
    function = next((tool for tool in tools if tool.freeform is None), None)
    freeform = next((tool for tool in tools if tool.freeform is not None), None)
    if function is not None:
        example = ToolCall(
            call_id="example",
            name=function.name,
            arguments=json.dumps(example_arguments(function.parameters)),
        )
        lines += [
            "",
            "To call a tool, write the call exactly like this, with the arguments as a JSON "
            "object:",
            render_calls([example]),
        ]
    if freeform is not None:
        example = ToolCall(call_id="example", name=freeform.name, arguments="...", freeform=True)
        lines += [
            "",
            "A freeform tool takes raw text instead of JSON arguments; write its call like this, "
            "with the text in place of ..., as the last call of your turn:",
            render_calls([example]),
        ]
    if tools:
        lines.append(
            "You may write several calls one after another. Each result comes back to you "
            f"between {RESULT_OPEN} and {RESULT_CLOSE}. If no tool is needed, answer directly."
        )
    return "\n".join(lines)


def freeform_note(spec: FreeformInput) -> str:
    """What a freeform tool's input must be, as the model is told."""
    match spec.syntax:
        case "text":
            return "Freeform tool: its input is raw text (not JSON)."
        case "lark":
            return (
                "Freeform tool: its input is raw text (not JSON) in this Lark grammar:\n"
                + spec.definition.strip()
            )
        case "regex":
            return (
                "Freeform tool: its input is raw text (not JSON) matching this regular "
                f"expression: {spec.definition}"
            )


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
