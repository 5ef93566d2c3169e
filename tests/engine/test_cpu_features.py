"""The llama.cpp build uses only instruction sets this machine runs (issue: SIGILL on a VM
that advertises AMX its kernel does not enable)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import llama_cpp
import pytest

from exloop.engine import cpu_features
from exloop.engine.cpu_features import (
    cmake_args,
    cmake_options,
    compiled_features,
    unsupported_in_build,
    usable,
)
from exloop.engine.llama_cpp import check_build

ROOT = Path(__file__).resolve().parents[2]

#: The Intel Xeon VM of the report: cpuinfo lists AVX-512 and AMX, the kernel refuses tile data.
SAPPHIRE_RAPIDS_VM = frozenset(
    [
        "sse4_2",
        "avx",
        "f16c",
        "fma",
        "avx2",
        "bmi2",
        "avx512f",
        "avx512cd",
        "avx512vl",
        "avx512dq",
        "avx512bw",
        "avx512vbmi",
        "avx512_vnni",
        "avx512_bf16",
        "avx_vnni",
        "amx_tile",
        "amx_int8",
        "amx_bf16",
    ]
)
ALL_BUT_AMX_RAN = {s.name for s in cpu_features.INSTRUCTION_SETS} - {"amx"}

#: What ``llama_print_system_info()`` printed for the native build on that VM.
NATIVE_VM_BUILD = (
    "CPU : SSE3 = 1 | SSSE3 = 1 | AVX = 1 | AVX_VNNI = 1 | AVX2 = 1 | F16C = 1 | FMA = 1 | "
    "BMI2 = 1 | AVX512 = 1 | AVX512_VBMI = 1 | AVX512_VNNI = 1 | AVX512_BF16 = 1 | "
    "AMX_INT8 = 1 | LLAMAFILE = 1 | OPENMP = 1 | REPACK = 1 | "
)


def test_amx_listed_but_refused_by_the_kernel_is_not_compiled_in() -> None:
    options = cmake_options(usable(SAPPHIRE_RAPIDS_VM, ALL_BUT_AMX_RAN))
    assert options["GGML_NATIVE"] is False
    assert not options["GGML_AMX_TILE"] and not options["GGML_AMX_INT8"]
    assert options["GGML_AVX512"] and options["GGML_AVX512_VNNI"] and options["GGML_AVX_VNNI"]


def test_every_option_is_explicit_so_defaults_never_add_instructions() -> None:
    # llama.cpp turns AVX/AVX2/FMA/F16C/BMI2/SSE4.2 on by default once GGML_NATIVE is off:
    # a CPU with plain AVX only must get each of the others OFF in so many words.
    args = cmake_args(cmake_options(usable(frozenset({"sse4_2", "avx"}), {"sse42", "avx"})))
    for option in ("GGML_AVX2", "GGML_FMA", "GGML_F16C", "GGML_BMI2", "GGML_AVX512"):
        assert f"-D{option}=OFF" in args
    assert "-DGGML_AVX=ON" in args and "-DGGML_NATIVE=OFF" in args


def test_a_set_needs_the_cpu_flag_the_probe_and_what_it_builds_on() -> None:
    assert "avx2" not in usable(frozenset({"sse4_2", "avx", "avx2"}), {"sse42", "avx"})
    assert "avx2" not in usable(frozenset({"sse4_2", "avx"}), {"sse42", "avx", "avx2"})
    # AVX512-VNNI listed and running, AVX-512 foundation refused: neither.
    flags = SAPPHIRE_RAPIDS_VM
    sets = usable(flags, ALL_BUT_AMX_RAN - {"avx512"})
    assert "avx512_vnni" not in sets and "avx2" in sets


def test_a_build_for_instructions_the_machine_lacks_is_named() -> None:
    assert unsupported_in_build(NATIVE_VM_BUILD, SAPPHIRE_RAPIDS_VM, amx_kernel=False) == [
        "AMX_INT8"
    ]
    assert unsupported_in_build(NATIVE_VM_BUILD, SAPPHIRE_RAPIDS_VM, amx_kernel=True) == []
    zen2 = frozenset(["sse4_2", "avx", "f16c", "fma", "avx2", "bmi2"])
    missing = unsupported_in_build(NATIVE_VM_BUILD, zen2, amx_kernel=False)
    assert missing == [
        "AVX_VNNI",
        "AVX512",
        "AVX512_VBMI",
        "AVX512_VNNI",
        "AVX512_BF16",
        "AMX_INT8",
    ]
    assert compiled_features(NATIVE_VM_BUILD) >= {"AVX2", "AMX_INT8", "OPENMP"}


def test_the_probe_runs_here_and_agrees_with_the_cpu() -> None:
    flags = cpu_features.machine_flags()
    if not flags:
        pytest.skip("no /proc/cpuinfo on this machine")
    ran = cpu_features.probe(ROOT / "scripts" / "cpu_probe.c")
    for name in ran:
        listed = next(s for s in cpu_features.INSTRUCTION_SETS if s.name == name).cpuinfo
        assert set(listed) <= flags, f"the {name} probe ran on a CPU that does not list it"
    # Every x86-64 machine this runs on has SSE4.2 (Nehalem, 2008, and later).
    assert "sse42" in ran


def test_the_installed_build_runs_here() -> None:
    check_build()  # raises UnsupportedBuild naming the sets otherwise
    system_info = llama_cpp.llama_print_system_info().decode()
    assert "AMX_INT8 = 1" not in system_info or cpu_features.amx_granted_by_kernel()


def test_a_prompt_of_a_few_hundred_tokens_evaluates(model_path: Path) -> None:
    """Matrix kernels for batches (AMX among them) run only on prompts of about 90 tokens and
    more; a build with instructions the machine lacks died here with SIGILL. In a subprocess,
    so such a build fails this test instead of the test run."""
    script = textwrap.dedent(
        f"""
        import llama_cpp
        llm = llama_cpp.Llama({str(model_path)!r}, n_ctx=1024, n_threads=1, verbose=False)
        tokens = llm.tokenize(("The quick brown fox jumps over the lazy dog. " * 40).encode())
        assert len(tokens) >= 300, len(tokens)
        llm.eval(tokens)
        print(len(tokens))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=600, check=False
    )
    assert done.returncode == 0, (
        f"evaluating a long prompt ended with {done.returncode} (-4 is SIGILL: the llama.cpp "
        f"build uses instructions this machine cannot run; rerun scripts/install.sh):\n"
        f"{done.stderr[-2000:]}"
    )
    assert int(done.stdout.strip()) >= 300
