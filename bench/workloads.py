"""The prompts, JSON schema and end-of-turn token the benchmarks share, so that their numbers
compare.

Imported by the bench scripts both when run as ``python bench/x.py`` (this folder is then
first on ``sys.path``) and as ``python -m bench.x`` (a relative import).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

#: A prompt that keeps a small model writing freely for many tokens.
FREE_PROMPT = "Write a long story about a lighthouse keeper and a storm."
#: The prompt to constrain with :data:`PEOPLE_SCHEMA`.
JSON_PROMPT = "Describe three fictional people as JSON: name, age, city and hobbies for each."

#: Strict (no extra properties, everything required), with an array so that the output is long
#: enough to measure.
PEOPLE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "people": {
            "type": "array",
            "minItems": 3,
            "items": {
                "type": "object",
                "properties": {
                    "name": {"type": "string"},
                    "age": {"type": "integer"},
                    "city": {"type": "string"},
                    "hobbies": {"type": "array", "minItems": 2, "items": {"type": "string"}},
                },
                "required": ["name", "age", "city", "hobbies"],
                "additionalProperties": False,
            },
        }
    },
    "required": ["people"],
    "additionalProperties": False,
}


def eos_token(model: Path) -> int:
    """The end-of-turn token (to ban, so that every round runs to its token budget), read
    from the GGUF's vocabulary alone."""
    import llama_cpp  # here: the GPU benchmark shares this module and needs no llama.cpp

    vocab = llama_cpp.Llama(str(model), vocab_only=True, verbose=False)
    try:
        return int(vocab.token_eos())
    finally:
        vocab.close()
