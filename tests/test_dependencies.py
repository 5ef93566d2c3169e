"""The declared dependencies are the ones the code uses: every runtime requirement in
pyproject.toml is imported by exloop's own modules (or is listed below with the reason)."""

from __future__ import annotations

import ast
import re
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("engine", "orchestrator", "tools", "server")

#: Requirements exloop does not import itself, and why they are declared.
INDIRECT = {
    # trafilatura imports it; older pips skip trafilatura's own requirement of it.
    "lxml-html-clean": "trafilatura's HTML cleaner",
}


def _normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirements() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = {re.split(r"[\s<>=!~\[;]", spec, maxsplit=1)[0] for spec in project["dependencies"]}
    return {_normalized(name) for name in names}


def _imported_modules() -> set[str]:
    modules: set[str] = set()
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    modules.update(alias.name.split(".")[0] for alias in node.names)
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    modules.add(node.module.split(".")[0])
    return modules


def test_every_runtime_dependency_is_imported() -> None:
    distributions = packages_distributions()
    imported = {
        _normalized(dist)
        for module in _imported_modules()
        for dist in distributions.get(module, ())
    }
    unused = _requirements() - imported - set(INDIRECT)
    assert not unused, f"declared in pyproject.toml but never imported: {sorted(unused)}"
