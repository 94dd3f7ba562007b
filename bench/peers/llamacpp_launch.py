"""Starting a llama.cpp peer (llamacpp_peer.py, llamacpp_batch_peer.py) in bench/.venv-llamacpp.

llama.cpp's extra weight buffers (AMX tiles, repacked blocks) are its fastest CPU path and are
tried first. On some VMs whose CPU reports AMX the AMX matmul dies with SIGSEGV (seen here:
ggml_backend_amx_mul_mat on a Xeon with amx_int8, llama-cpp-python 0.3.36), so on a SIGSEGV the
peer runs once more with --no-extra-bufts (llama_model_params.use_extra_bufts = false: its
AVX-512 / AVX2 kernels on the GGUF blocks as stored), and the result says so.
"""
from __future__ import annotations

import signal
import subprocess
from pathlib import Path

PYTHON = Path(__file__).resolve().parents[1] / ".venv-llamacpp" / "bin" / "python"
FALLBACK_NOTE = ("use_extra_bufts=false: with llama.cpp's extra buffers (AMX / repack) the peer "
                 "died with SIGSEGV on this machine")


def run_peer(script: str, args: list[str], stdin: str | None = None, timeout: float = 3600) -> tuple[
        subprocess.CompletedProcess, str | None]:
    """(the finished process, None or FALLBACK_NOTE when it had to run without extra buffers)."""
    command = [str(PYTHON), str(Path(__file__).resolve().parent / script), *args]
    proc = subprocess.run(command, input=stdin, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != -signal.SIGSEGV:
        return proc, None
    return subprocess.run(command + ["--no-extra-bufts"], input=stdin, capture_output=True, text=True,
                          timeout=timeout), FALLBACK_NOTE
