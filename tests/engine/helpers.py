"""Test helpers for the model layer: tiny HF checkpoints and hand-built forward contexts.

`PagedSequences` plays a minimal block manager: it hands out block ids from a shuffled pool,
so every sequence spans several non-contiguous blocks, and builds the varlen ForwardContext
for one step from "(sequence, number of new tokens)" pairs, with its attention metadata built
for the backend of the model it is meant for (as ModelRunner.prepare does).
"""
from __future__ import annotations

import os
import random
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from fireplace.engine.attention_metadata import build_attention_metadata
from fireplace.engine.backend import Backend
from fireplace.engine.forward_context import ForwardContext

TINY = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)


def make_hf_checkpoint(model_type: str, out_dir: Path, max_shard_size: str | None = None, seed: int = 0,
                       **overrides):
    """A random-weight fp32 HF model saved to out_dir; returns the HF model (eval)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(seed)
    config = AutoConfig.for_model(model_type, **{**TINY, **overrides})
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    with torch.no_grad():
        # Default init leaves norms at 1 and biases at 0, which would hide a missing norm or
        # bias in our model: perturb them. Larger weights also make logits less flat.
        for name, param in model.named_parameters():
            if param.dim() == 1:
                param.add_(torch.randn_like(param) * 0.1)
            else:
                param.normal_(0.0, 0.08)
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(out_dir, safe_serialization=True, **kwargs)
    return model


@dataclass
class Sequence:
    token_ids: list[int]
    block_ids: list[int] = field(default_factory=list)
    num_computed: int = 0  # tokens whose K/V are in the cache


class PagedSequences:
    def __init__(self, num_blocks: int, block_size: int, seed: int = 0, *, backend: Backend | None = None):
        """backend: the model's (model.backend); None: Backend.select("cpu"), the default model's."""
        self.backend = backend if backend is not None else Backend.select("cpu")
        self.block_size = block_size
        self.free = list(range(num_blocks))
        random.Random(seed).shuffle(self.free)

    def _ensure_blocks(self, seq: Sequence, num_tokens: int) -> None:
        while len(seq.block_ids) * self.block_size < num_tokens:
            seq.block_ids.append(self.free.pop())

    def step(self, work: list[tuple[Sequence, int]], all_logits: bool = False,
             device: str | torch.device = "cpu") -> ForwardContext:
        """Context computing `n` new tokens of each (seq, n); advances num_computed.

        Logits rows: every token if all_logits, else the last token of each sequence.
        """
        input_ids, positions, slots, logits_rows = [], [], [], []
        query_lens, context_lens = [], []
        for seq, n in work:
            start, end = seq.num_computed, seq.num_computed + n
            assert end <= len(seq.token_ids)
            self._ensure_blocks(seq, end)
            first_row = len(input_ids)
            for pos in range(start, end):
                input_ids.append(seq.token_ids[pos])
                positions.append(pos)
                slots.append(seq.block_ids[pos // self.block_size] * self.block_size + pos % self.block_size)
            logits_rows.extend(range(first_row, first_row + n) if all_logits else [first_row + n - 1])
            query_lens.append(n)
            context_lens.append(end)
            seq.num_computed = end
        max_blocks = max(len(seq.block_ids) for seq, _ in work)
        tables = [seq.block_ids + [0] * (max_blocks - len(seq.block_ids)) for seq, _ in work]
        block_tables = torch.tensor(tables, dtype=torch.int32, device=device)
        return ForwardContext(
            input_ids=torch.tensor(input_ids, dtype=torch.int64, device=device),
            positions=torch.tensor(positions, dtype=torch.int64, device=device),
            query_lens=query_lens,
            context_lens=context_lens,
            block_tables=block_tables,
            slot_mapping=torch.tensor(slots, dtype=torch.int64, device=device),
            logits_indices=torch.tensor(logits_rows, dtype=torch.int64, device=device),
            block_size=self.block_size,
            is_decode_only=all(n == 1 for _, n in work),
            attention=build_attention_metadata(query_lens, context_lens, block_tables, self.block_size,
                                               self.backend),
        )


def hf_logits(hf_model, token_ids: list[int]) -> torch.Tensor:
    """HF reference logits of the whole sequence: [len, vocab] fp32."""
    with torch.no_grad():
        return hf_model(torch.tensor([token_ids])).logits[0].float()


def require_kernel(kernel_module, what: str) -> None:
    """Skip unless a C kernel (a fireplace.engine.kernels module) builds here; in CI (CI=true)
    fail instead of skipping."""
    if not kernel_module.available():
        if os.environ.get("CI") == "true":
            pytest.fail(f"the C {what} must build in CI, but it is unavailable")
        pytest.skip(f"the C {what} is unavailable (no C compiler?)")


def build_portable(source: Path, tmp_path: Path, flags: tuple[str, ...] = ()):
    """A kernel's C source compiled for the baseline ISA (no -march=native: no AVX2 / AVX-512,
    what an older CPU gets) or for the ISA that `flags` name (e.g. -march=haswell: AVX2 + FMA,
    no AVX-512), loaded with ctypes. Skips without a C compiler (fails in CI)."""
    import ctypes
    import shutil
    import subprocess

    compiler = shutil.which(os.environ.get("CC", "gcc"))
    if compiler is None:
        if os.environ.get("CI") == "true":
            pytest.fail("a C compiler is required in CI")
        pytest.skip("no C compiler")
    lib_path = tmp_path / f"{source.stem}_{'_'.join(f.strip('-') for f in flags) or 'portable'}.so"
    subprocess.run([compiler, "-O2", *flags, "-shared", "-fPIC", "-fopenmp", "-o", str(lib_path), str(source), "-lm"],
                   check=True, capture_output=True, timeout=120)
    return ctypes.CDLL(str(lib_path))


def use_quant_gemv_build(monkeypatch, tmp_path: Path, flags: tuple[str, ...] = ()):
    """quant_gemv.c built by build_portable (baseline ISA, or the ISA `flags` name), declared and
    put in place of the native library for the rest of the test; returns it."""
    from fireplace.engine.kernels import quant_gemv
    lib = build_portable(quant_gemv._SOURCE, tmp_path, flags)
    quant_gemv._declare(lib)
    monkeypatch.setattr(quant_gemv._kernels, "_lib", lib)
    monkeypatch.setattr(quant_gemv._kernels, "_loaded", True)
    return lib


def require_cpu_kernel() -> None:
    """The paged decode attention kernel (see require_kernel)."""
    from fireplace.engine.kernels import paged_decode
    require_kernel(paged_decode, "paged decode kernel")


def assert_matches(out: torch.Tensor, expected: torch.Tensor, rtol: float = 2e-5) -> None:
    """out within rtol of the largest |expected| (at least 1) of an fp64 reference: what fp32
    accumulation in another order than the reference's leaves (the quantized kernels' tests)."""
    scale = max(expected.abs().max().item(), 1.0) if expected.numel() else 1.0
    torch.testing.assert_close(out.double(), expected, atol=rtol * scale, rtol=0)
