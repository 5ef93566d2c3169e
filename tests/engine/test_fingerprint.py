"""system_fingerprint: the same for the same model files, backend and versions, and not for
others."""

from __future__ import annotations

import re
from pathlib import Path

from exloop.engine.fingerprint import SAMPLE, model_fingerprint


def test_stable_and_shaped_like_openais(tmp_path: Path) -> None:
    model = tmp_path / "model.gguf"
    model.write_bytes(b"GGUF" + bytes(100))
    first = model_fingerprint("llama.cpp", "model", model)
    assert re.fullmatch(r"fp_[0-9a-f]{10}", first)
    assert model_fingerprint("llama.cpp", "model", model) == first
    # A copy of the same file elsewhere is the same model.
    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / "model.gguf").write_bytes(model.read_bytes())
    assert model_fingerprint("llama.cpp", "model", copy / "model.gguf") == first


def test_changes_with_the_files_and_the_backend(tmp_path: Path) -> None:
    model = tmp_path / "model.gguf"
    body = bytearray(3 * SAMPLE)
    model.write_bytes(body)
    before = model_fingerprint("llama.cpp", "model", model)
    body[-1] = 1  # the same size, another tail
    model.write_bytes(body)
    after = model_fingerprint("llama.cpp", "model", model)
    assert after != before
    assert model_fingerprint("exllamav2", "model", model) != after
    assert model_fingerprint("llama.cpp", "model") != after


def test_a_model_directory_counts_its_files(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(bytes(10))
    before = model_fingerprint("exllamav2", "m", tmp_path)
    (tmp_path / "model.safetensors").write_bytes(bytes(11))
    assert model_fingerprint("exllamav2", "m", tmp_path) != before
