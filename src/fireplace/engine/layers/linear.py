"""The projection layers every model uses, with a hook for LoRA addons.

`Linear` is a plain y = x W^T (+ b). When the LoRA subsystem attaches a stack of
adapters to it (`lora_stack`), the per-token adapter delta is added:
    y[t] += scale[s_t] * (x[t] @ A[s_t]^T) @ B[s_t]^T     with s_t = ctx.lora slot of token t.
Models call `proj(x, ctx)`; the base path never looks at `ctx`.

`FusedLinear` groups projections that read the same input (q/k/v, gate/up) into one matmul.
Which matmul runs is the model's Backend's choice: on the CPU, oneDNN's linear on a packed
copy of the weight where torch has it (Backend.uses_onednn; the copy is made at the first call
and re-made when the weight changes), else on the cpu-kernels backend decode-sized batches go
through our C GEMM (Backend.uses_small_gemm), and on the torch path FusedLinear runs one matmul
per part or one for all by batch size (Backend.fuses_matmul; thresholds in BackendConfig).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from fireplace.engine.backend import Backend, default_backend
from fireplace.engine.kernels import onednn_linear, small_gemm
from fireplace.engine.layers.quantized_linear import quantized_linear


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, backend: Backend) -> torch.Tensor:
    """F.linear, or the C small-batch GEMM where the backend has it: x [T, in] -> [T, out]."""
    if backend.uses_small_gemm(x, weight):
        return small_gemm.linear_unchecked(x, weight, bias)
    return F.linear(x, weight, bias)


class PackedWeight:
    """A weight [out, in] in oneDNN's blocked layout (Backend.pack_weight), packed at first use
    and again whenever the weight was written in place (its version counter, which views share
    with their base: a merge into a FusedLinear part shows on the whole matrix) or replaced."""

    __slots__ = ("packed", "key")

    def __init__(self) -> None:
        self.packed: torch.Tensor | None = None
        self.key: tuple | None = None

    def get(self, weight: torch.Tensor, backend: Backend) -> torch.Tensor:
        try:
            key = (weight.data_ptr(), weight._version)
        except RuntimeError:  # an inference tensor keeps no version counter (it cannot be written later)
            key = (weight.data_ptr(), None)
        if key != self.key:
            self.packed, self.key = backend.pack_weight(weight), key
        return self.packed


class Linear(nn.Module):
    def __init__(self, in_features: int, out_features: int, bias: bool = False,
                 dtype: torch.dtype | None = None, device: torch.device | str | None = None, *,
                 storage: tuple[torch.Tensor, torch.Tensor | None] | None = None,
                 backend: Backend | None = None, lm_head: bool = False):
        """storage: existing (weight [out, in], bias [out] | None) tensors to use as the parameters
        (views into a FusedLinear's matrix); None allocates fresh ones.
        backend: the model's (default: Backend.select for device and dtype).
        lm_head: this is the model's output layer (the backend's thresholds differ for it)."""
        super().__init__()
        self.is_lm_head = lm_head
        self.backend = backend or default_backend(device or "cpu", dtype or torch.float32)
        self.in_features = in_features
        self.out_features = out_features
        if storage is None:
            weight = torch.empty(out_features, in_features, dtype=dtype, device=device)
            storage = (weight, torch.zeros(out_features, dtype=dtype, device=device) if bias else None)
        self.weight = nn.Parameter(storage[0], requires_grad=False)
        self.bias = nn.Parameter(storage[1], requires_grad=False) if storage[1] is not None else None
        # Set by fireplace.engine.lora when adapters may target this projection.
        # Interface: lora_stack.apply(x [T, in], y [T, out], lora_batch) -> y' [T, out]
        self.lora_stack = None
        # Set by fireplace.engine.quantize_model: the base weight quantized (a QuantizedWeight);
        # the base matmul then reads it instead of `weight` (see layers/quantized_linear.py).
        self.quantized = None
        self.packed = PackedWeight()  # for the oneDNN path; a cache, not a parameter

    def forward(self, x: torch.Tensor, ctx=None) -> torch.Tensor:
        if self.quantized is not None:
            y = quantized_linear(x, self.quantized, self.bias, self.backend)
        elif self.backend.uses_onednn(x, lm_head=self.is_lm_head):
            y = onednn_linear.linear(x, self.packed.get(self.weight, self.backend), self.bias, self.backend.matmul_dtype)
        else:
            y = linear(x, self.weight, self.bias, self.backend)
        return self.add_lora(x, y, ctx)

    def add_lora(self, x: torch.Tensor, y: torch.Tensor, ctx) -> torch.Tensor:
        """y [T, out] = this layer's base output for x [T, in] -> y plus each token's adapter delta."""
        if self.lora_stack is not None and ctx is not None and ctx.lora is not None:
            y = self.lora_stack.apply(x, y, ctx.lora)
        return y


class FusedLinear:
    """Projections reading the same input: x [T, in] -> one [T, out_i] per part.

    Each part stays a `Linear` (own checkpoint name, own LoRA stack), but its weight is a row
    block of one [sum(out), in] matrix, so the loader and merged LoRA write through to it.
    Large batches (prefill) run one F.linear over the whole matrix: ~10% faster than one per
    part on CPU from ~512 tokens on. Small ones (decode) run one per part on the parts' views,
    which are contiguous: there MKL does better with the thin matrices (BackendConfig
    .fused_matmul_min_tokens has the numbers). CUDA always fuses.
    Deliberately not an nn.Module: the matrix must not appear a second time in state_dict;
    the parts, registered by the owning module, are the parameters.
    """

    def __init__(self, in_features: int, out_features: Sequence[int], bias: bool = False,
                 dtype: torch.dtype | None = None, device: torch.device | str | None = None, *,
                 backend: Backend | None = None):
        self.backend = backend or default_backend(device or "cpu", dtype or torch.float32)
        self.sizes = list(out_features)
        total = sum(self.sizes)
        self.weight = torch.empty(total, in_features, dtype=dtype, device=device)
        self.bias = torch.zeros(total, dtype=dtype, device=device) if bias else None
        self.parts: list[Linear] = []
        start = 0
        for size in self.sizes:
            rows = slice(start, start + size)
            storage = (self.weight[rows], self.bias[rows] if bias else None)
            self.parts.append(Linear(in_features, size, bias, dtype, device, storage=storage, backend=self.backend))
            start += size
        # Set by fireplace.engine.lora when every part has a LoRA stack: applies all parts' deltas
        # together. Interface: lora_group.apply(x [T, in], [y_i [T, out_i]], lora_batch) -> [y_i']
        self.lora_group = None
        self.quantized = None  # the whole matrix quantized (fireplace.engine.quantize_model)
        self.packed = PackedWeight()  # the whole matrix, for the oneDNN path (one matmul for all parts)

    def __call__(self, x: torch.Tensor, ctx=None) -> list[torch.Tensor]:
        if self.quantized is not None:
            ys = list(quantized_linear(x, self.quantized, self.bias, self.backend).split(self.sizes, dim=-1))
        elif self.backend.uses_onednn(x):
            packed = self.packed.get(self.weight, self.backend)
            ys = list(onednn_linear.linear(x, packed, self.bias, self.backend.matmul_dtype).split(self.sizes, dim=-1))
        elif self.backend.uses_small_gemm(x, self.weight):  # our GEMM does best on the whole matrix
            ys = list(small_gemm.linear_unchecked(x, self.weight, self.bias).split(self.sizes, dim=-1))
        elif self.backend.fuses_matmul(x.shape[0]):
            ys = list(F.linear(x, self.weight, self.bias).split(self.sizes, dim=-1))  # views of [T, sum(out)]
        else:
            ys = [F.linear(x, part.weight, part.bias) for part in self.parts]
        if self.lora_group is not None and ctx is not None and ctx.lora is not None:
            return self.lora_group.apply(x, ys, ctx.lora)
        return [part.add_lora(x, y, ctx) for part, y in zip(self.parts, ys)]


def prepack_weights(model: nn.Module) -> int:
    """Make the oneDNN copies of the model's dense projection weights now (the engine calls it
    once the weights are final: after loading, merging and quantizing), so that the first step
    does not pay for them; a weight written later is re-packed at its next call. Returns how many
    matrices were packed (0 where the backend does not use oneDNN)."""
    fused = [value for module in model.modules() for value in vars(module).values() if isinstance(value, FusedLinear)]
    parts = {id(part) for layer in fused for part in layer.parts}  # computed through their FusedLinear
    layers = fused + [m for m in model.modules() if isinstance(m, Linear) and id(m) not in parts]
    count = 0
    for layer in layers:
        is_head = isinstance(layer, Linear) and layer.is_lm_head
        if layer.backend.onednn_min_tokens(lm_head=is_head) > 0 and layer.quantized is None and layer.weight.is_cpu:
            layer.packed.get(layer.weight, layer.backend)
            count += 1
    return count
