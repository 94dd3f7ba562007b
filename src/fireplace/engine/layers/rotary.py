"""Rotary position embedding (RoPE), "rotate half" layout as in HF Llama checkpoints.

The head dim is split in two halves (x1, x2) and each pair (x1[i], x2[i]) is rotated by
angle pos * inv_freq[i]. cos/sin are computed once per forward from the step's positions
(`cos_sin`) and shared by every layer: [T, D/2] is tiny, so there is no need for a
max_position-sized table. On the cpu-kernels backend a C kernel rotates q and k in place in one call.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from fireplace.engine.backend import Backend
from fireplace.engine.kernels import elementwise
from fireplace.engine.model_config import RopeScaling


def rope_inv_freq(head_dim: int, theta: float, scaling: RopeScaling) -> torch.Tensor:
    """inv_freq: [D/2] fp32, with the checkpoint's frequency scaling applied."""
    exponents = torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim
    inv_freq = 1.0 / (theta ** exponents)
    if scaling.rope_type == "linear":
        # Positions divided by factor == frequencies divided by factor.
        return inv_freq / scaling.factor
    if scaling.rope_type == "llama3":
        return _llama3_inv_freq(inv_freq, scaling)
    return inv_freq


def _llama3_inv_freq(inv_freq: torch.Tensor, s: RopeScaling) -> torch.Tensor:
    # Llama 3.1: long wavelengths (low frequencies) are slowed by `factor`, short ones kept,
    # and the band in between interpolated smoothly.
    original = s.original_max_position_embeddings
    low_freq_wavelen = original / s.low_freq_factor
    high_freq_wavelen = original / s.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / s.factor, inv_freq)
    smooth = (original / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor)
    smoothed = (1 - smooth) * scaled / s.factor + smooth * scaled
    is_medium = (wavelen >= high_freq_wavelen) & (wavelen <= low_freq_wavelen)
    return torch.where(is_medium, smoothed, scaled)


class RotaryEmbedding(nn.Module):
    def __init__(self, head_dim: int, theta: float, scaling: RopeScaling,
                 device: torch.device | str | None = None):
        super().__init__()
        self.head_dim = head_dim
        # Not persistent: derived from the config, never loaded from checkpoints.
        self.register_buffer("inv_freq", rope_inv_freq(head_dim, theta, scaling).to(device), persistent=False)

    def cos_sin(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """positions: [T] -> cos, sin: [T, 1, D/2] in `dtype` (angles computed in fp32, like HF)."""
        freqs = positions.to(torch.float32)[:, None] * self.inv_freq[None, :]  # [T, D/2]
        return freqs.cos().to(dtype)[:, None, :], freqs.sin().to(dtype)[:, None, :]


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: [T, H, D]; cos, sin: [T, 1, D/2] -> [T, H, D]."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


def apply_rotary_qk(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor,
                    sin: torch.Tensor, backend: Backend) -> tuple[torch.Tensor, torch.Tensor]:
    """q: [T, H, D], k: [T, Hkv, D] -> both rotated (in place on the kernel path, where q and k
    must be tensors or views the caller owns); cos, sin: [T, 1, D/2]."""
    if backend.uses_elementwise_kernels(q):
        elementwise.rotary_(q, k, cos, sin)
        return q, k
    return apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
