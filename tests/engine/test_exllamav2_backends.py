"""Backend selection: GGUF files go to llama.cpp, model directories to ExLlamaV2 on CUDA."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from importlib.machinery import ModuleSpec
from pathlib import Path

import pytest

from exloop.engine import backends
from exloop.engine.backends import BackendUnavailable, gpu_problem, select_backend


@pytest.fixture
def gguf(tmp_path: Path) -> str:
    path = tmp_path / "model.gguf"
    path.write_bytes(b"GGUF")
    return str(path)


@pytest.fixture
def model_dir(tmp_path: Path) -> str:
    directory = tmp_path / "Llama-3.1-8B-exl2"
    directory.mkdir()
    return str(directory)


@pytest.fixture
def gpu_ready(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(backends, "gpu_problem", lambda: None)


@pytest.fixture
def no_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(backends, "gpu_problem", lambda: "torch finds no CUDA device")


@pytest.mark.parametrize("backend", [None, "auto", "llama.cpp"])
def test_gguf_files_and_the_default_model_run_on_llama_cpp(gguf: str, backend: str | None) -> None:
    assert select_backend(gguf, backend) == "llama.cpp"
    assert select_backend(None, backend) == "llama.cpp"


@pytest.mark.usefixtures("gpu_ready")
@pytest.mark.parametrize("backend", [None, "auto", "exllamav2"])
def test_a_directory_runs_on_exllamav2_when_cuda_is_there(
    model_dir: str, backend: str | None
) -> None:
    assert select_backend(model_dir, backend) == "exllamav2"


@pytest.mark.usefixtures("no_gpu")
def test_a_directory_without_cuda_says_why(model_dir: str) -> None:
    with pytest.raises(BackendUnavailable, match="only the GPU backend loads.*no CUDA device"):
        select_backend(model_dir, "auto")
    with pytest.raises(BackendUnavailable, match="cannot run here: torch finds no CUDA"):
        select_backend(model_dir, "exllamav2")


@pytest.mark.usefixtures("gpu_ready")
def test_mismatched_model_and_backend_are_errors(gguf: str, model_dir: str) -> None:
    with pytest.raises(BackendUnavailable, match="is a directory"):
        select_backend(model_dir, "llama.cpp")
    with pytest.raises(BackendUnavailable, match="loads a model directory"):
        select_backend(gguf, "exllamav2")
    with pytest.raises(BackendUnavailable, match="default GGUF model"):
        select_backend(None, "exllamav2")
    with pytest.raises(BackendUnavailable, match="Unknown backend 'vllm'"):
        select_backend(gguf, "vllm")


def test_gpu_problem_names_the_missing_package(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec

    def without(missing: str):  # type: ignore[no-untyped-def]
        def find_spec(name: str, package: str | None = None) -> ModuleSpec | None:
            return None if name == missing else ModuleSpec(name, None)

        return find_spec

    monkeypatch.setattr(importlib.util, "find_spec", without("exllamav2"))
    assert gpu_problem() == "exllamav2 is not installed (pip install 'exloop[gpu]')"
    monkeypatch.setattr(importlib.util, "find_spec", without("torch"))
    problem = gpu_problem()
    assert problem is not None and problem.startswith("torch is not installed")
    monkeypatch.setattr(importlib.util, "find_spec", real)


def test_choosing_never_imports_torch_or_exllamav2(gguf: str, model_dir: str) -> None:
    before = set(sys.modules)
    select_backend(gguf, "auto")
    with pytest.raises(BackendUnavailable):
        select_backend(model_dir, "llama.cpp")
    assert not {
        name for name in set(sys.modules) - before if name.split(".")[0] in ("torch", "exllamav2")
    }


def test_importing_the_cpu_side_needs_neither() -> None:
    # A fresh interpreter: on a GPU machine this test session may have imported both.
    code = (
        "import sys\n"
        "import exloop.engine, exloop.engine.backends, exloop.engine.exllamav2_driver\n"
        "import exloop.engine.exllamav2_filter, exloop.engine.exllamav2_vocab\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'exllamav2'}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
