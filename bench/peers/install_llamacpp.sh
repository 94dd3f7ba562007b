#!/usr/bin/env bash
# Builds bench/.venv-llamacpp: llama.cpp through llama-cpp-python (PyPI; it compiles its
# bundled llama.cpp with cmake here, ~30 min on 2 busy cores) for bench/single_stream.py's
# peer row. Idempotent: bench/.venv-llamacpp/.installed marks it done.
set -euo pipefail

LLAMA_CPP_PYTHON="${LLAMA_CPP_PYTHON:-llama-cpp-python==0.3.36}"

source "$(dirname "$0")/peer_venv.sh"
peer_venv llamacpp
"$VENV/bin/pip" install -q "$LLAMA_CPP_PYTHON" numpy
"$VENV/bin/python" -c "import llama_cpp; print('llama-cpp-python', llama_cpp.__version__)"
touch "$VENV/.installed"
