"""The GPU backend's tokenizer side and grammar filter, on CPU, with a real model directory.

The directory is SmolLM2's, written from the default GGUF: its vocabulary and merges become a
Hugging Face ``tokenizer.json`` (byte-level BPE), next to ``config.json`` and
``tokenizer_config.json`` as the Hub ships them. The filter is driven exactly as ExLlamaV2's
generator drives it (``begin``, then per token: ``prepare_logit_mask`` on a worker thread,
``apply_mask`` on the CPU logits, ``feed`` with the sampled token as a ``(1, 1)`` array).
"""

from __future__ import annotations

import ctypes
import json
import struct
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, BinaryIO

import anyio
import llama_cpp
import numpy as np
import pytest

from exloop.engine.constraints import GrammarCompiler
from exloop.engine.errors import ModelNotFound
from exloop.engine.exllamav2_filter import GrammarFilterCore
from exloop.engine.exllamav2_vocab import ModelVocabulary, read_vocabulary
from exloop.engine.protocol import Grammar

_GGUF_SCALARS = {
    0: "<B",
    1: "<b",
    2: "<H",
    3: "<h",
    4: "<I",
    5: "<i",
    6: "<f",
    7: "<?",
    10: "<Q",
    11: "<q",
    12: "<d",
}
_WANTED = ("tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.ggml.token_type")


def _read(stream: BinaryIO, fmt: str) -> Any:
    return struct.unpack(fmt, stream.read(struct.calcsize(fmt)))[0]


def _value(stream: BinaryIO, kind: int) -> Any:
    if kind == 8:
        return stream.read(_read(stream, "<Q")).decode("utf-8")
    if kind == 9:
        item_kind, count = _read(stream, "<I"), _read(stream, "<Q")
        return [_value(stream, item_kind) for _ in range(count)]
    return _read(stream, _GGUF_SCALARS[kind])


def gguf_tokenizer(path: Path) -> dict[str, Any]:
    """The tokenizer arrays of a GGUF file (the metadata precedes the tensors)."""
    found: dict[str, Any] = {}
    with path.open("rb") as stream:
        assert stream.read(4) == b"GGUF"
        _read(stream, "<I")  # version
        _read(stream, "<Q")  # tensor count
        for _ in range(_read(stream, "<Q")):
            key = stream.read(_read(stream, "<Q")).decode("utf-8")
            found[key] = _value(stream, _read(stream, "<I"))
            if all(k in found for k in _WANTED):
                break
    return found


@pytest.fixture(scope="module")
def smollm_dir(tmp_path_factory: pytest.TempPathFactory, model_path: Path) -> Path:
    arrays = gguf_tokenizer(model_path)
    tokens, kinds = arrays["tokenizer.ggml.tokens"], arrays["tokenizer.ggml.token_type"]
    control = [i for i, kind in enumerate(kinds) if kind == 3]
    byte_level = {
        "type": "ByteLevel",
        "add_prefix_space": False,
        "trim_offsets": True,
        "use_regex": True,
    }
    tokenizer = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {
                "id": i,
                "content": tokens[i],
                "single_word": False,
                "lstrip": False,
                "rstrip": False,
                "normalized": False,
                "special": True,
            }
            for i in control
        ],
        "normalizer": None,
        "pre_tokenizer": byte_level,
        "post_processor": None,
        "decoder": byte_level,
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "vocab": {token: i for i, token in enumerate(tokens)},
            "merges": arrays["tokenizer.ggml.merges"],
        },
    }
    llm = llama_cpp.Llama(str(model_path), vocab_only=True, verbose=False)
    template = llm.metadata["tokenizer.chat_template"]
    llm.close()
    directory = tmp_path_factory.mktemp("SmolLM2-135M-Instruct")
    (directory / "tokenizer.json").write_text(json.dumps(tokenizer), encoding="utf-8")
    (directory / "config.json").write_text(
        json.dumps(
            {
                "architectures": ["LlamaForCausalLM"],
                "vocab_size": len(tokens),
                "bos_token_id": 1,
                "eos_token_id": 2,
                "max_position_embeddings": 8192,
            }
        )
    )
    (directory / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "add_bos_token": False,
                "bos_token": "<|im_start|>",
                "eos_token": "<|im_end|>",
                "chat_template": template,
            }
        )
    )
    return directory


@pytest.fixture(scope="module")
def vocabulary(smollm_dir: Path) -> ModelVocabulary:
    return read_vocabulary(smollm_dir)


def test_vocabulary_reads_the_model_directory(
    vocabulary: ModelVocabulary, vocab_model: llama_cpp.Llama
) -> None:
    assert vocabulary.vocab_size == vocab_model.n_vocab() == 49152
    assert vocabulary.stop_token_ids == (2,)
    assert (vocabulary.bos_token, vocabulary.eos_token) == ("<|im_start|>", "<|im_end|>")
    assert not vocabulary.add_bos
    assert vocabulary.chat_template.startswith("{% for message in messages %}")
    assert "<|im_end|>" in vocabulary.special_tokens
    assert vocabulary.trained_context == 8192
    assert vocabulary.lltokenizer.eos_tokens == [2]


def test_token_bytes_match_llama_cpp(
    vocabulary: ModelVocabulary, vocab_model: llama_cpp.Llama
) -> None:
    """Every token's bytes as llama.cpp renders them (special tokens as their text)."""
    vocab = llama_cpp.llama_model_get_vocab(vocab_model.model)
    buffer = ctypes.create_string_buffer(256)
    for token_id in range(0, vocabulary.vocab_size, 7):
        n = llama_cpp.llama_token_to_piece(vocab, token_id, buffer, 256, 0, True)
        assert vocabulary.pieces[token_id] == buffer.raw[:n]
    assert vocabulary.pieces[2] == b"<|im_end|>"
    text = "Grüße, 世界! 🙂"
    ids = vocab_model.tokenize(text.encode(), add_bos=False)
    assert b"".join(vocabulary.pieces[t] for t in ids).decode() == text


def test_llguidance_tokenizes_as_llama_cpp(
    vocabulary: ModelVocabulary, vocab_model: llama_cpp.Llama
) -> None:
    """The merges made it into tokenizer.json: llguidance's tokenizer is SmolLM2's."""
    text = "The quick brown fox jumps over the lazy dog."
    assert vocabulary.lltokenizer.tokenize_str(text) == vocab_model.tokenize(
        text.encode(), add_bos=False
    )


def test_dry_breakers_are_tokens_containing_them(vocabulary: ModelVocabulary) -> None:
    breakers = vocabulary.texts.containing(("\n", ":"))
    newline = vocabulary.lltokenizer.tokenize_str("\n")[0]
    word = vocabulary.lltokenizer.tokenize_str("hello")[0]
    assert newline in breakers and word not in breakers
    assert vocabulary.texts.containing(("\n", ":")) is breakers  # computed once


def test_missing_files_name_the_fix(tmp_path: Path, smollm_dir: Path) -> None:
    with pytest.raises(ModelNotFound, match="config.json"):
        read_vocabulary(tmp_path)
    (tmp_path / "config.json").write_text((smollm_dir / "config.json").read_text())
    with pytest.raises(ModelNotFound, match="tokenizer.json"):
        read_vocabulary(tmp_path)


def test_chat_template_from_a_named_list(tmp_path: Path, smollm_dir: Path) -> None:
    for name in ("config.json", "tokenizer.json"):
        (tmp_path / name).write_text((smollm_dir / name).read_text())
    (tmp_path / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "eos_token": {"content": "<|im_end|>"},
                "chat_template": [
                    {"name": "tool_use", "template": "T"},
                    {"name": "default", "template": "D"},
                ],
            }
        )
    )
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [2, 0]}))
    vocabulary = read_vocabulary(tmp_path)
    assert vocabulary.chat_template == "D"
    assert vocabulary.stop_token_ids == (2, 0)


# -- the grammar filter, driven as ExLlamaV2 drives it ----------------------------------------


def _filter(vocabulary: ModelVocabulary, grammar: Grammar) -> GrammarFilterCore:
    compiler = GrammarCompiler(vocabulary.lltokenizer)
    try:
        state = compiler.start(anyio.run(compiler.compile, grammar))
    finally:
        compiler.close()
    width = -(-vocabulary.vocab_size // 32) * 32
    return GrammarFilterCore(state, width=width, stop_token_ids=vocabulary.stop_token_ids)


def _generate(
    vocabulary: ModelVocabulary, grammar: Grammar, preferred: str, *, limit: int = 40
) -> tuple[list[int], GrammarFilterCore]:
    """Greedy decoding over logits that favour the tokens of ``preferred``, in order; the mask
    is prepared on a pool thread as ExLlamaV2 does after queuing the forward pass."""
    core = _filter(vocabulary, grammar)
    wanted = vocabulary.lltokenizer.tokenize_str(preferred)
    width = -(-vocabulary.vocab_size // 32) * 32
    out: list[int] = []
    core.begin("")
    with ThreadPoolExecutor(1) as pool:
        prepared = pool.submit(core.prepare_logit_mask)
        while len(out) < limit:
            assert prepared.result() is True
            logits = np.zeros(width, dtype=np.float32)
            if len(out) < len(wanted):
                logits[wanted[len(out)]] = 10.0
            logits[vocabulary.stop_token_ids[0]] = 5.0
            core.apply_mask(logits)
            token = int(np.argmax(logits))
            core.feed(np.array([[token]]))
            if token in vocabulary.stop_token_ids:
                break
            out.append(token)
            prepared = pool.submit(core.prepare_logit_mask)
    return out, core


def test_filter_follows_a_json_schema_and_ends_on_the_stop_token(
    vocabulary: ModelVocabulary,
) -> None:
    schema = {
        "type": "object",
        "properties": {"n": {"type": "integer"}},
        "required": ["n"],
        "additionalProperties": False,
    }
    out, core = _generate(vocabulary, Grammar("json_schema", schema), '{"n":42}')
    assert b"".join(vocabulary.pieces[t] for t in out) == b'{"n":42}'
    assert core.finished and core.error is None


def test_filter_forbids_what_the_schema_does_not_allow(vocabulary: ModelVocabulary) -> None:
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    # The "model" wants free whitespace after the colon; JSON grammars here allow none, so
    # the space is masked and the stop token (the next best) wins while the object is open.
    out, core = _generate(vocabulary, Grammar("json_schema", schema), '{"n": 42}', limit=3)
    assert b"".join(vocabulary.pieces[t] for t in out).startswith(b'{"n":')
    assert b" " not in b"".join(vocabulary.pieces[t] for t in out)
    assert not core.finished


def test_filter_masks_padding_rows_and_forbidden_tokens(vocabulary: ModelVocabulary) -> None:
    core = _filter(vocabulary, Grammar("regex", "[0-9]+"))
    core.begin("")
    assert core.can_mask_logits() and core.use_background_worker()
    core.prepare_logit_mask()
    logits = np.zeros(vocabulary.vocab_size + 64, dtype=np.float32)  # an output layer padded wider
    core.apply_mask(logits)
    allowed = np.flatnonzero(np.isfinite(logits))
    assert 0 < allowed.size < 200
    assert all(vocabulary.pieces[t].decode().isdigit() for t in allowed)


def test_a_rejected_token_is_recorded_not_raised(vocabulary: ModelVocabulary) -> None:
    core = _filter(vocabulary, Grammar("regex", "[0-9]+"))
    core.begin("")
    letter = vocabulary.lltokenizer.tokenize_str("abc")[0]
    core.feed(np.array([[letter]]))  # a token the mask would have forbidden
    assert core.error is not None and not core.finished
    assert core.prepare_logit_mask() is True
    logits = np.zeros(-(-vocabulary.vocab_size // 32) * 32, dtype=np.float32)
    core.apply_mask(logits)
    # Only the stop tokens remain, so the job ends at its next token.
    assert list(np.flatnonzero(np.isfinite(logits))) == list(vocabulary.stop_token_ids)


def test_a_prefix_cannot_be_followed(vocabulary: ModelVocabulary) -> None:
    core = _filter(vocabulary, Grammar("regex", "[0-9]+"))
    core.begin("12")
    assert core.error is not None


def test_an_output_layer_wider_than_the_tokenizer(tmp_path: Path, smollm_dir: Path) -> None:
    """Qwen-style padding: config.json's vocab_size exceeds the tokenizer's tokens."""
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (tmp_path / name).write_text((smollm_dir / name).read_text())
    config = json.loads((smollm_dir / "config.json").read_text())
    config["vocab_size"] = 49152 + 96
    (tmp_path / "config.json").write_text(json.dumps(config))
    vocabulary = read_vocabulary(tmp_path)
    assert vocabulary.vocab_size == len(vocabulary.pieces) == 49152 + 96
    assert vocabulary.lltokenizer.vocab_size == 49152 + 96
    # The padding rows are no text a grammar could ever allow.
    assert vocabulary.lltokenizer.is_special_token(49152 + 5)
