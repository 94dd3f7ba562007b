"""Compile a C kernel with the system compiler at first use, and cache the shared library.

The library lands in $FIREPLACE_KERNEL_CACHE (default ~/.cache/fireplace/kernels) under a name
that hashes everything the binary depends on: source bytes, flags, compiler version, machine
and CPU feature flags (-march=native output must not be reused on another CPU model when the
cache dir is shared). Compilation writes a temporary file in the cache dir and renames it into
place, so concurrent processes never load a half-written library.

FIREPLACE_CPU_KERNELS=0 turns every kernel off (callers fall back to torch).
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

logger = logging.getLogger(__name__)

# No -ffast-math: the kernels keep IEEE results (no reassociation, inf/NaN honoured) and are
# written to vectorize without it. -fno-trapping-math changes no result, only lets gcc assume
# that no code watches floating-point exception flags, which it needs to vectorize selects.
# -fopenmp links libgomp.so.1, which resolves to the copy torch has loaded (see paged_decode.c).
CFLAGS = ("-O3", "-march=native", "-fno-trapping-math", "-shared", "-fPIC", "-fopenmp")
LIBS = ("-lm",)
COMPILE_TIMEOUT_S = 120


def kernels_enabled() -> bool:
    """False when FIREPLACE_CPU_KERNELS is 0/false/no/off."""
    return os.environ.get("FIREPLACE_CPU_KERNELS", "1").strip().lower() not in ("0", "false", "no", "off")


def compiler_name() -> str:
    """The C compiler the kernels are built with: $CC, default gcc."""
    return os.environ.get("CC", "gcc")


def find_compiler() -> str | None:
    """Path of the C compiler, or None when it is not installed."""
    return shutil.which(compiler_name())


def cache_dir() -> Path:
    configured = os.environ.get("FIREPLACE_KERNEL_CACHE")
    return Path(configured) if configured else Path.home() / ".cache" / "fireplace" / "kernels"


@functools.lru_cache(maxsize=8)
def _compiler_version(compiler: str) -> str:
    result = subprocess.run([compiler, "--version"], check=False, capture_output=True, text=True, timeout=30)
    return result.stdout


@functools.lru_cache(maxsize=1)
def _cpu_flags() -> str:
    """The CPU feature list (Linux); empty where /proc/cpuinfo is not there."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return line
    except OSError:
        pass
    return ""


def _library_hash(source: bytes, compiler: str) -> str:
    digest = hashlib.sha256()
    for part in (source, " ".join(CFLAGS + LIBS).encode(), _compiler_version(compiler).encode(),
                 platform.machine().encode(), _cpu_flags().encode()):
        digest.update(part)
        digest.update(b"\0")
    return digest.hexdigest()[:16]


def build_shared_library(source: Path, name: str) -> Path | None:
    """Path of the compiled `source` (compiled now if not cached), or None when kernels are
    disabled, no compiler is found, or compilation fails (one warning logged)."""
    if not kernels_enabled():
        logger.info("CPU kernels disabled by FIREPLACE_CPU_KERNELS; %s not built", name)
        return None
    compiler = find_compiler()
    if compiler is None:
        logger.warning("No C compiler (%s) found; CPU kernel %s unavailable", compiler_name(), name)
        return None
    tmp_path = None
    try:
        target_dir = cache_dir()
        target = target_dir / f"{name}-{_library_hash(Path(source).read_bytes(), compiler)}.so"
        if target.exists():
            return target
        target_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp_path = tempfile.mkstemp(prefix=f".{name}-", suffix=".so.tmp", dir=target_dir)
        os.close(fd)
        result = subprocess.run([compiler, *CFLAGS, "-o", tmp_path, str(source), *LIBS],
                                check=False, capture_output=True, text=True, timeout=COMPILE_TIMEOUT_S)
        if result.returncode != 0:
            logger.warning("Compiling CPU kernel %s failed (exit %d); it is unavailable:\n%s",
                           name, result.returncode, result.stderr[-2000:])
            return None
        os.chmod(tmp_path, 0o755)  # mkstemp made it 0600
        os.replace(tmp_path, target)  # atomic: a concurrent builder replaces it with the same bytes
        tmp_path = None
        return target
    except (OSError, subprocess.SubprocessError) as exc:
        logger.warning("Building CPU kernel %s failed; it is unavailable: %s", name, exc)
        return None
    finally:
        if tmp_path is not None:
            Path(tmp_path).unlink(missing_ok=True)


def load_library(source: Path, name: str, declare: Callable[[ctypes.CDLL], None]) -> ctypes.CDLL | None:
    """Build (or find cached) and load `source`, then let `declare` set its functions' ctypes
    signatures. None, with one warning logged, when any step fails: callers fall back to torch."""
    path = build_shared_library(source, name)
    if path is None:
        return None
    try:
        lib = ctypes.CDLL(str(path))
        declare(lib)
    except (OSError, AttributeError) as exc:
        logger.warning("Loading CPU kernel %s failed; it is unavailable: %s", path, exc)
        return None
    return lib


class KernelLibrary:
    """One kernel source, built and loaded on first use, once per process (thread-safe).

    get() -> the CDLL with its signatures declared, or None when it cannot be built or loaded
    (the outcome is kept: a failed build is not retried in the same process)."""

    def __init__(self, source: Path, name: str, declare: Callable[[ctypes.CDLL], None]):
        self._source, self._name, self._declare = source, name, declare
        self._lock = threading.Lock()
        self._lib: ctypes.CDLL | None = None
        self._loaded = False  # True once loading was attempted, whatever the outcome

    def get(self) -> ctypes.CDLL | None:
        if self._loaded:  # the common case, without the lock
            return self._lib
        with self._lock:
            if not self._loaded:
                self._lib = load_library(self._source, self._name, self._declare)
                self._loaded = True  # after _lib: a lock-free reader that sees it sees the library
        return self._lib
