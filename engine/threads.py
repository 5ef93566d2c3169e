"""How many CPU threads llama.cpp uses when the operator does not say.

llama-cpp-python's default is half the logical CPUs (it assumes two hyper-threads per core),
which on a 2-core VM runs one thread and leaves a third of the speed unused (measured: 49-55
tokens/s with the default against 75 with two threads). llama.cpp's own server counts
physical cores. exloop counts what this process may really use:

* the CPUs in its affinity mask (``taskset``, cpusets);
* capped by a cgroup CPU quota when one is set (containers: ``--cpus=2`` is a quota of two
  CPUs' time spread over every CPU of the host);
* as physical cores: hyper-threads of one core share its vector units, and two llama.cpp
  threads on one core slow each other down.

The reason is kept so the server can log its choice.
"""

from __future__ import annotations

import math
import os
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class ThreadChoice:
    """A thread count and why it was chosen."""

    threads: int
    reason: str


def default_threads(cpus: Collection[int] | None = None, root: Path = Path("/")) -> ThreadChoice:
    """The thread count for llama.cpp: ``cpus`` defaults to this process's affinity mask;
    ``root`` lets tests fake /sys and /proc."""
    cpus = sorted(os.sched_getaffinity(0) if cpus is None else cpus)
    cores = physical_cores(cpus, root)
    quota = cgroup_cpu_quota(root)
    reason = f"{len(cpus)} CPUs usable by this process, {cores} physical cores"
    threads = cores
    if quota is not None and quota < threads:
        threads = quota
        reason += f", a cgroup quota of {quota} CPUs"
    threads = max(1, threads)
    return ThreadChoice(threads, reason)


def physical_cores(cpus: Iterable[int], root: Path = Path("/")) -> int:
    """How many distinct physical cores ``cpus`` lie on; each CPU counts as a core of its
    own where the topology cannot be read."""
    cores: set[tuple[str, str] | int] = set()
    for cpu in cpus:
        topology = root / f"sys/devices/system/cpu/cpu{cpu}/topology"
        try:
            package = (topology / "physical_package_id").read_text().strip()
            core = (topology / "core_id").read_text().strip()
        except OSError:
            cores.add(cpu)
            continue
        cores.add((package, core))
    return len(cores)


def cgroup_cpu_quota(root: Path = Path("/")) -> int | None:
    """The CPU quota of this process's cgroup, rounded up to whole CPUs (None: no quota).

    cgroup v2 keeps it in ``cpu.max`` ("200000 100000", or "max 100000" for none); v1 in
    ``cpu.cfs_quota_us`` (-1 for none) over ``cpu.cfs_period_us``.
    """
    quotas = [
        q
        for relative in _cgroup_paths(root)
        for ancestor in _ancestors(relative)
        if (q := _quota_at(root, ancestor)) is not None
    ]
    return min(quotas, default=None)


def _quota_at(root: Path, relative: str) -> int | None:
    """The quota set on one cgroup (v2 or v1), in whole CPUs."""
    v2 = root / "sys/fs/cgroup" / relative / "cpu.max"
    v1 = root / "sys/fs/cgroup/cpu" / relative
    try:
        quota, period = v2.read_text().split()[:2]
    except (OSError, ValueError):
        try:
            quota = (v1 / "cpu.cfs_quota_us").read_text().strip()
            period = (v1 / "cpu.cfs_period_us").read_text().strip()
        except OSError:
            return None
    try:
        microseconds, per = int(quota), int(period)
    except ValueError:
        return None  # "max" (v2): no quota
    if microseconds <= 0 or per <= 0:
        return None  # -1 (v1): no quota
    return max(1, math.ceil(microseconds / per))


def _ancestors(relative: str) -> list[str]:
    """``a/b/c`` and every cgroup above it, up to the root of the hierarchy."""
    parts = [p for p in relative.split("/") if p]
    return ["/".join(parts[:n]) for n in range(len(parts), -1, -1)]


def _cgroup_paths(root: Path) -> list[str]:
    """This process's cgroup paths (relative to the hierarchy), the CPU controller's first."""
    try:
        lines = (root / "proc/self/cgroup").read_text().splitlines()
    except OSError:
        return [""]
    paths: list[str] = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        relative = path.lstrip("/")
        if "cpu" in controllers.split(","):
            paths.insert(0, relative)
        elif controllers == "":
            paths.append(relative)  # the v2 unified hierarchy
    return paths or [""]
