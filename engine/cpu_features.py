"""Which x86 instruction sets llama.cpp may use on this machine.

llama.cpp's default build (``GGML_NATIVE=ON``, i.e. ``-march=native``) compiles in whatever
the CPU *advertises*. A virtual machine may advertise more than its kernel enables: an Intel
VM listed ``amx_tile amx_int8`` in ``/proc/cpuinfo`` while its kernel did not grant AMX tile
data (``ARCH_GET_XCOMP_SUPP`` without bit 18), and the native build died with SIGILL on the
first prompt of about 90 tokens. llama.cpp's runtime dispatch (``GGML_CPU_ALL_VARIANTS``)
does not help: its x86 scoring reads CPUID only ("FIXME: this does not check for OS
support") and would pick the AMX variant on that VM too.

So the install derives the build from the machine it runs on: an instruction set is compiled
in only when the CPU lists it *and* a probe program that executes it exits cleanly
(``scripts/cpu_probe.c``; for AMX the probe also checks the kernel's XCOMP support and asks
for permission, as llama.cpp does). Every option is set explicitly, ON or OFF, because
llama.cpp turns SSE4.2/AVX/AVX2/FMA/F16C/BMI2 on by default once ``GGML_NATIVE`` is off.

At load, :func:`unsupported_in_build` compares what the installed library was compiled with
(``llama_print_system_info()``) with what this machine runs, so a build copied from another
machine fails with a clear message instead of SIGILL on the first request.

Stdlib only: ``scripts/build_llama_cpp.py`` loads this file by path before exloop is installed.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform
import subprocess
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

#: llama-cpp-python's CMake turns native tuning on unless told otherwise.
NATIVE_OPTION = "GGML_NATIVE"


@dataclass(frozen=True, slots=True)
class InstructionSet:
    """One group of instructions, as llama.cpp's build options and the machine name it."""

    #: The probe's name (``-DPROBE_<name>`` in ``scripts/cpu_probe.c``).
    name: str
    #: llama.cpp CMake options that compile it in.
    options: tuple[str, ...]
    #: ``/proc/cpuinfo`` flags the CPU must list.
    cpuinfo: tuple[str, ...]
    #: Sets that must be usable too (llama.cpp's code for this one assumes them).
    requires: tuple[str, ...] = ()
    #: The feature name ``llama_print_system_info()`` prints when it is compiled in.
    system_info: str | None = None


INSTRUCTION_SETS: tuple[InstructionSet, ...] = (
    InstructionSet("sse42", ("GGML_SSE42",), ("sse4_2",)),
    InstructionSet("avx", ("GGML_AVX",), ("avx",), ("sse42",), "AVX"),
    InstructionSet("f16c", ("GGML_F16C",), ("f16c",), ("avx",), "F16C"),
    InstructionSet("fma", ("GGML_FMA",), ("fma",), ("avx",), "FMA"),
    InstructionSet("avx2", ("GGML_AVX2",), ("avx2",), ("avx",), "AVX2"),
    InstructionSet("bmi2", ("GGML_BMI2",), ("bmi2",), (), "BMI2"),
    InstructionSet("avx_vnni", ("GGML_AVX_VNNI",), ("avx_vnni",), ("avx2",), "AVX_VNNI"),
    InstructionSet(
        "avx512",
        ("GGML_AVX512",),
        ("avx512f", "avx512cd", "avx512vl", "avx512dq", "avx512bw"),
        ("avx2", "fma", "f16c"),
        "AVX512",
    ),
    InstructionSet(
        "avx512_vbmi", ("GGML_AVX512_VBMI",), ("avx512vbmi",), ("avx512",), "AVX512_VBMI"
    ),
    InstructionSet(
        "avx512_vnni", ("GGML_AVX512_VNNI",), ("avx512_vnni",), ("avx512",), "AVX512_VNNI"
    ),
    InstructionSet(
        "avx512_bf16", ("GGML_AVX512_BF16",), ("avx512_bf16",), ("avx512",), "AVX512_BF16"
    ),
    # llama.cpp's AMX kernels are built only beside AVX512-VNNI.
    InstructionSet(
        "amx",
        ("GGML_AMX_TILE", "GGML_AMX_INT8", "GGML_AMX_BF16"),
        ("amx_tile", "amx_int8", "amx_bf16"),
        ("avx512_vnni",),
        "AMX_INT8",
    ),
)

_BY_NAME = {s.name: s for s in INSTRUCTION_SETS}

#: Linux's arch_prctl: the syscall number on x86-64, and the query for supported xstate.
_SYS_ARCH_PRCTL = 158
_ARCH_GET_XCOMP_SUPP = 0x1021
_XFEATURE_XTILEDATA = 18


def cpuinfo_flags(text: str) -> frozenset[str]:
    """The flags of the first processor in ``/proc/cpuinfo`` text."""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return frozenset(value.split())
    return frozenset()


def machine_flags() -> frozenset[str]:
    """This machine's CPU flags (empty where there is no ``/proc/cpuinfo``)."""
    try:
        return cpuinfo_flags(Path("/proc/cpuinfo").read_text())
    except OSError:
        return frozenset()


def usable(cpu_flags: frozenset[str], ran: Iterable[str]) -> frozenset[str]:
    """The instruction sets the build may use: listed by the CPU, executed by their probe,
    and with every set they require usable too (in table order, so requirements come first)."""
    ran = frozenset(ran)
    chosen: set[str] = set()
    for s in INSTRUCTION_SETS:
        if set(s.cpuinfo) <= cpu_flags and s.name in ran and all(r in chosen for r in s.requires):
            chosen.add(s.name)
    return frozenset(chosen)


def cmake_options(sets: Iterable[str]) -> dict[str, bool]:
    """Every llama.cpp CPU option, ON exactly for ``sets``; native tuning off."""
    sets = frozenset(sets)
    options = {NATIVE_OPTION: False}
    for s in INSTRUCTION_SETS:
        for option in s.options:
            options[option] = s.name in sets
    return options


def cmake_args(options: Mapping[str, bool]) -> str:
    """``options`` as ``CMAKE_ARGS`` text, in a stable order."""
    return " ".join(f"-D{k}={'ON' if v else 'OFF'}" for k, v in sorted(options.items()))


def probe(
    source: Path, *, compiler: str = "cc", candidates: Iterable[str] | None = None
) -> set[str]:
    """Compile and run the probe of each candidate set; the names whose probe exited 0.

    A set the compiler cannot target, or whose probe dies (SIGILL) or refuses (AMX without
    the kernel's permission), is left out.
    """
    names = list(candidates) if candidates is not None else [s.name for s in INSTRUCTION_SETS]
    ran: set[str] = set()
    with tempfile.TemporaryDirectory(prefix="exloop-cpu-probe-") as tmp:
        for name in names:
            binary = Path(tmp) / name
            built = subprocess.run(
                [compiler, "-O1", f"-DPROBE_{name}", "-o", str(binary), str(source)],
                capture_output=True,
                check=False,
            )
            if built.returncode != 0:
                continue
            if subprocess.run([str(binary)], capture_output=True, check=False).returncode == 0:
                ran.add(name)
    return ran


def amx_granted_by_kernel() -> bool:
    """Whether the kernel supports AMX tile data (``ARCH_GET_XCOMP_SUPP`` bit 18)."""
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    supported = ctypes.c_ulong(0)
    if libc.syscall(_SYS_ARCH_PRCTL, _ARCH_GET_XCOMP_SUPP, ctypes.byref(supported)) != 0:
        return False
    return bool(supported.value & (1 << _XFEATURE_XTILEDATA))


def compiled_features(system_info: str) -> frozenset[str]:
    """The features ``llama_print_system_info()`` reports as compiled in (``NAME = 1``)."""
    found: set[str] = set()
    for entry in system_info.replace("\n", "|").split("|"):
        # "CPU : SSE3 = 1 " opens each backend's list.
        key, _, value = entry.rpartition(":")[2].partition("=")
        if value.strip() == "1":
            found.add(key.strip())
    return frozenset(found)


def unsupported_in_build(
    system_info: str, cpu_flags: frozenset[str], *, amx_kernel: bool
) -> list[str]:
    """The instruction sets the installed llama.cpp uses that this machine cannot run.

    Without ``/proc/cpuinfo`` nothing can be told, and nothing is reported.
    """
    if not cpu_flags:
        return []
    compiled = compiled_features(system_info)
    missing = []
    for s in INSTRUCTION_SETS:
        if s.system_info is None or s.system_info not in compiled:
            continue
        if not set(s.cpuinfo) <= cpu_flags or (s.name == "amx" and not amx_kernel):
            missing.append(s.system_info)
    return missing
