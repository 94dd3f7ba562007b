"""glibc malloc settings for a process that runs the engine on CPU: keep big buffers in the heap.

Why: a CPU forward allocates and frees activation tensors of megabytes every layer (a prefill
chunk of 2048 tokens: [2048, 3072] fp32 gate/up products, 25 MB). glibc serves blocks over its
mmap threshold (dynamic, at most 32 MB) with fresh mmap()s and gives freed heap tops back to
the kernel past its trim threshold, so each such tensor costs page faults and zeroing of every
page it touches; and a thread other than the main one (AsyncEngine's engine thread) gets its
own arena, whose heaps are unmapped again when they empty. Measured on SmolLM2-135M, 2 cores,
prefill of 64 prompts (15,911 tokens), bf16 projections: 15-23 s with glibc's defaults, 11-12 s
with the settings below, in the main thread and in an engine thread alike (the same as
preloading tcmalloc, which vLLM's CPU docs recommend; this needs no preload).

`tune()` sets, once per process, before the engine's first big allocation:
  M_ARENA_MAX       1       every thread allocates from the main arena (threads created later
                            included; the engine process has one busy thread)
  M_MMAP_THRESHOLD  1 GiB   blocks below it come from the heap, not from mmap (larger ones, and
                            blocks a thread arena cannot hold, still do)
  M_TRIM_THRESHOLD  2 GiB   freed memory is kept for the next step instead of returned
The cost: the process's resident memory stays at its peak (the largest step's activations)
instead of shrinking between steps. Off with FIREPLACE_MALLOC_TUNING=0; a no-op where the C
library is not glibc (musl, macOS), and on CUDA (the activations live on the device).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import threading

logger = logging.getLogger(__name__)

# mallopt(3) parameter numbers from glibc's <malloc.h>
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8

SETTINGS = ((M_ARENA_MAX, 1), (M_MMAP_THRESHOLD, 1 << 30), (M_TRIM_THRESHOLD, (1 << 31) - 1))
ENV = "FIREPLACE_MALLOC_TUNING"

_lock = threading.Lock()
_done: bool | None = None  # None: not tried yet; else whether the settings took


def tune() -> bool:
    """Apply SETTINGS to this process's glibc malloc (idempotent, thread-safe). Returns whether
    they are in effect: False when turned off by FIREPLACE_MALLOC_TUNING=0 or not on glibc."""
    global _done
    with _lock:
        if _done is None:
            _done = _apply()
        return _done


def _apply() -> bool:
    if os.environ.get(ENV, "1").strip().lower() in ("0", "false", "no", "off"):
        logger.info("malloc tuning off (%s=0)", ENV)
        return False
    libc = _glibc()
    if libc is None:
        return False
    # mallopt returns 1 on success, 0 for a value it refuses
    if not all(libc.mallopt(param, value) == 1 for param, value in SETTINGS):
        logger.warning("glibc refused a malloc setting; large CPU buffers may be mmap()ed per step")
        return False
    return True


def _glibc():
    """This process's C library when it is glibc (it has gnu_get_libc_version), else None."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018 -- AttributeError when it is not glibc
    except (OSError, AttributeError):
        return None
    libc.mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    libc.mallopt.restype = ctypes.c_int
    return libc
