"""Argument checks the kernel wrappers share: TypeError for what is not a tensor or an int,
ValueError for a wrong device, rank, dtype or thread count."""
from __future__ import annotations

import torch


def check_tensor(name: str, t: object, dim: int, dtype: torch.dtype | None = None) -> torch.Tensor:
    """t, checked to be a CPU tensor of `dim` dims (and of `dtype` when given)."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if not t.is_cpu:
        raise ValueError(f"{name} must be a CPU tensor, got device {t.device}")
    if t.dim() != dim:
        raise ValueError(f"{name} must have {dim} dims, got shape {tuple(t.shape)}")
    if dtype is not None and t.dtype != dtype:
        raise ValueError(f"{name} must be {dtype}, got {t.dtype}")
    return t


def thread_count(num_threads: int | None) -> int:
    """num_threads, checked; None: torch's own setting."""
    if num_threads is None:
        return torch.get_num_threads()
    if isinstance(num_threads, bool) or not isinstance(num_threads, int):
        raise TypeError(f"num_threads must be an int, got {num_threads!r}")
    if num_threads < 1:
        raise ValueError(f"num_threads must be >= 1, got {num_threads}")
    return num_threads
