"""Build and install llama-cpp-python for the CPU this runs on (called by scripts/install.sh).

Run it with the interpreter of the environment to install into (``.venv/bin/python``). It
probes which instruction sets this machine really runs (see ``engine/cpu_features.py``),
builds llama-cpp-python with exactly those (``GGML_NATIVE=OFF``, every option explicit), and
installs the wheel. Wheels are kept in ``$XDG_CACHE_HOME/exloop/wheels`` (default
``~/.cache/exloop/wheels``) under a tag of the version and the build options, never in pip's
own cache: pip keys its cache by the source alone, so a wheel built earlier with other flags
(a native build, a build on another CPU sharing the home directory) would be reused silently.
A marker in the environment records the tag installed, so a second run only checks, and an
environment holding any other build of llama-cpp-python gets the right one.

``CMAKE_ARGS`` from the environment is appended to the derived options (CMake lets the last
``-D`` win), for builds with a GPU backend or other choices of your own; it is part of the tag.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent
PROBE_SOURCE = ROOT / "scripts" / "cpu_probe.c"
MARKER = Path(sys.prefix) / "exloop-llama-cpp-build.json"
PACKAGE = "llama-cpp-python"


def _cpu_features() -> ModuleType:
    """``engine/cpu_features.py`` by path: exloop itself is not installed yet."""
    spec = importlib.util.spec_from_file_location(
        "exloop_cpu_features", ROOT / "engine" / "cpu_features.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while decorating
    spec.loader.exec_module(module)
    return module


def pinned_version() -> str:
    """The exact llama-cpp-python version pyproject.toml pins."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for requirement in project["dependencies"]:
        name, _, version = requirement.partition("==")
        if name.strip().lower().replace("_", "-") == PACKAGE:
            return str(version).strip()
    raise SystemExit(f"pyproject.toml must pin {PACKAGE}==VERSION")


def wheel_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "exloop" / "wheels"


def installed_tag() -> str | None:
    try:
        return str(json.loads(MARKER.read_text())["tag"])
    except (OSError, ValueError, KeyError):
        return None


def build_wheel(version: str, cmake_args: str, into: Path) -> Path:
    """Compile llama-cpp-python ``version`` with ``cmake_args``; the wheel lands in ``into``
    only once complete, so an interrupted build is never taken for a finished one."""
    into.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=into.parent, prefix=".building-") as tmp:
        env = {
            **os.environ,
            "CMAKE_ARGS": cmake_args,
            "FORCE_CMAKE": "1",
            "CMAKE_BUILD_PARALLEL_LEVEL": os.environ.get(
                "CMAKE_BUILD_PARALLEL_LEVEL", str(os.cpu_count() or 1)
            ),
        }
        subprocess.run(
            [
                sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-cache-dir",
                "--no-binary", PACKAGE, f"{PACKAGE}=={version}", "--wheel-dir", tmp,
            ],
            env=env,
            check=True,
        )  # fmt: skip
        (built,) = Path(tmp).glob("*.whl")
        target = into / built.name
        shutil.move(built, target)
        return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--print", action="store_true", help="only print the CMake options this machine gets"
    )
    args = parser.parse_args()

    features = _cpu_features()
    flags = features.machine_flags()
    candidates = [s.name for s in features.INSTRUCTION_SETS if set(s.cpuinfo) <= flags]
    ran = features.probe(PROBE_SOURCE, compiler=os.environ.get("CC", "cc"), candidates=candidates)
    sets = features.usable(flags, ran)
    cmake_args = features.cmake_args(features.cmake_options(sets))
    if extra := os.environ.get("CMAKE_ARGS", "").strip():
        cmake_args = f"{cmake_args} {extra}"
    refused = sorted(set(candidates) - sets)
    print(
        f"llama.cpp CPU build: {' '.join(s for s in candidates if s in sets) or 'baseline x86-64'}"
        + (f" (listed by the CPU but not usable here: {' '.join(refused)})" if refused else "")
    )
    if args.print:
        print(cmake_args)
        return

    version = pinned_version()
    tag = hashlib.sha256(f"{version}\n{cmake_args}".encode()).hexdigest()[:16]
    if installed_tag() == tag:
        print(f"{PACKAGE} {version} ({tag}) is installed")
        return
    wheel_dir = wheel_cache() / f"{PACKAGE}-{version}-{tag}"
    wheels = sorted(wheel_dir.glob("*.whl"))
    if wheels:
        wheel = wheels[0]
        print(f"Using the {PACKAGE} wheel built earlier for these options: {wheel}")
    else:
        print(f"Compiling {PACKAGE} {version} with {cmake_args} (minutes)")
        wheel = build_wheel(version, cmake_args, wheel_dir)
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--force-reinstall",
         str(wheel)],
        check=True,
    )  # fmt: skip
    MARKER.write_text(json.dumps({"version": version, "tag": tag, "cmake_args": cmake_args}))


if __name__ == "__main__":
    main()
