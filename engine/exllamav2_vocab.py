"""What a Hugging Face model directory says about its tokens, read without ExLlamaV2.

The GPU backend loads models from a directory (``config.json``, ``tokenizer.json``,
``tokenizer_config.json``, optionally ``generation_config.json``, and EXL2 or plain
safetensors weights). This module reads the tokenizer side of it: the end-of-turn token ids,
the chat template and its BOS/EOS texts, the bytes of every token (special tokens as their
text, as the CPU backend renders them) and llguidance's tokenizer for constraints. It imports
neither torch nor ExLlamaV2, so it is tested on the CPU.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llguidance import LLTokenizer

from .errors import ModelNotFound
from .exllamav2_sampling import TokenTexts


@dataclass(frozen=True, slots=True)
class ModelVocabulary:
    """The tokenizer facts of one model directory."""

    #: Rows of the model's output layer (``config.json``'s ``vocab_size``): may exceed the
    #: tokenizer's own token count.
    vocab_size: int
    #: Every token id that ends the assistant's turn (config, generation config, tokenizer).
    stop_token_ids: tuple[int, ...]
    bos_token: str
    eos_token: str
    #: Whether prompts start with the BOS token unless the template already wrote it.
    add_bos: bool
    #: The Jinja chat template text, empty when the model ships none.
    chat_template: str
    #: The added tokens' texts (for detecting the tool-call format).
    special_tokens: tuple[str, ...]
    #: The bytes of every token id below ``vocab_size`` (empty for ids the tokenizer lacks).
    pieces: tuple[bytes, ...]
    texts: TokenTexts
    lltokenizer: LLTokenizer
    #: ``config.json``'s context length (``max_position_embeddings`` or similar).
    trained_context: int


def read_vocabulary(model_dir: Path) -> ModelVocabulary:
    """Read the tokenizer files of ``model_dir``; :class:`ModelNotFound` names what is missing."""
    config = _read_json(model_dir / "config.json", required=True)
    generation = _read_json(model_dir / "generation_config.json", required=False)
    tokenizer_config = _read_json(model_dir / "tokenizer_config.json", required=False)
    tokenizer_path = model_dir / "tokenizer.json"
    if not tokenizer_path.is_file():
        raise ModelNotFound(
            f"{model_dir} has no tokenizer.json; the GPU backend needs a Hugging Face "
            f"fast tokenizer next to the weights.",
            param="model",
        )
    tokenizer_json = tokenizer_path.read_text(encoding="utf-8")
    added = _added_tokens(json.loads(tokenizer_json))

    bos_token = _token_text(tokenizer_config.get("bos_token"))
    eos_token = _token_text(tokenizer_config.get("eos_token"))
    stops: list[int] = []
    for source in (config.get("eos_token_id"), generation.get("eos_token_id")):
        stops.extend(_ids(source))
    if eos_token in added:
        stops.append(added[eos_token])
    stop_ids = tuple(dict.fromkeys(stops))
    if not stop_ids:
        raise ModelNotFound(
            f"{model_dir} names no end-of-sequence token (eos_token_id in config.json).",
            param="model",
        )
    if not eos_token:
        eos_token = next((text for text, i in added.items() if i == stop_ids[0]), "")
    if not bos_token and isinstance(config.get("bos_token_id"), int):
        bos_token = next((text for text, i in added.items() if i == config["bos_token_id"]), "")

    vocab_size = int(config.get("vocab_size") or 0)
    lltokenizer = LLTokenizer(tokenizer_json, n_vocab=vocab_size or None, eos_token=list(stop_ids))
    vocab_size = vocab_size or lltokenizer.vocab_size
    pieces = tuple(lltokenizer.decode_bytes([t]) for t in range(vocab_size))
    return ModelVocabulary(
        vocab_size=vocab_size,
        stop_token_ids=stop_ids,
        bos_token=bos_token,
        eos_token=eos_token,
        add_bos=bool(tokenizer_config.get("add_bos_token", False)),
        chat_template=_chat_template(tokenizer_config, model_dir),
        special_tokens=tuple(added),
        pieces=pieces,
        texts=TokenTexts([p.decode("utf-8", errors="replace") for p in pieces]),
        lltokenizer=lltokenizer,
        trained_context=_trained_context(config),
    )


def _read_json(path: Path, *, required: bool) -> dict[str, Any]:
    if not path.is_file():
        if required:
            raise ModelNotFound(
                f"No {path.name} in {path.parent}: pass --model DIR to a Hugging Face model "
                f"directory (EXL2 or safetensors weights with their config and tokenizer).",
                param="model",
            )
        return {}
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelNotFound(f"Cannot read {path}: {exc}", param="model") from exc
    if not isinstance(document, dict):
        raise ModelNotFound(f"{path} is not a JSON object.", param="model")
    return document


def _added_tokens(tokenizer: Mapping[str, Any]) -> dict[str, int]:
    return {
        entry["content"]: int(entry["id"])
        for entry in tokenizer.get("added_tokens") or ()
        if isinstance(entry, Mapping) and "content" in entry and "id" in entry
    }


def _token_text(value: object) -> str:
    """A token as tokenizer_config.json writes it: a string or ``{"content": ...}``."""
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping) and isinstance(value.get("content"), str):
        return str(value["content"])
    return ""


def _ids(value: object) -> list[int]:
    if isinstance(value, bool):
        return []
    if isinstance(value, int):
        return [value]
    if isinstance(value, list):
        return [v for v in value if isinstance(v, int) and not isinstance(v, bool)]
    return []


def _chat_template(tokenizer_config: Mapping[str, Any], model_dir: Path) -> str:
    """The default template: tokenizer_config.json's ``chat_template`` (a string, or a list of
    named templates), else a ``chat_template.jinja`` file as newer checkpoints ship it."""
    template = tokenizer_config.get("chat_template")
    if isinstance(template, str):
        return template
    if isinstance(template, list):
        named = {
            entry.get("name"): entry.get("template")
            for entry in template
            if isinstance(entry, Mapping)
        }
        chosen = named.get("default") or next(iter(named.values()), None)
        if isinstance(chosen, str):
            return chosen
    jinja = model_dir / "chat_template.jinja"
    return jinja.read_text(encoding="utf-8") if jinja.is_file() else ""


def _trained_context(config: Mapping[str, Any]) -> int:
    for key in ("max_position_embeddings", "max_sequence_length", "n_positions", "max_seq_len"):
        value = config.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return 2048
