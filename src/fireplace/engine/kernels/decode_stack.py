"""ctypes wrapper of decode_stack.c: a decode-only step's decoder stack in one call.

    run(layers, step)       layers: a Layers array (one Layer per decoder layer), step: a Step

The structures mirror decode_stack.c's fs_layer / fs_step / fs_projection; the kernels it
calls are the other libraries' (elementwise, quant_gemv, small_gemm, paged_decode), passed as
function pointers (`kernel_table()`), so the results are theirs, bit for bit. The caller
(models/fast_decode.py) owns every buffer the pointers point into and keeps it alive.
The library is compiled on first use (cpu_build); `available()` says whether it and the
kernels it drives loaded.
"""
from __future__ import annotations

import ctypes
from pathlib import Path

from fireplace.engine.backend_config import BackendConfig
from fireplace.engine.kernels import elementwise, paged_decode, quant_gemv, small_gemm
from fireplace.engine.kernels.cpu_build import KernelLibrary

_SOURCE = Path(__file__).with_name("decode_stack.c")
FP32, INT8, INT4 = 0, 1, 2  # fs_projection.kind
STAGES = {1: "rms_norm", 2: "qkv projection", 3: "rotary", 4: "paged decode attention", 5: "o projection",
          6: "add_rms_norm", 7: "gate/up projection", 8: "silu_mul", 9: "down projection", 10: "arguments"}
_ptr, _i64, _f64 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_double


class Kernels(ctypes.Structure):
    _fields_ = [(name, _ptr) for name in ("rms_norm", "add_rms_norm", "rotary", "silu_mul", "attention",
                                          "linear_int8", "linear_int4", "linear_fp32")]


class Projection(ctypes.Structure):
    _fields_ = [("kind", _i64), ("weight", _ptr), ("scale", _ptr), ("min", _ptr), ("bias", _ptr),
                ("group", _i64), ("in_features", _i64), ("out_features", _i64)]


class Layer(ctypes.Structure):
    _fields_ = [("qkv", Projection), ("o", Projection), ("gate_up", Projection), ("down", Projection),
                ("input_norm", _ptr), ("post_norm", _ptr), ("input_eps", _f64), ("post_eps", _f64),
                ("k_pool", _ptr), ("v_pool", _ptr)]


class Step(ctypes.Structure):
    _fields_ = ([(name, _ptr) for name in ("residual", "h", "qkv", "q", "attn", "o", "gate_up", "act", "x",
                                           "cos", "sin", "slots", "tables", "lens")]
                + [(name, _i64) for name in ("num_tokens", "max_blocks", "block_size", "num_blocks", "num_heads",
                                             "num_kv_heads", "head_dim", "hidden", "inter")]
                + [("scale", _f64), ("threads", _i64), ("pool_dtype", _i64)])


def _declare(lib: ctypes.CDLL) -> None:
    lib.fs_decode_stack.argtypes = [ctypes.POINTER(Kernels), ctypes.POINTER(Layer), _i64, ctypes.POINTER(Step)]
    lib.fs_decode_stack.restype = ctypes.c_int


_kernels = KernelLibrary(_SOURCE, "decode_stack", _declare)


def available() -> bool:
    return _kernels.get() is not None and all(m._kernels.get() is not None
                                              for m in (elementwise, paged_decode, quant_gemv, small_gemm))


def kernel_table(config: BackendConfig | None = None) -> Kernels:
    """The function pointers decode_stack.c calls (available() must be true): for quantized
    projections the GEMV that reads activations as config.activations_for(scheme) says."""
    def address(lib, name: str) -> int:
        return ctypes.cast(getattr(lib, name), ctypes.c_void_p).value

    ew, pd, qg, sg = (m._kernels.get() for m in (elementwise, paged_decode, quant_gemv, small_gemm))
    config = config if config is not None else BackendConfig()
    suffix = {scheme: "_q8" if config.activations_for(scheme) == "int8" else "" for scheme in ("int8", "int4")}
    return Kernels(address(ew, "fp_rms_norm"), address(ew, "fp_add_rms_norm"), address(ew, "fp_rotary"),
                   address(ew, "fp_silu_mul"), address(pd, "fp_paged_decode_attention"),
                   address(qg, "fq_linear_int8" + suffix["int8"]), address(qg, "fq_linear_int4" + suffix["int4"]),
                   address(sg, "fp_linear"))


def run(kernels: Kernels, layers, num_layers: int, step: Step) -> None:
    """Raise what the failing kernel's own wrapper would (ValueError for bad sizes, the
    attention kernel's errors as paged_decode raises them)."""
    code = _kernels.get().fs_decode_stack(ctypes.byref(kernels), layers, num_layers, ctypes.byref(step))
    if code == 0:
        return
    stage, kernel_code = divmod(code, 256)
    if stage == 4:
        exc_type, message = paged_decode._ERRORS.get(kernel_code, (RuntimeError, f"failed ({kernel_code})"))
        raise exc_type(message)
    raise ValueError(f"decode stack: the {STAGES.get(stage, stage)} kernel refused its arguments ({kernel_code})")
