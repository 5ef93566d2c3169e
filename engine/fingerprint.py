"""A short digest naming what generates the tokens: the model's files, the backend and the
software versions (Chat Completions reports it as ``system_fingerprint``).

Clients compare fingerprints to tell whether answers to the same request (same ``seed``) may
differ because the server changed. Hashing whole weight files would take seconds per GB at
every start, so each file counts by its name, its size and its first and last MiB: GGUF keeps
its metadata (architecture, quantization, tokenizer) in its head, and a re-quantized or
retrained model differs in size or tail as well.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

#: Bytes read from each end of a model file.
SAMPLE = 1 << 20

#: The distribution that implements each backend, whose version joins the digest.
_BACKEND_DISTRIBUTIONS = {"llama.cpp": "llama-cpp-python", "exllamav2": "exllamav2"}


def model_fingerprint(backend: str, name: str, model: Path | None = None) -> str:
    """``fp_`` and ten hex digits, the same for the same model, backend and versions.

    ``model`` is the GGUF file or model directory (its files, not its subfolders, count);
    without it, the model's ``name`` alone names the model. Reads about 2 MiB per file: call
    it from a worker thread.
    """
    digest = hashlib.sha256()
    parts = [
        _version("exloop"),
        backend,
        _version(_BACKEND_DISTRIBUTIONS.get(backend, backend)),
        name,
    ]
    for part in parts:
        digest.update(part.encode() + b"\0")
    for path in _files(model) if model is not None else ():
        _add_file(digest, path)
    return "fp_" + digest.hexdigest()[:10]


def _version(distribution: str) -> str:
    try:
        return version(distribution)
    except PackageNotFoundError:
        return "unknown"


def _files(model: Path) -> Iterator[Path]:
    if model.is_dir():
        yield from sorted(p for p in model.iterdir() if p.is_file())
    else:
        yield model


def _add_file(digest: hashlib._Hash, path: Path) -> None:
    size = path.stat().st_size
    digest.update(f"{path.name}\0{size}\0".encode())
    with path.open("rb") as file:
        digest.update(file.read(SAMPLE))
        if size > SAMPLE:
            file.seek(max(SAMPLE, size - SAMPLE))
            digest.update(file.read(SAMPLE))
