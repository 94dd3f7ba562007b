"""Weight-only quantization of a linear layer's weight: the formats, quantize and dequantize.

A `QuantizedWeight` stands for a [N, K] fp32 weight (nn.Linear layout) as
    int8   q int8  [N, K],      w[n, k] = q[n, k] * scale[n, k // G]
    int4   q uint8 [N, K // 2], w[n, k] = nib(n, k) * scale[n, k // G] + min[n, k // G],  nib in 0..15
with scale (and min) fp32 [N, K // G]. G, the group size, divides K. int8 is symmetric (q in
-127..127), one scale per group: EngineConfig's default G = 32 is GGUF Q8_0's layout, G = K one
scale per output channel (what the lm_head gets). On SmolLM2-135M (bench/single_stream.py)
per output channel cost +1.01% perplexity over fp32, groups of 32 +0.39%, 64 +0.42%, 128 +0.75%,
at the same batch-1 speed; groups of 32 read 9% more bytes. int4 (asymmetric per group, like GGUF's Q4_1) needs G a multiple of 32: its
nibbles are stored in GGUF's block layout, each run of 32 weights of a row in 16 bytes, byte j
holding weight j (low nibble) and weight j + 16 (high nibble). So GGUF Q4_1 / Q8_0 tensors
load into these formats as they are (fireplace.engine.gguf_weights), with their fp16 scales
widened to fp32, which is exact.

Bytes read per weight at decode: fp32 4, int8 1 (+ 4 / K), int4 0.5 + 8 / G.
`dequantize(qw)` is the reference every kernel is tested against (kernels/quant_gemv.py).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

SCHEMES = ("int8", "int4")
INT4_BLOCK = 32  # weights per nibble block (GGUF's QK4_1)
DEFAULT_INT4_GROUP = 32


class QuantizationError(ValueError):
    """A weight cannot be quantized (or loaded) in the asked format: says which and why."""


@dataclass(frozen=True)
class QuantizedWeight:
    scheme: str              # int8 | int4
    out_features: int        # N
    in_features: int         # K
    group_size: int          # G
    qweight: torch.Tensor    # int8 [N, K] | uint8 [N, K // 2], contiguous
    scale: torch.Tensor      # fp32 [N, K // G], contiguous
    min: torch.Tensor | None = None  # fp32 [N, K // G] (int4), else None

    def __post_init__(self) -> None:
        n, k, g = self.out_features, self.in_features, self.group_size
        if self.scheme not in SCHEMES:
            raise QuantizationError(f"quantization scheme must be one of {', '.join(SCHEMES)}, got {self.scheme!r}")
        if g < 1 or k % g:
            raise QuantizationError(f"group size {g} does not divide in_features {k}")
        if self.scheme == "int4" and g % INT4_BLOCK:
            raise QuantizationError(f"int4 group size must be a multiple of {INT4_BLOCK}, got {g}")
        q_shape, q_dtype = ((n, k), torch.int8) if self.scheme == "int8" else ((n, k // 2), torch.uint8)
        if tuple(self.qweight.shape) != q_shape or self.qweight.dtype != q_dtype or not self.qweight.is_contiguous():
            raise QuantizationError(f"{self.scheme} qweight must be contiguous {q_dtype} {list(q_shape)}, got "
                                    f"{self.qweight.dtype} {list(self.qweight.shape)}")
        for name, t in (("scale", self.scale), ("min", self.min)):
            if t is None:
                if name == "scale" or self.scheme == "int4":
                    raise QuantizationError(f"{self.scheme} needs a {name} tensor")
                continue
            if tuple(t.shape) != (n, k // g) or t.dtype != torch.float32 or not t.is_contiguous():
                raise QuantizationError(f"{name} must be contiguous float32 [{n}, {k // g}], got "
                                        f"{t.dtype} {list(t.shape)}")

    @property
    def shape(self) -> tuple[int, int]:
        return (self.out_features, self.in_features)

    def nbytes(self) -> int:
        """Bytes read to use this weight once (quantized values and scales)."""
        return sum(t.numel() * t.element_size() for t in (self.qweight, self.scale, self.min) if t is not None)

    def rows(self, start: int, stop: int) -> QuantizedWeight:
        """Output rows [start, stop) (a part of a fused projection), as contiguous views."""
        return QuantizedWeight(self.scheme, stop - start, self.in_features, self.group_size, self.qweight[start:stop],
                               self.scale[start:stop], None if self.min is None else self.min[start:stop])

    def to(self, device: torch.device | str) -> QuantizedWeight:
        return QuantizedWeight(self.scheme, self.out_features, self.in_features, self.group_size,
                               self.qweight.to(device), self.scale.to(device),
                               None if self.min is None else self.min.to(device))


def concat_rows(parts: list[QuantizedWeight]) -> QuantizedWeight:
    """One QuantizedWeight of the parts stacked along N (same scheme, K and G)."""
    first = parts[0]
    if any((p.scheme, p.in_features, p.group_size) != (first.scheme, first.in_features, first.group_size)
           for p in parts):
        raise QuantizationError("parts of a fused projection must share scheme, in_features and group size")
    return QuantizedWeight(first.scheme, sum(p.out_features for p in parts), first.in_features, first.group_size,
                           torch.cat([p.qweight for p in parts]), torch.cat([p.scale for p in parts]),
                           None if first.min is None else torch.cat([p.min for p in parts]))


def quantize_int8(weight: torch.Tensor, group_size: int | None = None) -> QuantizedWeight:
    """Symmetric int8, one scale per group of `group_size` weights along K (None: the whole row,
    one scale per output channel): scale = max|w[group]| / 127, q = round(w / scale)."""
    w = _as_matrix(weight)
    n, k = w.shape
    g = k if group_size is None else group_size
    if g < 1 or k % g:
        raise QuantizationError(f"int8 group size {g} does not divide in_features {k}")
    groups = w.view(n, k // g, g)
    scale = groups.abs().amax(dim=2, keepdim=True) / 127.0
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # an all-zero group stays zero
    q = torch.round(groups / scale).clamp_(-127, 127).to(torch.int8).view(n, k)
    return QuantizedWeight("int8", n, k, g, q.contiguous(), scale.view(n, k // g).contiguous())


def quantize_int4(weight: torch.Tensor, group_size: int = DEFAULT_INT4_GROUP) -> QuantizedWeight:
    """Asymmetric 4-bit per group of `group_size` weights along K: min = the group's minimum,
    scale = (max - min) / 15, nib = round((w - min) / scale) in 0..15 (GGUF Q4_1's rule)."""
    w = _as_matrix(weight)
    n, k = w.shape
    if group_size < INT4_BLOCK or group_size % INT4_BLOCK:
        raise QuantizationError(f"int4 group size must be a multiple of {INT4_BLOCK}, got {group_size}")
    if k % group_size:
        raise QuantizationError(f"int4 group size {group_size} does not divide in_features {k}")
    groups = w.view(n, k // group_size, group_size)
    lo = groups.amin(dim=2)
    scale = (groups.amax(dim=2) - lo) / 15.0
    inv = torch.where(scale > 0, 1.0 / scale, torch.zeros_like(scale))
    nib = torch.round((groups - lo.unsqueeze(2)) * inv.unsqueeze(2)).clamp_(0, 15).to(torch.uint8).view(n, k)
    return QuantizedWeight("int4", n, k, group_size, pack_nibbles(nib), scale.contiguous(), lo.contiguous())


def quantize(weight: torch.Tensor, scheme: str, group_size: int = DEFAULT_INT4_GROUP) -> QuantizedWeight:
    if scheme == "int8":
        return quantize_int8(weight, group_size)
    if scheme == "int4":
        return quantize_int4(weight, group_size)
    raise QuantizationError(f"quantization scheme must be one of {', '.join(SCHEMES)}, got {scheme!r}")


def dequantize(qw: QuantizedWeight) -> torch.Tensor:
    """The fp32 [N, K] weight qw stands for (the reference of every quantized kernel)."""
    n, k, g = qw.out_features, qw.in_features, qw.group_size
    if qw.scheme == "int8":
        values = qw.qweight.to(torch.float32).view(n, k // g, g)
        return (values * qw.scale.unsqueeze(2)).view(n, k)
    values = unpack_nibbles(qw.qweight).to(torch.float32).view(n, k // g, g)
    return (values * qw.scale.unsqueeze(2) + qw.min.unsqueeze(2)).view(n, k)


def pack_nibbles(nib: torch.Tensor) -> torch.Tensor:
    """uint8 [N, K] values 0..15 (K a multiple of 32) -> [N, K // 2] in the block layout above."""
    n, k = nib.shape
    blocks = nib.view(n, k // INT4_BLOCK, 2, INT4_BLOCK // 2)  # [.., low half | high half, 16]
    return (blocks[:, :, 0] | (blocks[:, :, 1] << 4)).reshape(n, k // 2).contiguous()


def unpack_nibbles(packed: torch.Tensor) -> torch.Tensor:
    """Inverse of pack_nibbles: uint8 [N, K // 2] -> [N, K] values 0..15."""
    n, half = packed.shape
    blocks = packed.view(n, half // (INT4_BLOCK // 2), INT4_BLOCK // 2)
    return torch.stack((blocks & 0x0F, blocks >> 4), dim=2).reshape(n, half * 2)


def _as_matrix(weight: torch.Tensor) -> torch.Tensor:
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
        raise QuantizationError(f"a weight to quantize must be a 2-D tensor, got "
                                f"{getattr(weight, 'shape', type(weight).__name__)}")
    return weight.detach().to(torch.float32).contiguous()
