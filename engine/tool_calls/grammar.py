"""Building llguidance Lark grammars for tool calls.

Every format's calls have the same shape: literal text naming the tool, the arguments as a JSON
object, literal text closing the call; calls follow one another with a fixed separator, and the
whole may sit between a head and a tail (Mistral's ``[TOOL_CALLS][`` ... ``]``). Tool names are
literal alternatives, each tied to its own arguments rule: a strict tool's arguments follow its
schema, any other tool's are any JSON object. All whitespace is fixed (the separators ``", "``
and ``": "`` that ``json.dumps`` and the templates' ``tojson`` write), so a small model cannot
loop on whitespace.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ..protocol import Grammar, ToolSpec

#: Calls one grammar allows by default: a bound, so a model that keeps opening calls ends.
MAX_CALLS = 16
#: llguidance's JSON options for arguments: no free whitespace, Python's default separators.
_JSON_OPTIONS = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


def arguments_schema(tool: ToolSpec) -> Mapping[str, Any]:
    """The schema a call's arguments are generated under."""
    if tool.strict and tool.parameters:
        return tool.parameters
    return {"type": "object"}


def lark_literal(text: str) -> str:
    """``text`` as a Lark string literal (JSON string escapes are valid Lark escapes)."""
    return json.dumps(text, ensure_ascii=False)


def calls_grammar(
    tools: Sequence[ToolSpec],
    *,
    before: Callable[[str], str],
    after: str,
    separator: str,
    head: str = "",
    head_rule: str = "",
    tail: str = "",
    trigger: str = "",
    max_calls: int = MAX_CALLS,
) -> Grammar:
    """``head head_rule call (separator call)* tail`` with at most ``max_calls`` calls,
    one call being ``before(name) arguments after``. ``head_rule`` is a Lark expression (a
    bounded variation in spacing, say); every other part is literal text.

    ``trigger`` is text the prompt already ends with: it is cut from the start of the grammar
    (from ``head``, or else from the first call's ``before``), which must begin with it.
    """
    if not tools:
        raise ValueError("A call grammar needs at least one tool.")
    if max_calls < 1:
        raise ValueError("A call grammar allows at least one call.")
    first_head = head
    cut_call = False
    if trigger:
        if head.startswith(trigger):
            first_head = head.removeprefix(trigger)
        else:
            cut_call = True
    lines = []
    start = [lark_literal(first_head)] if first_head else []
    if head_rule:
        start.append(head_rule)
    start.append("first")
    more = f"({lark_literal(separator)} call)" if separator else "call"
    if max_calls > 1:
        start.append(f"{more}{{0,{max_calls - 1}}}")
    if tail:
        start.append(lark_literal(tail))
    lines.append("start: " + " ".join(start))
    calls = []
    firsts = []
    for number, tool in enumerate(tools):
        opening = before(tool.name)
        if cut_call and not opening.startswith(trigger):
            raise ValueError(f"The call syntax does not begin with its trigger {trigger!r}.")
        arguments = f"args{number}"
        closing = f" {lark_literal(after)}" if after else ""
        calls.append(f"call{number}")
        lines.append(f"call{number}: {lark_literal(opening)} {arguments}{closing}")
        if cut_call:
            rest = opening.removeprefix(trigger)
            literal = f"{lark_literal(rest)} " if rest else ""
            firsts.append(f"first{number}")
            lines.append(f"first{number}: {literal}{arguments}{closing}")
        schema = {**arguments_schema(tool), "x-guidance": _JSON_OPTIONS}
        lines.append(f"{arguments}: %json{json.dumps(schema, ensure_ascii=False)}")
    lines.append("call: " + " | ".join(calls))
    lines.append("first: " + " | ".join(firsts if cut_call else ["call"]))
    return Grammar(kind="lark", value="\n".join(lines) + "\n")
