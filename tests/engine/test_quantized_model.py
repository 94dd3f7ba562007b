"""A model with quantized base weights gives the logits of transformers running the dequantized
weights (fp32, 1e-4), in prefill (dequantize + GEMM path) and decode (quantized GEMV path); and
LoRA addons on top of the quantized base give PEFT's logits on the dequantized base.

The reference model is the tiny HF checkpoint with every projection replaced by
dequantize(quantize(w)) (the lm_head by its int8 round trip, as quantize_model does), so the
only differences left are summation order. Each test also checks that quantization really
changed the model (the fp32 logits are farther away than the tolerance).
"""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from fireplace.engine.backend import Backend
from fireplace.engine.backend_config import BackendConfig
from fireplace.engine.kv_cache import KVCacheSpec
from fireplace.engine.loader import load_model
from fireplace.engine.lora import AdapterManager, LoRABatch
from fireplace.engine.quantization import dequantize, quantize, quantize_int8
from fireplace.engine.quantize_model import quantize_model

from .helpers import PagedSequences, Sequence, hf_logits, make_hf_checkpoint, require_cpu_kernel
from .lora_helpers import make_peft_adapter

ATOL = 1e-4
BLOCK_SIZE = 4
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
SCHEMES = [("int8", 32), ("int4", 32), ("int4", 64)]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("quantized")
    # SmolLM2-shaped (tied embeddings, GQA); every in_features (64, 128) a multiple of 64
    hf = make_hf_checkpoint("llama", path, seed=7, tie_word_embeddings=True, hidden_size=64, intermediate_size=128)
    return hf, path


def dequantized_reference(hf, scheme: str, group: int):
    """hf with each projection through quantize -> dequantize, and an untied int8 lm_head."""
    ref = copy.deepcopy(hf)
    with torch.no_grad():
        for name, module in ref.named_modules():
            if name.rsplit(".", 1)[-1] in PROJECTIONS:
                module.weight.copy_(dequantize(quantize(module.weight, scheme, group)))
        ref.lm_head.weight = nn.Parameter(dequantize(quantize_int8(ref.lm_head.weight)))
    return ref


@pytest.fixture(params=["cpu-kernels", "torch"])
def backend(request) -> Backend:
    """cpu-kernels with fp32 activations: only summation order differs from the reference (int8
    activations, the default for int4 weights, round x as well: test_int8_activations_stay_close)."""
    if request.param == "cpu-kernels":
        require_cpu_kernel()
        chosen = Backend.select("cpu", torch.float32, "cpu-kernels", BackendConfig(quant_activations="fp32"))
        assert chosen.quant_kernel, "the quantized GEMV must build where the other kernels do"
        return chosen
    return Backend.select("cpu", torch.float32, "torch")


def _prompts(seed: int, lens) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 128, (n,), generator=g).tolist() for n in lens]


@pytest.mark.parametrize("scheme,group", SCHEMES, ids=lambda v: str(v))
def test_logits_match_the_dequantized_reference(checkpoint, backend, scheme, group):
    hf, path = checkpoint
    ref = dequantized_reference(hf, scheme, group)
    model, config = load_model(path, dtype=torch.float32, backend=backend)
    summary = quantize_model(model, scheme, group)
    assert summary.num_matrices == 2 * 4 + 1  # per layer: qkv, o, gate_up, down; plus lm_head
    assert summary.quantized_bytes < summary.fp32_bytes / (3 if scheme == "int8" else 4)
    o_proj = model.model.layers[0].self_attn.o_proj
    assert o_proj.weight.stride() == (0, 0) and o_proj.quantized.scheme == scheme  # fp32 copy released

    prompts = _prompts(1, (5, 11, 3))
    caches = KVCacheSpec.for_model(config, BLOCK_SIZE, torch.float32).allocate(64)
    paged = PagedSequences(64, BLOCK_SIZE, backend=backend)
    seqs = [Sequence(p[:-1]) for p in prompts]
    with torch.inference_mode():
        ctx = paged.step([(s, len(s.token_ids)) for s in seqs], all_logits=True)  # 16 tokens: dequantize + GEMM
        prefill = model.compute_logits(model(ctx, caches)[ctx.logits_indices])
        for s, p in zip(seqs, prompts):
            s.token_ids.append(p[-1])
        ctx = paged.step([(s, 1) for s in seqs])  # 3 tokens: the quantized GEMV on cpu-kernels
        decode = model.compute_logits(model(ctx, caches)[ctx.logits_indices])
    row, farthest_from_fp32 = 0, 0.0
    for i, prompt in enumerate(prompts):
        want = hf_logits(ref, prompt)
        n = len(prompt) - 1
        torch.testing.assert_close(prefill[row:row + n], want[:n], atol=ATOL, rtol=0, msg=f"prefill {i}")
        torch.testing.assert_close(decode[i], want[n], atol=ATOL, rtol=0, msg=f"decode {i}")
        farthest_from_fp32 = max(farthest_from_fp32, (decode[i] - hf_logits(hf, prompt)[n]).abs().max().item())
        row += n
    assert farthest_from_fp32 > 10 * ATOL  # quantization did change the model


@pytest.mark.parametrize("scheme,group", SCHEMES, ids=lambda v: str(v))
def test_int8_activations_stay_close_to_the_dequantized_reference(checkpoint, scheme, group):
    """quant_activations "int8" (the default for int4 weights): decode steps of at most
    quant_gemv_max_tokens tokens round each token's activations to int8 per block of 32 in every
    quantized projection. Its logits stay
    within a small fraction of their range of the reference's (a bound, not rounding): about as
    far as int8 weights move them from the unquantized model, half or less of what int4 weights
    do; prefill (dequantize + GEMM) reads x unrounded and is unchanged."""
    require_cpu_kernel()
    hf, path = checkpoint
    ref = dequantized_reference(hf, scheme, group)
    backend = Backend.select("cpu", torch.float32, "cpu-kernels", BackendConfig(quant_activations="int8"))
    model, config = load_model(path, dtype=torch.float32, backend=backend)
    quantize_model(model, scheme, group)
    prompts = _prompts(3, (6, 9, 4, 12))
    caches = KVCacheSpec.for_model(config, BLOCK_SIZE, torch.float32).allocate(64)
    paged = PagedSequences(64, BLOCK_SIZE, backend=backend)
    seqs = [Sequence(p[:-1]) for p in prompts]
    with torch.inference_mode():
        ctx = paged.step([(s, len(s.token_ids)) for s in seqs], all_logits=True)
        prefill = model.compute_logits(model(ctx, caches)[ctx.logits_indices])
        for s, p in zip(seqs, prompts):
            s.token_ids.append(p[-1])
        ctx = paged.step([(s, 1) for s in seqs])  # 4 tokens: the quantized GEMV
        decode = model.compute_logits(model(ctx, caches)[ctx.logits_indices])
    row, worst, worst_fp32 = 0, 0.0, 0.0
    for i, prompt in enumerate(prompts):
        want, n = hf_logits(ref, prompt), len(prompt) - 1
        torch.testing.assert_close(prefill[row:row + n], want[:n], atol=ATOL, rtol=0, msg=f"prefill {i}")
        spread = (want[n].max() - want[n].min()).item()
        worst = max(worst, (decode[i] - want[n]).abs().max().item() / spread)
        worst_fp32 = max(worst_fp32, (hf_logits(hf, prompt)[n] - want[n]).abs().max().item() / spread)
        row += n
    # the rounding is there, and small: here 0.009 (int8), 0.021 and 0.015 (int4 in groups of 32, 64)
    assert 10 * ATOL < worst < 0.03, worst
    # of the order of what int8 weights cost (0.009 of the spread), a fifth of int4's (0.11, 0.13)
    assert worst < 2 * worst_fp32 if scheme == "int8" else worst < worst_fp32 / 2


@pytest.mark.parametrize("scheme,group", [("int8", 32), ("int4", 32)], ids=lambda v: str(v))
def test_lora_on_a_quantized_base_matches_peft_on_the_dequantized_base(checkpoint, backend, scheme, group,
                                                                        tmp_path):
    from peft import PeftModel

    hf, path = checkpoint
    adapters = {"r8-all": dict(r=8, lora_alpha=16, target_modules="all-linear"),
                "r4-qv-down": dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"])}
    for i, (name, kwargs) in enumerate(adapters.items()):
        make_peft_adapter(hf, tmp_path / name, seed=11 + i, **kwargs)
    ref_base = dequantized_reference(hf, scheme, group)
    refs = {None: ref_base}
    for name in adapters:
        refs[name] = PeftModel.from_pretrained(copy.deepcopy(ref_base), str(tmp_path / name)).eval()

    model, config = load_model(path, dtype=torch.float32, backend=backend)
    quantize_model(model, scheme, group)
    manager = AdapterManager(model, config, max_loras=2, max_lora_rank=16, max_cpu_loras=2)
    for name in adapters:
        manager.load_adapter(name, tmp_path / name)
    batch = [("r8-all", 6), (None, 4), ("r4-qv-down", 7), ("r8-all", 3)]  # one mixed batch
    prompts = _prompts(2, [n + 1 for _, n in batch])
    slots = [-1 if name is None else manager.acquire(name) for name, _ in batch]
    caches = KVCacheSpec.for_model(config, BLOCK_SIZE, torch.float32).allocate(64)
    paged = PagedSequences(64, BLOCK_SIZE, backend=backend)
    seqs = [Sequence(p[:-1]) for p in prompts]
    with torch.inference_mode():
        lens = [n for _, n in batch]
        ctx = paged.step(list(zip(seqs, lens)), all_logits=True)
        ctx.lora = LoRABatch.for_sequences(slots, lens, backend=backend)
        prefill = model.compute_logits(model(ctx, caches)[ctx.logits_indices])
        for s, p in zip(seqs, prompts):
            s.token_ids.append(p[-1])
        ctx = paged.step([(s, 1) for s in seqs])
        ctx.lora = LoRABatch.for_sequences(slots, [1] * len(seqs), backend=backend)
        decode = model.compute_logits(model(ctx, caches)[ctx.logits_indices])
    row = 0
    for i, ((name, n), prompt) in enumerate(zip(batch, prompts)):
        want = hf_logits(refs[name], prompt)
        torch.testing.assert_close(prefill[row:row + n], want[:n], atol=ATOL, rtol=0, msg=f"prefill {name}")
        torch.testing.assert_close(decode[i], want[n], atol=ATOL, rtol=0, msg=f"decode {name}")
        if name is not None:  # the adapter did contribute
            assert (decode[i] - hf_logits(ref_base, prompt)[n]).abs().max() > 10 * ATOL
        row += n
    for s in slots:
        if s >= 0:
            manager.release(s)


@pytest.mark.parametrize("overrides,match", [
    (dict(quantization="int3"), "quantization must be one of int8, int4"),
    (dict(quantization="int8", dtype="bfloat16"), "CPU in float32"),
    (dict(quantization="int4", quantization_group_size=48), "multiple of 32"),
])
def test_engine_config_refuses_what_it_cannot_serve(overrides, match):
    from fireplace.engine.engine_config import EngineConfig

    with pytest.raises(ValueError, match=match):
        EngineConfig(model="unused", **overrides).validate()


def test_engine_serves_a_quantized_base_with_lora_in_one_batch(checkpoint, tmp_path):
    """EngineConfig.quantization through LLMEngine: the base is quantized after load, LoRA
    addons run on it in the same batch, and greedy outputs are what the model-level path gives
    (fp32 activations, so that the reference is exact up to rounding)."""
    from transformers import AutoTokenizer

    from fireplace.catalog.smollm2 import ensure_smollm2
    from fireplace.engine.engine_config import EngineConfig
    from fireplace.engine.llm_engine import LLMEngine
    from fireplace.engine.sampling_params import SamplingParams

    hf, path = checkpoint
    make_peft_adapter(hf, tmp_path / "addon", seed=21, r=8, lora_alpha=16, target_modules="all-linear")
    tokenizer = AutoTokenizer.from_pretrained(str(ensure_smollm2()))
    greedy = SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True)
    prompts = [[3, 9, 27, 81, 5], [7, 1, 4]]
    outs = {}
    for quantization in (None, "int4"):
        engine = LLMEngine(EngineConfig(model=str(path), num_kv_blocks=32, block_size=4, enable_lora=True,
                                        max_loras=2, quantization=quantization,
                                        backend_config=BackendConfig(quant_activations="fp32")),
                           tokenizer=tokenizer)
        engine.load_adapter("addon", tmp_path / "addon")
        assert (engine.quantization is None) == (quantization is None)
        outs[quantization] = [o.outputs[0].token_ids for o in
                              engine.generate(prompts, greedy, adapter_ids=[None, "addon"])]
        if quantization:
            assert engine.quantization.scheme == "int4" and engine.quantization.num_matrices == 9
            assert engine.model.model.layers[1].mlp.down_proj.quantized is not None
    from peft import PeftModel

    ref_base = dequantized_reference(hf, "int4", 32)
    refs = [ref_base, PeftModel.from_pretrained(copy.deepcopy(ref_base), str(tmp_path / "addon")).eval()]
    for prompt, ref, got in zip(prompts, refs, outs["int4"]):
        ids = torch.tensor([prompt])
        with torch.no_grad():
            want = ref.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, min_new_tokens=6,
                                do_sample=False)[0, len(prompt):].tolist()
        assert got == want
