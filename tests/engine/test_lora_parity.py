"""One varlen forward serving base-only rows and 8 different LoRA addons gives PEFT's logits.

A tiny random Llama is saved and loaded with our loader; 8 PEFT adapters of mixed ranks (4..64),
alphas, target subsets, rsLoRA and rank/alpha patterns are saved with save_pretrained and loaded
through AdapterManager. Each sequence's logits must equal PEFT's own output for that adapter
(or the base model's for base rows) within 1e-4 fp32, in prefill and in a decode step, with
both LoRABatch strategies, on the cpu-kernels and the torch backend (lora_path). Merged mode
must equal PEFT's merge_and_unload.
"""
from __future__ import annotations

import copy

import pytest
import torch

from fireplace.engine.kv_cache import KVCacheSpec
from fireplace.engine.loader import load_model
from fireplace.engine.lora import AdapterManager, LoRAAdapter, LoRABatch, merge_adapter, unmerge_adapter

from .helpers import PagedSequences, Sequence, hf_logits, make_hf_checkpoint
from .lora_helpers import lora_path, make_peft_adapter  # noqa: F401  (lora_path: autouse)

ATOL = 1e-4
BLOCK_SIZE = 4
ATTN, MLP = ["q_proj", "k_proj", "v_proj", "o_proj"], ["gate_proj", "up_proj", "down_proj"]
ADAPTERS = {  # name -> PEFT LoraConfig arguments
    "r4-qv": dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]),
    "r8-all": dict(r=8, lora_alpha=16, target_modules="all-linear"),
    "r16-ko": dict(r=16, lora_alpha=32, target_modules=["k_proj", "o_proj"]),
    "r64-mlp": dict(r=64, lora_alpha=16, target_modules=MLP),
    "r8-rslora": dict(r=8, lora_alpha=8, target_modules=ATTN, use_rslora=True),
    "r32-q-down": dict(r=32, lora_alpha=64, target_modules=["q_proj", "down_proj"]),
    "r4-up-v": dict(r=4, lora_alpha=2, target_modules=["up_proj", "v_proj"]),
    "r12-patterns": dict(r=12, lora_alpha=24, target_modules=ATTN + MLP,
                         rank_pattern={"down_proj": 4}, alpha_pattern={"q_proj": 5}),
}
# (adapter or None for base, prompt length); one adapter appears twice, apart
BATCH = [("r4-qv", 5), (None, 7), ("r8-all", 3), ("r16-ko", 9), ("r64-mlp", 4), (None, 2), ("r8-rslora", 6),
         ("r32-q-down", 8), ("r4-up-v", 5), ("r8-all", 4), ("r12-patterns", 7)]



@pytest.fixture(scope="module")
def references(tmp_path_factory):
    """The checkpoint, the PEFT adapters and their logits (backend-independent)."""
    root = tmp_path_factory.mktemp("lora-parity")
    hf = make_hf_checkpoint("llama", root / "base", seed=3, tie_word_embeddings=True)
    peft_models = {name: make_peft_adapter(hf, root / name, seed=i, **kwargs)
                   for i, (name, kwargs) in enumerate(ADAPTERS.items())}
    g = torch.Generator().manual_seed(5)
    prompts = [torch.randint(0, 128, (n + 1,), generator=g).tolist() for _, n in BATCH]  # +1: decode token
    refs = []
    with torch.no_grad():
        for (name, _), prompt in zip(BATCH, prompts):
            ref_model = hf if name is None else peft_models[name]
            refs.append(ref_model(torch.tensor([prompt])).logits[0].float())
    return dict(root=root, hf=hf, peft=peft_models, prompts=prompts, refs=refs)


@pytest.fixture(scope="module")
def setup(references, lora_path):
    """Our model on the backend under test, with the 8 adapters loaded."""
    root = references["root"]
    model, config = load_model(root / "base", dtype=torch.float32, backend=lora_path)
    manager = AdapterManager(model, config, max_loras=8, max_lora_rank=64, max_cpu_loras=8)
    for name in ADAPTERS:
        manager.load_adapter(name, root / name)
    return dict(references, model=model, manager=manager)


@pytest.mark.parametrize("use_dense", [None, False, True], ids=["auto", "runs", "dense"])
def test_mixed_batch_matches_peft_in_prefill_and_decode(setup, use_dense):
    model, manager, prompts, refs = setup["model"], setup["manager"], setup["prompts"], setup["refs"]
    slots = [-1 if name is None else manager.acquire(name) for name, _ in BATCH]
    assert len({s for s in slots if s >= 0}) == 8
    caches = KVCacheSpec.for_model(model.config, BLOCK_SIZE, torch.float32).allocate(64)
    paged = PagedSequences(64, BLOCK_SIZE, backend=model.backend)
    seqs = [Sequence(p) for p in prompts]
    with torch.inference_mode():
        prefill_lens = [len(p) - 1 for p in prompts]
        ctx = paged.step(list(zip(seqs, prefill_lens)), all_logits=True)
        ctx.lora = LoRABatch.for_sequences(slots, prefill_lens, use_dense=use_dense, backend=model.backend)
        logits = model.compute_logits(model(ctx, caches)[ctx.logits_indices])
        row = 0
        for (name, n), ref in zip(BATCH, refs):
            torch.testing.assert_close(logits[row:row + n], ref[:n], atol=ATOL, rtol=0, msg=f"prefill {name}")
            row += n

        ctx = paged.step([(s, 1) for s in seqs])
        ctx.lora = LoRABatch.for_sequences(slots, [1] * len(seqs), use_dense=use_dense, backend=model.backend)
        logits = model.compute_logits(model(ctx, caches)[ctx.logits_indices])
        for i, ((name, n), ref) in enumerate(zip(BATCH, refs)):
            torch.testing.assert_close(logits[i], ref[n], atol=ATOL, rtol=0, msg=f"decode {name}")
    for s in slots:
        if s >= 0:
            manager.release(s)


def test_every_adapter_changes_the_output(setup):
    """Guards the test above against adapters too small to matter."""
    base = setup["refs"][BATCH.index((None, 7))]
    hf_ref = hf_logits(setup["hf"], setup["prompts"][BATCH.index((None, 7))])
    for name, peft_model in setup["peft"].items():
        with torch.no_grad():
            out = peft_model(torch.tensor([setup["prompts"][1]])).logits[0]
        assert (out - hf_ref).abs().max() > 100 * ATOL, name
    assert torch.equal(base, hf_ref)


def test_merged_mode_matches_peft_merge_and_unload(setup, tmp_path, lora_path):
    root, name = setup["root"], "r8-rslora"
    merged_ref = copy.deepcopy(setup["peft"][name]).merge_and_unload()
    model, config = load_model(root / "base", dtype=torch.float32, backend=lora_path)
    original = {k: v.clone() for k, v in model.state_dict().items()}
    adapter = LoRAAdapter.from_dir(root / name, config)
    merge_adapter(model, adapter)
    ours = model.state_dict()
    for key, want in merged_ref.state_dict().items():
        if key in ours:
            torch.testing.assert_close(ours[key], want, atol=ATOL, rtol=0, msg=key)
    assert not torch.equal(ours["model.layers.0.self_attn.q_proj.weight"],
                           original["model.layers.0.self_attn.q_proj.weight"])
    # the merged model's logits are the adapter's
    prompt = setup["prompts"][0]
    caches = KVCacheSpec.for_model(config, BLOCK_SIZE, torch.float32).allocate(16)
    ctx = PagedSequences(16, BLOCK_SIZE, backend=lora_path).step([(Sequence(prompt), len(prompt))], all_logits=True)
    with torch.inference_mode():
        logits = model.compute_logits(model(ctx, caches)[ctx.logits_indices])
    with torch.no_grad():
        want = setup["peft"][name](torch.tensor([prompt])).logits[0]
    torch.testing.assert_close(logits, want, atol=ATOL, rtol=0)
    unmerge_adapter(model, adapter)
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, original[key], atol=1e-6, rtol=0, msg=key)
