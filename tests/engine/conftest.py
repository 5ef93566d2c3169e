"""Engine tests run the real default model (SmolLM2-135M), loaded once per session."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import anyio
import llama_cpp
import pytest
from llguidance import LLTokenizer

from exloop.engine.default_model import default_model_path
from exloop.engine.llama_cpp import LlamaCppEngine
from exloop.engine.llama_model import lltokenizer as build_lltokenizer

#: Small, so that context-window tests need only short prompts.
TEST_CONTEXT = 512


@pytest.fixture(scope="session")
def model_path() -> Path:
    return default_model_path()


@pytest.fixture(scope="session")
def engine(model_path: Path) -> Iterator[LlamaCppEngine]:
    # One thread: the suite runs servers and engines beside each other on few cores.
    loaded = LlamaCppEngine(model_path, n_ctx=TEST_CONTEXT, n_threads=1)
    yield loaded
    anyio.run(loaded.aclose)


@pytest.fixture(scope="session")
def vocab_model(model_path: Path) -> Iterator[llama_cpp.Llama]:
    """The model's tokenizer alone, for tests that need token ids but no generation."""
    llm = llama_cpp.Llama(str(model_path), vocab_only=True, verbose=False)
    yield llm
    llm.close()


@pytest.fixture(scope="session")
def lltokenizer(vocab_model: llama_cpp.Llama) -> LLTokenizer:
    return build_lltokenizer(llama_cpp.llama_model_get_vocab(vocab_model.model))
