"""What a custom tool's grammar costs in the call grammar, against JSON function calls alone.

Runs, in one process, over the default model's vocabulary and without generating:

1. compiling (llguidance's parse and validation, uncached) the call grammar of a set of
   function tools, and of the same set plus a custom tool whose Lark grammar (a patch format in
   the manner of Codex's ``apply_patch``) becomes a sub-grammar, printing the ratio;
2. computing the token masks along a written call, per token: a function call under the
   function-only grammar, and a patch written through the custom tool under the mixed one,
   printing the ratio of the mean mask times.

Rounds alternate between the contenders so that machine noise hits both alike; the best round
of each counts. Usage: ``python bench/custom_tools.py [--rounds N]``.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable

import llama_cpp
from llguidance import LLMatcher, LLTokenizer
from llguidance.numpy import allocate_token_bitmask, fill_next_token_bitmask

from exloop.engine.default_model import default_model_path
from exloop.engine.llama_model import lltokenizer
from exloop.engine.protocol import FreeformInput, Grammar, ToolCall, ToolSpec
from exloop.engine.tool_calls import get_format

PATCH_GRAMMAR = r"""
start: begin_patch hunk+ end_patch
begin_patch: "*** Begin Patch" LF
end_patch: "*** End Patch" LF?
hunk: add_hunk | delete_hunk | update_hunk
add_hunk: "*** Add File: " filename LF add_line+
delete_hunk: "*** Delete File: " filename LF
update_hunk: "*** Update File: " filename LF change+
filename: /(.+)/
add_line: "+" /(.*)/ LF
change: ("@@" | "@@ " /(.+)/) LF change_line+
change_line: ("+" | "-" | " ") /(.*)/ LF
%import common.LF
"""
PATCH = (
    "*** Begin Patch\n*** Update File: src/app.py\n@@ def main():\n"
    "-    print('hello')\n+    print('hello, world')\n*** Add File: NOTES.md\n+Ship it.\n"
    "*** End Patch\n"
)
FUNCTIONS = tuple(
    ToolSpec(
        f"tool_{n}",
        f"Tool number {n}.",
        {
            "type": "object",
            "properties": {"cmd": {"type": "string"}, "timeout": {"type": "integer"}},
            "required": ["cmd"],
            "additionalProperties": False,
        },
    )
    for n in range(8)
)
APPLY_PATCH = ToolSpec("apply_patch", "Edit files.", freeform=FreeformInput("lark", PATCH_GRAMMAR))


def compiled(grammar: Grammar) -> str:
    if grammar.kind == "lark":
        assert isinstance(grammar.value, str)
        return LLMatcher.grammar_from_lark(grammar.value)
    return json.dumps(grammar.value)


def compile_seconds(text: str, tokenizer: LLTokenizer) -> float:
    start = time.perf_counter()
    error = LLMatcher.validate_grammar(text, tokenizer)
    elapsed = time.perf_counter() - start
    if error:
        raise SystemExit(f"grammar does not compile: {error}")
    return elapsed


def mask_seconds(text: str, tokenizer: LLTokenizer, written: str) -> float:
    """Mean seconds of one token mask along ``written``."""
    matcher = LLMatcher(tokenizer, text, log_level=0)
    bitmask = allocate_token_bitmask(1, tokenizer.vocab_size)
    tokens = tokenizer.tokenize_str(written)
    start = time.perf_counter()
    for token in tokens:
        fill_next_token_bitmask(matcher, bitmask, 0)
        if not matcher.consume_token(token):
            raise SystemExit(f"the grammar rejected the written call: {matcher.get_error()}")
    return (time.perf_counter() - start) / len(tokens)


def best(
    rounds: int, first: Callable[[], float], second: Callable[[], float]
) -> tuple[float, float]:
    a, b = [], []
    for _ in range(rounds):
        a.append(first())
        b.append(second())
    return min(a), min(b)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    llm = llama_cpp.Llama(str(default_model_path()), vocab_only=True, verbose=False)
    tokenizer = lltokenizer(llama_cpp.llama_model_get_vocab(llm.model))
    fmt = get_format("exloop")
    plain = compiled(fmt.call_grammar(FUNCTIONS, include_trigger=True))
    mixed = compiled(fmt.call_grammar((*FUNCTIONS, APPLY_PATCH), include_trigger=True))
    function_call = fmt.render_calls(
        [ToolCall("c", "tool_3", '{"cmd": "ls -la src", "timeout": 30}')]
    )
    patch_call = fmt.render_calls([ToolCall("c", "apply_patch", PATCH, freeform=True)])

    compile_plain, compile_mixed = best(
        args.rounds,
        lambda: compile_seconds(plain, tokenizer),
        lambda: compile_seconds(mixed, tokenizer),
    )
    mask_plain, mask_mixed = best(
        args.rounds,
        lambda: mask_seconds(plain, tokenizer, function_call),
        lambda: mask_seconds(mixed, tokenizer, patch_call),
    )
    print(
        f"compile: functions {compile_plain * 1e3:.1f} ms, with the custom tool "
        f"{compile_mixed * 1e3:.1f} ms, ratio {compile_mixed / compile_plain:.2f}"
    )
    print(
        f"mask per token: function call {mask_plain * 1e6:.0f} us, patch input "
        f"{mask_mixed * 1e6:.0f} us, ratio {mask_mixed / mask_plain:.2f}"
    )
    llm.close()


if __name__ == "__main__":
    main()
