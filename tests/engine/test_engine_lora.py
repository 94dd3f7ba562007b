"""The engine end to end with LoRA addons: greedy generations of a batch mixing base-only
requests with several adapters equal PEFT's own generate, and adapters load and unload while
requests run."""
from __future__ import annotations

import pytest
import torch

from fireplace.catalog.smollm2 import ensure_smollm2
from fireplace.engine.engine_config import EngineConfig
from fireplace.engine.errors import InvalidRequestError
from fireplace.engine.llm_engine import LLMEngine
from fireplace.engine.sampling_params import SamplingParams
from tests.engine.lora_helpers import make_peft_adapter, tiny_hf_llama

TARGETS = [("q_proj", "v_proj"), ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
           ("gate_proj", "down_proj")]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from transformers import AutoTokenizer
    root = tmp_path_factory.mktemp("lora-engine")
    base = tiny_hf_llama(seed=3)
    base.save_pretrained(root / "base")
    adapters = []
    for i, targets in enumerate(TARGETS):
        peft = make_peft_adapter(base, root / f"a{i}", r=(4, 8, 16)[i], lora_alpha=16, target_modules=targets,
                                 seed=10 + i, use_rslora=(i == 2))
        adapters.append((root / f"a{i}", peft))
    tokenizer = AutoTokenizer.from_pretrained(str(ensure_smollm2()))  # decodes ids < 128 like any
    return root, base, adapters, tokenizer


def make_engine(root, tokenizer, **kw):
    config = EngineConfig(model=str(root / "base"), enable_lora=True, max_loras=4, max_lora_rank=16,
                          num_kv_blocks=64, block_size=4, max_num_batched_tokens=64, **kw)
    return LLMEngine(config, tokenizer=tokenizer)


def greedy_reference(model, prompt: list[int], max_new: int) -> list[int]:
    ids = torch.tensor([prompt])
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new,
                             min_new_tokens=max_new, do_sample=False, pad_token_id=0)
    return out[0, len(prompt):].tolist()


def test_mixed_adapter_batch_matches_peft_generate(setup):
    root, base, adapters, tokenizer = setup
    engine = make_engine(root, tokenizer)
    for i, (path, _) in enumerate(adapters):
        engine.load_adapter(f"a{i}", str(path))
    prompts = [[5, 17, 33, 2, 9], [40, 41, 42], [7] * 11, [100, 3, 64, 8], [1, 2, 3, 4, 5, 6], [90, 91]]
    which = [None, 0, 1, 2, 0, None]
    params = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)
    outs = engine.generate(prompts, params, adapter_ids=[None if w is None else f"a{w}" for w in which])
    for prompt, w, out in zip(prompts, which, outs):
        model = base if w is None else adapters[w][1]
        assert out.outputs[0].token_ids == greedy_reference(model, prompt, 8), (prompt, w)


def test_unload_while_running_drains_then_refuses(setup):
    root, base, adapters, tokenizer = setup
    engine = make_engine(root, tokenizer)
    engine.load_adapter("a1", str(adapters[1][0]))
    rid = engine.add_request(None, [5, 6, 7], SamplingParams(temperature=0, max_tokens=6, ignore_eos=True),
                             adapter_id="a1")
    tokens = [t for out in engine.step() for t in out.outputs[0].token_ids]
    engine.unload_adapter("a1")  # the running request keeps its adapter
    with pytest.raises(InvalidRequestError):
        engine.add_request(None, [1, 2], SamplingParams(max_tokens=2), adapter_id="a1")
    while engine.has_unfinished_requests():
        for out in engine.step():
            assert out.request_id == rid
            tokens += out.outputs[0].token_ids
    assert tokens == greedy_reference(adapters[1][1], [5, 6, 7], 6)
    assert engine.adapters.num_slots_used == 0  # dropped once its last request finished
    with pytest.raises(InvalidRequestError):
        engine.add_request(None, [1, 2], SamplingParams(max_tokens=2), adapter_id="a1")


def test_merged_mode_equals_peft_generate(setup):
    root, base, adapters, tokenizer = setup
    engine = LLMEngine(EngineConfig(model=str(root / "base"), merged_adapter=str(adapters[1][0]),
                                    num_kv_blocks=64, block_size=4), tokenizer=tokenizer)
    out = engine.generate([[9, 8, 7, 6]], SamplingParams(temperature=0, max_tokens=8, ignore_eos=True))[0]
    assert out.outputs[0].token_ids == greedy_reference(adapters[1][1], [9, 8, 7, 6], 8)


@pytest.mark.slow
def test_compiled_engine_gives_the_same_tokens(setup):
    root, base, adapters, tokenizer = setup
    prompts = [[1, 2, 3, 4], [5, 6, 7]]
    params = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True)
    eager = LLMEngine(EngineConfig(model=str(root / "base"), num_kv_blocks=64, block_size=4), tokenizer=tokenizer)
    compiled = LLMEngine(EngineConfig(model=str(root / "base"), num_kv_blocks=64, block_size=4, compile=True),
                         tokenizer=tokenizer)
    assert [o.outputs[0].token_ids for o in compiled.generate(prompts, params)] == \
        [o.outputs[0].token_ids for o in eager.generate(prompts, params)]


def test_prefix_cache_hits_reuse_kv_and_keep_outputs(setup):
    root, base, adapters, tokenizer = setup
    engine = make_engine(root, tokenizer)
    engine.load_adapter("a0", str(adapters[0][0]))
    prompt = list(range(10, 30))  # 5 full blocks of 4 tokens
    params = SamplingParams(temperature=0, max_tokens=4, ignore_eos=True)
    first = engine.generate([prompt], params)[0]
    again = engine.generate([prompt], params)[0]
    assert first.num_cached_tokens == 0 and again.num_cached_tokens >= 16
    assert again.outputs[0].token_ids == first.outputs[0].token_ids
    # the same tokens under an adapter must not reuse the base model's KV
    with_adapter = engine.generate([prompt], params, adapter_ids=["a0"])[0]
    assert with_adapter.num_cached_tokens == 0
    assert with_adapter.outputs[0].token_ids == greedy_reference(adapters[0][1], prompt, 4)


@pytest.mark.parametrize("backend", ["auto", "torch"])
def test_bfloat16_engine_runs_close_to_float32(setup, backend):
    """auto: fp32 model whose projections compute in bf16 (where the CPU has bf16 instructions;
    prompts of 24+ tokens reach oneDNN) over a bf16 KV cache; torch: the whole model in bf16."""
    root, base, adapters, tokenizer = setup
    prompts = [[3, 1, 4, 1, 5, 9, 2, 6] * 4, [2, 7, 1, 8] * 7]
    params = SamplingParams(temperature=0, max_tokens=1, logprobs=1, ignore_eos=True)
    fp32 = LLMEngine(EngineConfig(model=str(root / "base"), num_kv_blocks=64, block_size=4), tokenizer=tokenizer)
    bf16 = LLMEngine(EngineConfig(model=str(root / "base"), dtype="bfloat16", num_kv_blocks=64, block_size=4,
                                  backend=backend), tokenizer=tokenizer)
    if bf16.backend.matmul_dtype is not None:
        assert backend == "auto" and bf16.model.dtype == torch.float32 and bf16.backend.matmul_dtype == torch.bfloat16
    else:
        assert bf16.model.dtype == torch.bfloat16
    assert bf16.runner.kv_caches[0][0].dtype is torch.bfloat16
    for a, b in zip(fp32.generate(prompts, params), bf16.generate(prompts, params)):
        assert abs(a.outputs[0].logprobs[0].logprob - b.outputs[0].logprobs[0].logprob) < 0.1
