#!/usr/bin/env bash
# Builds bench/.venv-llamacpp: llama.cpp through llama-cpp-python (PyPI; it compiles its
# bundled llama.cpp with cmake here, ~30 min on 2 busy cores) for bench/single_stream.py's
# peer row. Idempotent: bench/.venv-llamacpp/.installed marks it done.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
VENV="$ROOT/bench/.venv-llamacpp"
PYTHON="${PYTHON:-python3}"
LLAMA_CPP_PYTHON="${LLAMA_CPP_PYTHON:-llama-cpp-python==0.3.36}"

if [ -f "$VENV/.installed" ]; then
    echo "bench-peers: $VENV is ready (remove it to rebuild)"
    exit 0
fi
test -x "$VENV/bin/python" || "$PYTHON" -m venv "$VENV"
"$VENV/bin/pip" install -q --upgrade pip
"$VENV/bin/pip" install -q "$LLAMA_CPP_PYTHON" numpy
"$VENV/bin/python" -c "import llama_cpp; print('llama-cpp-python', llama_cpp.__version__)"
touch "$VENV/.installed"
