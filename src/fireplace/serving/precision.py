"""Fireworks' deployment `precision` -> how our replica runs the model (dtype, quantization).

    precision               CPU                                 CUDA
    unset / UNSPECIFIED     float32 (the engine's CPU dtype)    bfloat16
    FP32 (extension)        float32                             float32
    BF16                    bfloat16                            bfloat16
    FP16                    refused (CUDA only)                 float16
    INT8 (extension)        int8 weights in groups of 32        refused (CPU kernels only)
                            (lm_head int8)
    INT4 (extension)        4-bit weights in groups of 32       refused
                            (lm_head int8)
    (activations float32, except INT4's in decode steps of up to 8 tokens, which its
    quantized kernels round to int8 per 32 values: BackendConfig.quant_activations)
    FP8*, NF4, FP4*         refused: not implemented here

`replica_precision(precision, cuda)` gives the replica's flags, or raises InvalidArgument
naming the value and why; the deployment API calls it at create/update (400 there, before
anything is started) and the controller again when it starts a replica.
"""
from __future__ import annotations

from dataclasses import dataclass

from fireplace.errors import InvalidArgument

QUANTIZED_PRECISIONS = {"INT8": "int8", "INT4": "int4"}  # -> EngineConfig.quantization
_DTYPES = {"FP32": "float32", "BF16": "bfloat16", "FP16": "float16"}


@dataclass(frozen=True)
class ReplicaPrecision:
    dtype: str
    device: str                 # cpu | cuda
    quantization: str | None = None

    def argv(self) -> list[str]:
        """`fireplace replica` flags (none for the defaults: float32 on the CPU)."""
        out: list[str] = []
        if self.device != "cpu":
            out += ["--device", self.device]
        if self.dtype != "float32":
            out += ["--dtype", self.dtype]
        if self.quantization:
            out += ["--quantization", self.quantization]
        return out


def replica_precision(precision: str | None, cuda: bool) -> ReplicaPrecision:
    """What a replica runs for a deployment's precision on this server (cuda: a GPU is used)."""
    value = precision or "PRECISION_UNSPECIFIED"
    if value == "PRECISION_UNSPECIFIED":
        return ReplicaPrecision("bfloat16", "cuda") if cuda else ReplicaPrecision("float32", "cpu")
    if value in QUANTIZED_PRECISIONS:
        if cuda:
            raise InvalidArgument(f"precision {value} is a CPU weight-only quantization; this server runs "
                                  "deployments on CUDA, where BF16 or FP16 are served")
        return ReplicaPrecision("float32", "cpu", QUANTIZED_PRECISIONS[value])
    if value in _DTYPES:
        if value == "FP16" and not cuda:
            raise InvalidArgument("precision FP16 needs a CUDA device, and this server has none; "
                                  "use BF16, FP32, INT8 or INT4 on the CPU")
        return ReplicaPrecision(_DTYPES[value], "cuda" if cuda else "cpu")
    raise InvalidArgument(f"precision {value} is not supported by this server (served here: "
                          f"{', '.join(served_precisions(cuda))})")


def served_precisions(cuda: bool) -> list[str]:
    """The precision values replica_precision accepts on such a server."""
    return ["PRECISION_UNSPECIFIED", *(("BF16", "FP16", "FP32") if cuda else ("BF16", "FP32", "INT8", "INT4"))]


def document_served(schema: dict) -> None:
    """json_schema_extra of a request's `precision`: the spec lists what this server serves
    (a value Fireworks knows but this server refuses is a 400 naming it)."""
    for branch in [schema, *schema.get("anyOf", [])]:
        if "enum" in branch:
            branch["enum"] = served_precisions(server_has_cuda())


def server_has_cuda() -> bool:
    """Whether replicas of this server run on CUDA (torch sees a device); asked per call (cheap
    once torch is imported) so that tests can patch it."""
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return False
    return torch.cuda.is_available()
