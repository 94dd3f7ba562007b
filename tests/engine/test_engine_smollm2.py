"""The whole engine on the real SmolLM2-135M-Instruct (converted from the bundled GGUF), fp32 CPU.

Greedy outputs must be token-identical to transformers' `generate`, while our engine runs all
prompts at once (continuous batching, chunked prefill, paged KV); plus the engine-level
behaviours: seeds independent of the batch, n > 1, stop strings, abort, preemption.
"""
from __future__ import annotations

import asyncio

import pytest
import torch

from fireplace.catalog.smollm2 import ensure_smollm2
from fireplace.engine.async_engine import AsyncEngine
from fireplace.engine.engine_config import EngineConfig
from fireplace.engine.errors import InvalidRequestError
from fireplace.engine.llm_engine import LLMEngine
from fireplace.engine.sampling_params import SamplingParams

from tests.engine.smollm2_prompts import PROMPTS

MAX_NEW = 12


@pytest.fixture(scope="module")
def model_dir():
    return ensure_smollm2()


@pytest.fixture(scope="module")
def engine(model_dir):
    # A small token budget forces chunked prefill and mixed prefill/decode steps.
    return LLMEngine(EngineConfig(model=str(model_dir), kv_cache_bytes=64 << 20, max_num_batched_tokens=64,
                                  max_num_seqs=32, num_threads=2))


def test_greedy_is_token_identical_to_transformers(engine, model_dir):
    from transformers import AutoModelForCausalLM
    hf = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    tok = engine.tokenizer
    ours = engine.generate(PROMPTS, SamplingParams(temperature=0, max_tokens=MAX_NEW, ignore_eos=True))
    for prompt, out in zip(PROMPTS, ours):
        ids = tok(prompt, return_tensors="pt").input_ids  # transformers' default special tokens, as ours
        with torch.no_grad():
            ref = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=MAX_NEW,
                              min_new_tokens=MAX_NEW, do_sample=False)[0, ids.shape[1]:].tolist()
        assert out.outputs[0].token_ids == ref, prompt
        assert out.outputs[0].finish_reason == "length"
    assert engine.scheduler.num_running == 0 and engine.scheduler.num_waiting == 0


def test_seeded_sampling_does_not_depend_on_the_batch(engine):
    params = SamplingParams(temperature=0.9, top_p=0.95, seed=1234, max_tokens=10, ignore_eos=True)
    alone = engine.generate(["Tell me a story"], params)[0].outputs[0].token_ids
    crowd = engine.generate(["Tell me a story", "Another prompt", "And one more"],
                            [params, SamplingParams(temperature=1.0, max_tokens=10),
                             SamplingParams(temperature=0.5, max_tokens=10)])[0].outputs[0].token_ids
    assert alone == crowd


def test_n_completions_share_the_prompt(engine):
    out = engine.generate(["Write a word:"], SamplingParams(temperature=1.0, n=3, seed=7, max_tokens=6,
                                                            ignore_eos=True))[0]
    assert [o.index for o in out.outputs] == [0, 1, 2]
    assert all(len(o.token_ids) == 6 for o in out.outputs)
    assert len({tuple(o.token_ids) for o in out.outputs}) > 1


def test_stop_strings_cut_the_text(engine):
    base = engine.generate(["1, 2, 3, 4,"], SamplingParams(temperature=0, max_tokens=12))[0].outputs[0].text
    assert "6" in base
    out = engine.generate(["1, 2, 3, 4,"], SamplingParams(temperature=0, max_tokens=12, stop=["6"]))[0].outputs[0]
    assert out.finish_reason == "stop" and out.stop_reason == "6"
    assert out.text == base[:base.index("6")]


def test_logprobs_are_reported(engine):
    out = engine.generate(["Hello"], SamplingParams(temperature=0, max_tokens=3, logprobs=2))[0].outputs[0]
    assert len(out.logprobs) == len(out.token_ids)
    for lp, token in zip(out.logprobs, out.token_ids):
        assert lp.token_id == token and lp.logprob <= 0
        assert len(lp.top) == 2 and lp.top[0][0] == token  # greedy: the chosen token is the best


def test_invalid_parameters_raise_a_typed_error(engine):
    with pytest.raises(InvalidRequestError):
        engine.add_request(None, "hi", SamplingParams(temperature=-1))
    with pytest.raises(InvalidRequestError):
        engine.add_request(None, [engine.model_config.vocab_size + 5], SamplingParams())
    with pytest.raises(InvalidRequestError):
        engine.add_request(None, "hi", SamplingParams(max_tokens=10**9))


def test_preemption_by_recompute_keeps_outputs_identical(model_dir):
    # 12 blocks of 16 tokens cannot hold 6 sequences of ~48 tokens (3 blocks each): the scheduler must preempt.
    tiny = LLMEngine(EngineConfig(model=str(model_dir), num_kv_blocks=12, max_num_batched_tokens=64,
                                  max_model_len=128, num_threads=2, enable_prefix_caching=False))
    params = SamplingParams(temperature=0, max_tokens=40, ignore_eos=True)
    prompts = PROMPTS[:6]
    got = tiny.generate(prompts, params)
    assert tiny.scheduler.num_preemptions > 0
    roomy = LLMEngine(EngineConfig(model=str(model_dir), kv_cache_bytes=64 << 20, num_threads=2))
    want = roomy.generate(prompts, params)
    assert [o.outputs[0].token_ids for o in got] == [o.outputs[0].token_ids for o in want]
    assert tiny.scheduler.block_manager.num_used_blocks == 0


def test_async_front_streams_and_abort_frees_blocks(engine):
    async def main():
        front = AsyncEngine(engine)
        try:
            pieces = []
            async for out in front.generate("Count to ten:", SamplingParams(temperature=0, max_tokens=8,
                                                                           ignore_eos=True)):
                pieces.append(out.outputs[0].text)
            assert len(pieces) == 8 and out.finished and out.outputs[0].finish_reason == "length"

            stream = front.generate("A long story:", SamplingParams(temperature=0, max_tokens=200, ignore_eos=True))
            first = await stream.__anext__()
            assert not first.finished
            await stream.aclose()  # the client went away
            for _ in range(100):
                used = await front.call(lambda e: (e.has_unfinished_requests(), e.scheduler.num_running))
                if used == (False, 0):
                    break
                await asyncio.sleep(0.02)
            assert used == (False, 0)

            with pytest.raises(InvalidRequestError):
                async for _ in front.generate("x", SamplingParams(top_p=0)):
                    pass
        finally:
            front.shutdown()
    asyncio.run(main())


def test_prompt_logprobs_match_transformers_and_echo_returns_the_prompt(engine, model_dir):
    from transformers import AutoModelForCausalLM
    hf = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    prompt = "The capital of France is"
    out = engine.generate([prompt], SamplingParams(temperature=0, max_tokens=2, prompt_logprobs=2, echo=True))[0]
    ids = out.prompt_token_ids
    with torch.no_grad():
        ref = torch.log_softmax(hf(torch.tensor([ids])).logits[0].float(), dim=-1)
    assert out.prompt_logprobs[0] is None and len(out.prompt_logprobs) == len(ids)
    for pos in range(1, len(ids)):
        item = out.prompt_logprobs[pos]
        assert item.token_id == ids[pos]
        assert abs(item.logprob - float(ref[pos - 1, ids[pos]])) < 1e-3
        assert len(item.top) == 2 and item.top[0][1] >= item.top[1][1]
    assert out.outputs[0].text.startswith(prompt)


def test_bf16_engine_over_a_bf16_kv_cache_stays_close_to_fp32(engine, model_dir):
    """CPU bf16 (bf16 projections and a bf16 KV cache where the CPU has bf16 instructions; else
    the whole model in bf16): a prompt past the 64-token budget is prefilled in chunks, each
    reading the KV cached by the earlier ones back from the pools; every prompt logprob stays
    within bf16 rounding of the fp32 engine's."""
    bf16 = LLMEngine(EngineConfig(model=str(model_dir), dtype="bfloat16", kv_cache_bytes=64 << 20,
                                  max_num_batched_tokens=64, num_threads=2))
    assert bf16.runner.kv_caches[0][0].dtype is torch.bfloat16
    prompt = " ".join(PROMPTS)
    params = SamplingParams(temperature=0, max_tokens=4, prompt_logprobs=1)
    want, got = engine.generate([prompt], params)[0], bf16.generate([prompt], params)[0]
    assert len(got.prompt_token_ids) > 100  # two chunks after the first
    diffs = [abs(a.logprob - b.logprob) for a, b in zip(want.prompt_logprobs[1:], got.prompt_logprobs[1:])]
    assert max(diffs) < 0.5 and sum(diffs) / len(diffs) < 0.05, (max(diffs), sum(diffs) / len(diffs))
