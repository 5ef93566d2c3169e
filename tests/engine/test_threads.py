"""The default thread count: CPUs this process may use, as physical cores, under a quota."""

from __future__ import annotations

import logging
from pathlib import Path

import anyio
import llama_cpp
import pytest

from exloop.engine.llama_cpp import LlamaCppEngine
from exloop.engine.threads import cgroup_cpu_quota, default_threads, physical_cores


def _tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def _topology(cores: list[tuple[int, int]]) -> dict[str, str]:
    """(package, core) of CPU 0, 1, ..."""
    files = {}
    for cpu, (package, core) in enumerate(cores):
        base = f"sys/devices/system/cpu/cpu{cpu}/topology"
        files[f"{base}/physical_package_id"] = str(package)
        files[f"{base}/core_id"] = str(core)
    return files


def test_hyper_threads_of_one_core_count_once(tmp_path: Path) -> None:
    root = _tree(tmp_path, _topology([(0, 0), (0, 1), (0, 0), (0, 1)]))
    assert physical_cores(range(4), root) == 2
    choice = default_threads(range(4), root)
    assert choice.threads == 2
    assert "4 CPUs" in choice.reason and "2 physical cores" in choice.reason


def test_the_affinity_mask_limits_the_cores(tmp_path: Path) -> None:
    root = _tree(tmp_path, _topology([(0, 0), (0, 1), (1, 0), (1, 1)]))
    assert default_threads([2, 3], root).threads == 2
    assert default_threads([0, 2], root).threads == 2  # same core id, other package


def test_a_cgroup_v2_quota_caps_the_threads(tmp_path: Path) -> None:
    files = _topology([(0, c) for c in range(8)])
    files["proc/self/cgroup"] = "0::/docker/abc\n"
    files["sys/fs/cgroup/docker/abc/cpu.max"] = "150000 100000\n"
    files["sys/fs/cgroup/docker/cpu.max"] = "max 100000\n"
    root = _tree(tmp_path, files)
    assert cgroup_cpu_quota(root) == 2
    choice = default_threads(range(8), root)
    assert choice.threads == 2 and "quota of 2" in choice.reason


def test_a_cgroup_v1_quota_and_none(tmp_path: Path) -> None:
    files = {
        "proc/self/cgroup": "4:memory:/x\n1:cpu,cpuacct:/job\n0::/\n",
        "sys/fs/cgroup/cpu/job/cpu.cfs_quota_us": "300000\n",
        "sys/fs/cgroup/cpu/job/cpu.cfs_period_us": "100000\n",
        "sys/fs/cgroup/cpu/cpu.cfs_quota_us": "-1\n",
        "sys/fs/cgroup/cpu/cpu.cfs_period_us": "100000\n",
    }
    assert cgroup_cpu_quota(_tree(tmp_path / "a", files)) == 3
    del files["sys/fs/cgroup/cpu/job/cpu.cfs_quota_us"]
    assert cgroup_cpu_quota(_tree(tmp_path / "b", files)) is None


def test_unreadable_topology_counts_each_cpu(tmp_path: Path) -> None:
    assert default_threads(range(3), tmp_path).threads == 3


def test_the_engine_uses_and_logs_the_default(
    model_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="exloop.engine.llama_cpp")
    engine = LlamaCppEngine(model_path, n_ctx=256)
    try:
        expected = default_threads().threads
        assert f"llama.cpp: {expected} threads" in caplog.text
        assert llama_cpp.llama_n_threads(engine._ctx) == expected  # noqa: SLF001
        assert llama_cpp.llama_n_threads_batch(engine._ctx) == expected  # noqa: SLF001
    finally:
        anyio.run(engine.aclose)
