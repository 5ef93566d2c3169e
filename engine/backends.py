"""Choosing and opening a backend: llama.cpp for GGUF files, ExLlamaV2 for model directories.

``--backend auto`` (the default) picks ExLlamaV2 when the model is a directory and CUDA and
ExLlamaV2 are installed, llama.cpp otherwise; asking for a combination that cannot work is an
error that says what to change. Neither torch nor ExLlamaV2 is imported unless the GPU backend
is chosen, so the CPU path never needs them.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, TypeAlias

from .grammar_sandbox import CompileBudget
from .protocol import Engine

Backend: TypeAlias = Literal["llama.cpp", "exllamav2"]
BACKEND_CHOICES: tuple[str, ...] = ("auto", "llama.cpp", "exllamav2")
CACHE_MODES: tuple[str, ...] = ("fp16", "q8", "q6", "q4")


class BackendUnavailable(ValueError):
    """The requested backend cannot load the given model on this machine."""


def select_backend(model: str | None, backend: str | None) -> Backend:
    """The backend for ``model`` (a GGUF file, a model directory, or ``None`` for the default
    GGUF) under ``--backend`` (``auto``, ``llama.cpp``, ``exllamav2``; ``None`` is ``auto``).

    Raises :class:`BackendUnavailable` with the fix when the choice cannot work.
    """
    choice = backend or "auto"
    if choice not in BACKEND_CHOICES:
        raise BackendUnavailable(
            f"Unknown backend {choice!r}; choose one of {', '.join(BACKEND_CHOICES)}."
        )
    directory = model is not None and Path(model).expanduser().is_dir()
    if choice == "llama.cpp":
        if directory:
            raise BackendUnavailable(
                f"llama.cpp loads a GGUF file, and {model} is a directory: pass a .gguf file, "
                f"or --backend exllamav2 for a Hugging Face model directory."
            )
        return "llama.cpp"
    if choice == "exllamav2":
        if not directory:
            raise BackendUnavailable(
                "--backend exllamav2 loads a model directory (EXL2 or safetensors weights with "
                f"config.json and tokenizer.json); {model or 'the default GGUF model'} is not one."
            )
        problem = gpu_problem()
        if problem is not None:
            raise BackendUnavailable(f"--backend exllamav2 cannot run here: {problem}")
        return "exllamav2"
    if not directory:
        return "llama.cpp"
    problem = gpu_problem()
    if problem is not None:
        raise BackendUnavailable(
            f"{model} is a model directory, which only the GPU backend loads, but {problem}. "
            f"Pass a GGUF file to run on the CPU."
        )
    return "exllamav2"


def gpu_problem() -> str | None:
    """Why the GPU backend cannot run here, or ``None`` when it can."""
    if importlib.util.find_spec("exllamav2") is None:
        return "exllamav2 is not installed (pip install 'exloop[gpu]')"
    if importlib.util.find_spec("torch") is None:
        return "torch is not installed (install the CUDA build of torch, then 'exloop[gpu]')"
    import torch

    if not torch.cuda.is_available():
        return "torch finds no CUDA device (torch.cuda.is_available() is False)"
    return None


@dataclass(frozen=True, slots=True)
class EngineSettings:
    """How to load the model: what ``exloop serve``'s engine flags say."""

    model: Path
    backend: Backend
    name: str | None = None
    tool_call_format: str | None = None
    #: A Jinja chat template used instead of the model's own (``--chat-template``).
    chat_template: str | None = None
    #: llama.cpp's context window (``--n-ctx``).
    n_ctx: int | None = None
    #: llama.cpp's CPU threads (``--threads``; None: the physical cores this process may use).
    n_threads: int | None = None
    #: llama.cpp's threads for prompt evaluation (``--threads-batch``; None: ``n_threads``).
    n_threads_batch: int | None = None
    #: ExLlamaV2's context length per job (``--max-seq-len``).
    max_seq_len: int | None = None
    #: ExLlamaV2's KV cache type (``--cache-mode``).
    cache_mode: Literal["fp16", "q8", "q6", "q4"] = "fp16"
    #: ExLlamaV2's concurrent jobs (``--max-batch-size``).
    max_batch_size: int = 8
    #: What compiling one constraint may cost (``--grammar-timeout``, ``--grammar-memory``...).
    grammar_budget: CompileBudget = field(default_factory=CompileBudget)


def open_engine(settings: EngineSettings) -> Engine:
    """Load the model with the chosen backend; blocks (run it in a worker thread)."""
    if settings.backend == "exllamav2":
        from .exllamav2_backend import ExLlamaV2Engine

        return ExLlamaV2Engine.load(
            settings.model,
            cache_mode=settings.cache_mode,
            max_seq_len=settings.max_seq_len,
            max_batch_size=settings.max_batch_size,
            name=settings.name,
            tool_call_format=settings.tool_call_format,
            grammar_budget=settings.grammar_budget,
            chat_template=settings.chat_template,
        )
    from .llama_cpp import LlamaCppEngine

    return LlamaCppEngine(
        settings.model,
        n_ctx=settings.n_ctx,
        n_threads=settings.n_threads,
        n_threads_batch=settings.n_threads_batch,
        name=settings.name,
        tool_call_format=settings.tool_call_format,
        grammar_budget=settings.grammar_budget,
        chat_template=settings.chat_template,
    )
