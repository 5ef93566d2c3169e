#!/usr/bin/env bash
# Install exloop and its test tools into .venv, and fetch the embedded default model.
# Idempotent: a second run only checks. llama-cpp-python compiles from source the first time
# (about 7 minutes on 2 cores) for the instruction sets this machine really runs
# (scripts/build_llama_cpp.py); the wheel is kept in ~/.cache/exloop/wheels under a tag of
# its build options, so later runs take seconds and a build for other options is never reused.
#
# --test also installs what the whole test suite runs besides Python packages, so that no
# test is skipped for want of it: redis-server (the Redis store's tests start their own on
# loopback), Node.js and npm (Codex CLI's tests install @openai/codex with npm), both from
# Debian's packages when missing; and the CPU build of torch with exllamav2, whose backend's
# Python code the suite runs on the CPU (users of the CPU backend never need them).
set -euo pipefail
cd "$(dirname "$0")/.."

with_tests=false
for arg in "$@"; do
    case "$arg" in
        --test) with_tests=true ;;
        *) echo "usage: scripts/install.sh [--test]" >&2; exit 2 ;;
    esac
done

python3 -m venv .venv
# Python 3.11's bundled pip is too old to resolve trafilatura's lxml_html_clean reliably.
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python scripts/build_llama_cpp.py
.venv/bin/python -m pip install --quiet -e '.[test]'
.venv/bin/exloop fetch-model

$with_tests || exit 0

# Debian packages for the commands that are missing; as root, or through sudo without a
# password. Otherwise say which tests will skip rather than fail the install.
missing=()
command -v redis-server >/dev/null || missing+=(redis-server)
command -v npm >/dev/null || missing+=(nodejs npm)
if ((${#missing[@]})); then
    if [ "$(id -u)" = 0 ]; then as_root=(); elif sudo -n true 2>/dev/null; then as_root=(sudo -n); else as_root=(false); fi
    if command -v apt-get >/dev/null && "${as_root[@]}" true 2>/dev/null; then
        "${as_root[@]}" apt-get update -qq
        DEBIAN_FRONTEND=noninteractive "${as_root[@]}" apt-get install -y -qq "${missing[@]}" >/dev/null
    else
        echo "install.sh: cannot install ${missing[*]} (needs apt-get as root); their tests will skip" >&2
    fi
fi
.venv/bin/python -m pip install --quiet torch==2.13.0 safetensors tokenizers pillow
# Without its CUDA-bound dependencies: on the CPU the suite runs its Python code only.
.venv/bin/python -m pip install --quiet --no-deps exllamav2==0.3.2
