"""Our Llama-family model over the paged KV cache gives transformers' logits (fp32, 1e-4).

Each architecture is a tiny random-weight HF model saved with save_pretrained and loaded with
our loader. Block size 4 and shuffled block ids make every sequence span several
non-contiguous blocks. Every test runs on the cpu-kernels backend (C decode attention reading
the pools in place, fused elementwise kernels, the small GEMM) and on the torch backend (the
gather + SDPA decode path of CUDA, or of CPU without a compiler) with both ways of computing
fused q/k/v and gate/up (one matmul, or one per part: BackendConfig.fused_matmul_min_tokens).
"""
from __future__ import annotations

import pytest
import torch

from fireplace.engine.backend import Backend
from fireplace.engine.backend_config import BackendConfig
from fireplace.engine.kv_cache import KVCacheSpec
from fireplace.engine.kernels import elementwise, paged_prefill, small_gemm
from fireplace.engine.loader import load_model

from .helpers import (
    PagedSequences,
    Sequence,
    hf_logits,
    make_hf_checkpoint,
    require_cpu_kernel,
    require_kernel,
)

ATOL = 1e-4
BLOCK_SIZE = 4

ARCHITECTURES = {
    # llama with llama3 RoPE scaling, biases everywhere
    "llama3": ("llama", dict(attention_bias=True, mlp_bias=True, rope_scaling={
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 32})),
    # SmolLM2-shaped: tied embeddings, theta 1e5, 3 query heads per KV head
    "smollm2": ("llama", dict(tie_word_embeddings=True, rope_theta=100000.0, hidden_size=96,
                              num_attention_heads=6, num_key_value_heads=2)),
    # explicit head_dim different from hidden / heads
    "mistral": ("mistral", dict(head_dim=24)),
    # q/k/v bias
    "qwen2": ("qwen2", dict()),
    # per-head q/k RMSNorm, explicit head_dim, 4 query heads per KV head
    "qwen3": ("qwen3", dict(head_dim=32, num_attention_heads=8, num_key_value_heads=2)),
}

PROMPT_LENS = (5, 11, 17)


@pytest.fixture(params=[("cpu-kernels", "small-gemm"), ("torch", "per-part"), ("torch", "fused")],
                ids=lambda p: "+".join(p))
def backend(request) -> Backend:
    """(backend, matmuls): our C kernels for all (decode-sized batches, as these tests' are),
    or torch with q/k/v and gate/up matmuls per part or fused."""
    kind, matmul = request.param
    if kind == "cpu-kernels":
        require_cpu_kernel()
        require_kernel(elementwise, "elementwise kernels")
        require_kernel(small_gemm, "small-batch GEMM")
        chosen = Backend.select("cpu", torch.float32, "cpu-kernels")
        assert chosen.paged_decode_kernel and chosen.elementwise_kernels
        # prefills through the C attention kernel wherever it builds (AVX-512), else SDPA
        assert chosen.paged_prefill_kernel == paged_prefill.available()
        return chosen
    # per-part below fused_matmul_min_tokens; these tests' batches are all smaller than 1 << 30
    config = BackendConfig(fused_matmul_min_tokens=0 if matmul == "fused" else 1 << 30)
    return Backend.select("cpu", torch.float32, "torch", config)


@pytest.fixture(scope="module", params=sorted(ARCHITECTURES))
def checkpoint(request, tmp_path_factory):
    model_type, overrides = ARCHITECTURES[request.param]
    path = tmp_path_factory.mktemp(request.param)
    hf = make_hf_checkpoint(model_type, path, **overrides)
    return hf, path, model_type


@pytest.fixture
def models(checkpoint, backend):
    """(transformers' model, ours on the backend under test)."""
    hf, path, model_type = checkpoint
    ours, config = load_model(path, dtype=torch.float32, backend=backend)
    assert config.architecture == model_type and ours.backend is backend
    return hf, ours


def _prompts(seed: int = 1, lens=PROMPT_LENS) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 128, (n,), generator=g).tolist() for n in lens]


def _caches(model, num_blocks: int = 64):
    return KVCacheSpec.for_model(model.config, BLOCK_SIZE, torch.float32).allocate(num_blocks)


def _run(model, ctx, caches) -> torch.Tensor:
    hidden = model(ctx, caches)
    return model.compute_logits(hidden[ctx.logits_indices])


def test_batched_varlen_prefill(models):
    hf, ours = models
    prompts = _prompts()
    paged = PagedSequences(64, BLOCK_SIZE, backend=ours.backend)
    seqs = [Sequence(p) for p in prompts]
    logits = _run(ours, paged.step([(s, len(s.token_ids)) for s in seqs], all_logits=True), _caches(ours))
    assert logits.dtype == torch.float32
    rows = 0
    for prompt in prompts:
        expected = hf_logits(hf, prompt)
        torch.testing.assert_close(logits[rows:rows + len(prompt)], expected, atol=ATOL, rtol=0)
        rows += len(prompt)


def test_chunked_prefill(models):
    hf, ours = models
    prompts = _prompts(seed=2)
    paged = PagedSequences(64, BLOCK_SIZE, backend=ours.backend)
    caches = _caches(ours)
    seqs = [Sequence(p) for p in prompts]
    # Chunks cross block boundaries at odd offsets; the first step leaves seq 2 for later,
    # and the final chunks of seq 0 is a single token (q_len 1 next to prefills).
    schedule = [
        [(seqs[0], 3), (seqs[1], 6)],
        [(seqs[0], 1), (seqs[1], 5), (seqs[2], 7)],
        [(seqs[0], 1), (seqs[2], 10)],
    ]
    got: dict[int, list[torch.Tensor]] = {i: [] for i in range(len(seqs))}
    for work in schedule:
        logits = _run(ours, paged.step(work, all_logits=True), caches)
        rows = 0
        for seq, n in work:
            got[seqs.index(seq)].append(logits[rows:rows + n])
            rows += n
    for i, prompt in enumerate(prompts):
        torch.testing.assert_close(torch.cat(got[i]), hf_logits(hf, prompt), atol=ATOL, rtol=0)


def test_decode_steps_over_paged_kv(models):
    hf, ours = models
    prompts = _prompts(seed=3)
    paged = PagedSequences(64, BLOCK_SIZE, seed=7, backend=ours.backend)
    caches = _caches(ours)
    seqs = [Sequence(list(p)) for p in prompts]
    logits = _run(ours, paged.step([(s, len(s.token_ids)) for s in seqs]), caches)
    decoded: list[list[torch.Tensor]] = [[] for _ in seqs]
    for _ in range(6):
        # Greedy next tokens, then a decode-only batch of all sequences.
        for seq, row in zip(seqs, logits):
            seq.token_ids.append(int(row.argmax()))
        ctx = paged.step([(s, 1) for s in seqs])
        assert ctx.is_decode_only
        logits = _run(ours, ctx, caches)
        for rows, row in zip(decoded, logits):
            rows.append(row)
    for seq, rows in zip(seqs, decoded):
        # HF's logits at the 6 decoded positions of the full sequence
        torch.testing.assert_close(torch.stack(rows), hf_logits(hf, seq.token_ids)[-6:], atol=ATOL, rtol=0)


def test_mixed_decode_and_prefill_batch(models):
    hf, ours = models
    prompts = _prompts(seed=4, lens=(6, 9, 13))
    paged = PagedSequences(64, BLOCK_SIZE, seed=3, backend=ours.backend)
    caches = _caches(ours)
    a, b, c = (Sequence(list(p)) for p in prompts)
    _run(ours, paged.step([(a, 6), (b, 9)]), caches)
    a.token_ids.append(5)
    b.token_ids.append(17)
    # decode a, prefill c whole, decode b: decode rows are not contiguous in T
    logits = _run(ours, paged.step([(a, 1), (c, 13), (b, 1)]), caches)
    for seq, row in zip((a, c, b), logits):
        torch.testing.assert_close(row, hf_logits(hf, seq.token_ids)[-1], atol=ATOL, rtol=0)


def test_sharded_checkpoint_loads(tmp_path, backend):
    hf = make_hf_checkpoint("llama", tmp_path, max_shard_size="40KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    assert len(list(tmp_path.glob("*.safetensors"))) > 1
    ours, _ = load_model(tmp_path, dtype=torch.float32, backend=backend)
    prompt = _prompts(lens=(9,))[0]
    paged = PagedSequences(16, BLOCK_SIZE, backend=backend)
    logits = _run(ours, paged.step([(Sequence(prompt), 9)], all_logits=True), _caches(ours, 16))
    torch.testing.assert_close(logits, hf_logits(hf, prompt), atol=ATOL, rtol=0)
