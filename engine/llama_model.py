"""A GGUF model loaded through llama.cpp's C API: weights, vocabulary, tokenizer, metadata.

The CPU backend creates its own llama.cpp context over this model (one context shared by all
sequences, see :mod:`.llama_batcher`), so it loads the model with the C API rather than
``llama_cpp.Llama``, which would allocate a context of its own.
"""

from __future__ import annotations

import ctypes
import logging
import threading
import warnings
from pathlib import Path

import llama_cpp
from llguidance import LLTokenizer
from llguidance.llamacpp import lltokenizer_from_vocab

from .errors import GenerationFailed, ModelNotFound

_PIECE_BUFFER = 256
#: Bytes per element of the KV cache (llama.cpp's default f16 cache).
_KV_ELEMENT_BYTES = 2

_backend_lock = threading.Lock()
_backend_ready = False


def _init_backend() -> None:
    """Initialise llama.cpp once per process, with its log quiet below errors."""
    global _backend_ready
    with _backend_lock:
        if not _backend_ready:
            # llama-cpp-python prints llama.cpp's log to stderr unless its logger says otherwise.
            logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)
            llama_cpp.llama_backend_init()
            _backend_ready = True


class LlamaModel:
    """A loaded GGUF model; :meth:`close` frees it. Loading blocks (seconds)."""

    def __init__(self, path: Path) -> None:
        if not path.is_file():
            raise ModelNotFound(
                f"No model file at {path}. Pass --model PATH to a GGUF file, or run "
                f"`exloop fetch-model` to install the default model.",
                param="model",
            )
        _init_backend()
        params = llama_cpp.llama_model_default_params()
        params.n_gpu_layers = 0
        model = llama_cpp.llama_model_load_from_file(str(path).encode("utf-8"), params)
        if not model:
            raise ModelNotFound(f"Cannot load the model at {path}.", param="model")
        self.model: llama_cpp.llama_model_p | None = model
        vocab = llama_cpp.llama_model_get_vocab(model)
        if not vocab:
            self.close()
            raise ModelNotFound(f"The model at {path} has no vocabulary.", param="model")
        self.vocab: llama_cpp.llama_vocab_p = vocab
        self.n_vocab = int(llama_cpp.llama_vocab_n_tokens(vocab))
        self.n_ctx_train = int(llama_cpp.llama_model_n_ctx_train(model))
        self.metadata = _metadata(model)
        #: A recurrent state cannot be cut back to a prefix the way attention's KV cells can.
        self.recurrent = bool(
            llama_cpp.llama_model_is_recurrent(model) or llama_cpp.llama_model_is_hybrid(model)
        )
        #: Sliding-window attention forgets old positions unless the cache keeps them all.
        self.sliding_window = int(llama_cpp.llama_model_n_swa(model)) > 0
        self.bos = int(llama_cpp.llama_vocab_bos(vocab))
        self.eos = int(llama_cpp.llama_vocab_eos(vocab))
        self.eog = frozenset(
            t for t in range(self.n_vocab) if llama_cpp.llama_vocab_is_eog(vocab, t)
        )
        self._piece_buffer = ctypes.create_string_buffer(_PIECE_BUFFER)
        self._pieces: dict[int, bytes] = {}
        self._pieces_lock = threading.Lock()

    def close(self) -> None:
        if self.model is not None:
            llama_cpp.llama_model_free(self.model)
            self.model = None

    @property
    def handle(self) -> llama_cpp.llama_model_p:
        if self.model is None:
            raise GenerationFailed("The model is closed.")
        return self.model

    def tokenize(self, text: bytes, *, add_bos: bool, special: bool = False) -> list[int]:
        """Token ids of ``text``; ``special`` parses special-token text such as
        ``<|im_start|>`` into its token."""
        capacity = len(text) + 8
        tokens = (llama_cpp.llama_token * capacity)()
        n = llama_cpp.llama_tokenize(
            self.vocab, text, len(text), tokens, capacity, add_bos, special
        )
        if n < 0:
            capacity = -n
            tokens = (llama_cpp.llama_token * capacity)()
            n = llama_cpp.llama_tokenize(
                self.vocab, text, len(text), tokens, capacity, add_bos, special
            )
            if n < 0:
                raise GenerationFailed("The prompt cannot be tokenized.")
        return list(tokens[:n])

    def piece(self, token_id: int) -> bytes:
        """The token's bytes, special tokens rendered as their text (cached; thread-safe)."""
        piece = self._pieces.get(token_id)
        if piece is None:
            with self._pieces_lock:
                n = llama_cpp.llama_token_to_piece(
                    self.vocab, token_id, self._piece_buffer, _PIECE_BUFFER, 0, True
                )
                if n < 0:
                    raise GenerationFailed(f"Token {token_id} does not fit the piece buffer.")
                piece = self._pieces[token_id] = self._piece_buffer.raw[:n]
        return piece

    def token_text(self, token_id: int) -> str:
        if token_id < 0:
            return ""
        return self.piece(token_id).decode("utf-8", errors="replace")

    def special_tokens(self) -> list[str]:
        """The text of every control and user-defined token."""
        special = llama_cpp.LLAMA_TOKEN_ATTR_CONTROL | llama_cpp.LLAMA_TOKEN_ATTR_USER_DEFINED
        return [
            self.token_text(t)
            for t in range(self.n_vocab)
            if llama_cpp.llama_vocab_get_attr(self.vocab, t) & special
        ]

    def kv_bytes_per_token(self) -> int:
        """Bytes the (f16) KV cache takes per token: keys and values of every layer."""
        model = self.handle
        n_head = max(1, int(llama_cpp.llama_model_n_head(model)))
        arch = self.metadata.get("general.architecture", "")
        head_k = int(self.metadata.get(f"{arch}.attention.key_length", 0)) or (
            int(llama_cpp.llama_model_n_embd(model)) // n_head
        )
        head_v = int(self.metadata.get(f"{arch}.attention.value_length", 0)) or head_k
        n_head_kv = int(llama_cpp.llama_model_n_head_kv(model))
        n_layer = int(llama_cpp.llama_model_n_layer(model))
        return n_layer * n_head_kv * (head_k + head_v) * _KV_ELEMENT_BYTES

    def lltokenizer(self) -> LLTokenizer:
        """llguidance's view of the vocabulary (takes up to a second)."""
        return lltokenizer(self.vocab)


def lltokenizer(vocab: llama_cpp.llama_vocab_p) -> LLTokenizer:
    """llguidance's view of a llama.cpp vocabulary (takes up to a second)."""
    with warnings.catch_warnings():
        # llguidance still calls llama_token_get_attr, which llama-cpp-python deprecated.
        warnings.simplefilter("ignore", DeprecationWarning)
        return lltokenizer_from_vocab(vocab)


def _metadata(model: llama_cpp.llama_model_p) -> dict[str, str]:
    """Every GGUF metadata key with its value as text."""
    size = 1024
    buffer = ctypes.create_string_buffer(size)
    metadata: dict[str, str] = {}

    def read(getter: object, index: int) -> str:
        nonlocal size, buffer
        n = getter(model, index, buffer, size)  # type: ignore[operator]
        if n >= size:
            size = n + 1
            buffer = ctypes.create_string_buffer(size)
            n = getter(model, index, buffer, size)  # type: ignore[operator]
        return buffer.raw[: max(n, 0)].decode("utf-8", errors="replace")

    for i in range(llama_cpp.llama_model_meta_count(model)):
        key = read(llama_cpp.llama_model_meta_key_by_index, i)
        metadata[key] = read(llama_cpp.llama_model_meta_val_str_by_index, i)
    return metadata
