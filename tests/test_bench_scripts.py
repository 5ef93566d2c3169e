"""Every benchmark script still starts: its imports resolve and its arguments parse.

The benchmarks run by hand, on a quiet machine, so nothing else notices when a change moves
what one imports (two of them once failed at import after a refactor, found only when their
figures were due). ``--help`` stops after parsing, before any model loads.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
#: Modules the scripts share, not scripts themselves.
SHARED = {"__init__", "servers", "workloads"}
SCRIPTS = sorted(p.stem for p in (ROOT / "bench").glob("*.py") if p.stem not in SHARED)


def test_the_benchmarks_are_found() -> None:
    assert {"engine_overhead", "cpu_concurrency", "store"} <= set(SCRIPTS)


@pytest.mark.parametrize("name", SCRIPTS)
def test_benchmark_starts(name: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", f"bench.{name}", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "usage:" in result.stdout
