"""Building llguidance grammars for tool calls.

Every format's calls have the same shape: literal text naming the tool, the arguments as a JSON
object, literal text closing the call; calls follow one another with a fixed separator, and the
whole may sit between a head and a tail (Mistral's ``[TOOL_CALLS][`` ... ``]``). Tool names are
literal alternatives, each tied to its own arguments rule: a guided tool's arguments follow its
schema (strictly for a strict tool, leniently for another: llguidance skips the keywords it
cannot enforce), any other tool's are any JSON object. All whitespace is fixed (the separators
``", "`` and ``": "`` that ``json.dumps`` and the templates' ``tojson`` write), so a small model
cannot loop on whitespace.

Freeform tools (OpenAI's custom tools) take raw text, not JSON. Their input cannot sit inside a
JSON string: a string whose *decoded* content follows a Lark grammar is not something a grammar
over the encoded text can say without rewriting every terminal of the user's grammar. So a
freeform call is written raw: the format's opening (naming the tool), then the input itself,
then optionally the format's closing text, and it is the last call of its turn. The input is an
llguidance sub-grammar (``@input0``...): the client's Lark grammar as it is (its rule names,
``%import`` and ``%ignore`` cannot clash with ours, since each sub-grammar has its own), its
regular expression, or any text. Because nothing follows a freeform call, a parser finds its end
without any escaping: the input is the rest of the output, less a closing text at its very end.
The closing is optional so that an input whose grammar ends in an open-ended terminal (``/.*/``)
can still end, at the end of the turn.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from llguidance import LLMatcher

from ..protocol import FreeformInput, Grammar, ToolSpec

#: Calls one grammar allows by default: a bound, so a model that keeps opening calls ends.
MAX_CALLS = 16
#: llguidance's JSON options for arguments: no free whitespace, Python's default separators.
_JSON_OPTIONS = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
#: Any text, the input of a custom tool with the ``text`` format.
_ANY_TEXT = "start: /(?s:.*)/"


@dataclass(frozen=True, slots=True)
class FreeformCall:
    """How a format writes a freeform call: ``before(name)``, the raw input, then ``after``
    (optional in the grammar); ``separator`` comes between the last JSON call and it."""

    before: Callable[[str], str]
    after: str = ""
    separator: str = ""


def arguments_schema(tool: ToolSpec) -> Mapping[str, Any]:
    """The schema a call's arguments are generated under, with llguidance's options."""
    if not (tool.guided and tool.parameters):
        return {"type": "object", "x-guidance": _JSON_OPTIONS}
    # A non-strict schema guides as far as llguidance can enforce it.
    return {**tool.parameters, "x-guidance": {**_JSON_OPTIONS, "lenient": not tool.strict}}


def lark_literal(text: str) -> str:
    """``text`` as a Lark string literal (JSON string escapes are valid Lark escapes)."""
    return json.dumps(text, ensure_ascii=False)


def input_grammar(spec: FreeformInput, name: str) -> dict[str, Any]:
    """The llguidance sub-grammar, named ``name``, of a freeform tool's input."""
    match spec.syntax:
        case "text":
            return {"name": name, "lark_grammar": _ANY_TEXT}
        case "lark":
            return {"name": name, "lark_grammar": spec.definition}
        case "regex":
            # llguidance's own translation (the regex must match the whole input).
            (grammar,) = json.loads(LLMatcher.grammar_from_regex(spec.definition))["grammars"]
            return {**grammar, "name": name}


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
    freeform: FreeformCall | None = None,
) -> Grammar:
    """``head head_rule call (separator call)* tail`` with at most ``max_calls`` calls,
    one call being ``before(name) arguments after``, then optionally one freeform call; or a
    freeform call alone. ``head_rule`` is a Lark expression (a bounded variation in spacing,
    say); every other part is literal text.

    ``trigger`` is text the prompt already ends with: it is cut from the start of the grammar
    (from ``head``, or else from the first call's opening), which must begin with it.
    """
    if not tools:
        raise ValueError("A call grammar needs at least one tool.")
    if max_calls < 1:
        raise ValueError("A call grammar allows at least one call.")
    functions = [tool for tool in tools if tool.freeform is None]
    customs = [(tool.name, tool.freeform) for tool in tools if tool.freeform is not None]
    if customs and freeform is None:
        raise ValueError("This tool-call format cannot write freeform calls.")
    lines: list[str] = []
    alternatives: list[str] = []
    if functions:
        alternatives.append(
            _function_calls(
                lines,
                functions,
                before=before,
                after=after,
                separator=separator,
                head=head,
                head_rule=head_rule,
                tail=tail,
                trigger=trigger,
                max_calls=max_calls,
            )
        )
    inputs: list[dict[str, Any]] = []
    if customs and freeform is not None:
        inputs = _freeform_calls(lines, customs, freeform, trigger)
        alternatives.append("first_custom")
        if functions and max_calls > 1:
            alternatives[0] += f" ({_literal_or_empty(freeform.separator)}custom)?"
    lines.insert(0, "start: " + " | ".join(alternatives))
    top = "\n".join(lines) + "\n"
    if not inputs:
        return Grammar(kind="lark", value=top)
    return Grammar(kind="llguidance", value={"grammars": [{"lark_grammar": top}, *inputs]})


def _function_calls(
    lines: list[str],
    tools: Sequence[ToolSpec],
    *,
    before: Callable[[str], str],
    after: str,
    separator: str,
    head: str,
    head_rule: str,
    tail: str,
    trigger: str,
    max_calls: int,
) -> str:
    """Add the rules of JSON calls to ``lines``; returns the expression of the call sequence."""
    first_head = head
    cut_call = False
    if trigger:
        if head.startswith(trigger):
            first_head = head.removeprefix(trigger)
        else:
            cut_call = True
    sequence = [lark_literal(first_head)] if first_head else []
    if head_rule:
        sequence.append(head_rule)
    sequence.append("first")
    more = f"({lark_literal(separator)} call)" if separator else "call"
    if max_calls > 1:
        sequence.append(f"{more}{{0,{max_calls - 1}}}")
    if tail:
        sequence.append(lark_literal(tail))
    closing = f" {lark_literal(after)}" if after else ""
    calls = [f"call{number}" for number in range(len(tools))]
    for rule, tool in zip(calls, tools, strict=True):
        arguments = f"args_{rule}"
        _call_rules(
            lines, rule, before(tool.name), arguments + closing, trigger if cut_call else ""
        )
        schema = json.dumps(arguments_schema(tool), ensure_ascii=False)
        lines.append(f"{arguments}: %json{schema}")
    lines.append("call: " + " | ".join(calls))
    lines.append("first: " + " | ".join([f"first_{c}" for c in calls] if cut_call else ["call"]))
    return " ".join(sequence)


def _freeform_calls(
    lines: list[str],
    tools: Sequence[tuple[str, FreeformInput]],
    freeform: FreeformCall,
    trigger: str,
) -> list[dict[str, Any]]:
    """Add the rules of freeform calls (``custom``, and ``first_custom`` with the trigger cut)
    to ``lines``; returns their input sub-grammars."""
    closing = f" ({lark_literal(freeform.after)})?" if freeform.after else ""
    inputs = []
    names = []
    for number, (name, spec) in enumerate(tools):
        names.append(f"custom{number}")
        body = f"@input{number}{closing}"
        _call_rules(lines, names[-1], freeform.before(name), body, trigger)
        inputs.append(input_grammar(spec, f"input{number}"))
    lines.append("custom: " + " | ".join(names))
    firsts = [f"first_{name}" for name in names] if trigger else names
    lines.append("first_custom: " + " | ".join(firsts))
    return inputs


def _call_rules(lines: list[str], rule: str, opening: str, body: str, trigger: str) -> None:
    """Add ``rule: opening body`` to ``lines`` and, with a ``trigger`` to cut, the rule of a
    first call that starts after it, ``first_<rule>``."""
    lines.append(f"{rule}: {lark_literal(opening)} {body}")
    if trigger:
        if not opening.startswith(trigger):
            raise ValueError(f"The call syntax does not begin with its trigger {trigger!r}.")
        rest = opening.removeprefix(trigger)
        literal = f"{lark_literal(rest)} " if rest else ""
        lines.append(f"first_{rule}: {literal}{body}")


def _literal_or_empty(text: str) -> str:
    return f"{lark_literal(text)} " if text else ""
