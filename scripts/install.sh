#!/usr/bin/env bash
# Install exloop and its test tools into .venv, and fetch the embedded default model.
# Idempotent: a second run only checks. llama-cpp-python compiles from source the first time
# (about 7 minutes on 2 cores); pip caches the built wheel for later runs.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
# Python 3.11's bundled pip is too old to resolve trafilatura's lxml_html_clean reliably.
.venv/bin/python -m pip install --quiet --upgrade pip
CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}" \
    .venv/bin/python -m pip install --quiet -e '.[test]'
.venv/bin/exloop fetch-model
