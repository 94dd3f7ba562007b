"""The logits-processor hook: per-sample token masks applied before sampling, batched.

On a tiny random-weight llama (vocab 128): constrained greedy output equals a hand-written greedy
loop over transformers' logits under the same mask; sampled tokens never break the mask; n > 1
siblings each get their own processor and history; a batch mixing constrained and free requests
leaves the free ones exactly as they are alone; preemption by recompute keeps the constraint.
"""
from __future__ import annotations

import gc

import pytest
import torch

from fireplace.catalog.smollm2 import ensure_smollm2
from fireplace.engine.engine_config import EngineConfig
from fireplace.engine.errors import InvalidRequestError
from fireplace.engine.llm_engine import LLMEngine
from fireplace.engine.logits_processors import (LogitsProcessor, allow_only, bitmask_words, forbid,
                                                unpack_bitmask)
from fireplace.engine.sampling_params import SamplingParams
from tests.engine.helpers import make_hf_checkpoint

VOCAB = 128
PROMPTS = [[5, 17, 33, 2, 9], [40, 41, 42], [7] * 11, [100, 3, 64, 8], [1, 2, 3, 4, 5, 6], [90, 91]]


def allowed_after(history: list[int]) -> list[int]:
    """A history-dependent rule: tokens of the parity of the output length, never one already
    produced, and never a multiple of 3 (so a processor that ignored the history would fail)."""
    parity = len(history) % 2
    seen = set(history)
    return [t for t in range(VOCAB) if t % 2 == parity and t not in seen and t % 3 != 0]


class RuleProcessor(LogitsProcessor):
    """Stateful on purpose: it keeps its own copy of the history and checks the engine's one
    grows by exactly the tokens it allowed, so a processor shared between samples, or one that
    lost a step, fails loudly."""

    instances: list["RuleProcessor"] = []

    def __init__(self):
        self.seen: list[int] = []
        self.calls = 0
        RuleProcessor.instances.append(self)

    def fill_bitmask(self, output_token_ids, bitmask, row):
        history = list(output_token_ids)
        assert history[:len(self.seen)] == self.seen and len(history) == len(self.seen) + (self.calls > 0)
        if history and self.seen != history:
            assert history[-1] in allowed_after(self.seen)
        self.seen = history
        self.calls += 1
        allow_only(bitmask[row], allowed_after(history))


def rule_factory():
    return RuleProcessor()


def satisfies_rule(tokens: list[int]) -> bool:
    return all(t in allowed_after(tokens[:i]) for i, t in enumerate(tokens))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from transformers import AutoTokenizer
    root = tmp_path_factory.mktemp("logits-processors")
    hf = make_hf_checkpoint("llama", root, seed=5)
    tokenizer = AutoTokenizer.from_pretrained(str(ensure_smollm2()))  # decodes ids < 128 like any
    return root, hf, tokenizer


def make_engine(root, tokenizer, **kw):
    config = dict(model=str(root), num_kv_blocks=64, block_size=4, max_num_batched_tokens=64)
    return LLMEngine(EngineConfig(**{**config, **kw}), tokenizer=tokenizer)


def masked_greedy_reference(hf, prompt: list[int], max_new: int) -> list[int]:
    ids = list(prompt)
    out: list[int] = []
    with torch.no_grad():
        for _ in range(max_new):
            logits = hf(torch.tensor([ids])).logits[0, -1]
            mask = torch.full((VOCAB,), float("-inf"))
            mask[allowed_after(out)] = 0.0
            token = int((logits + mask).argmax())
            out.append(token)
            ids.append(token)
    return out


def test_bitmask_helpers_round_trip():
    words = bitmask_words(70)
    assert words == 3
    row = torch.full((words,), -1, dtype=torch.int32)
    forbid(row, [0, 31, 32, 63, 69])  # word edges and the sign bit
    allowed = unpack_bitmask(row.unsqueeze(0), 70)[0]
    assert allowed.shape == (70,)
    assert sorted((~allowed).nonzero().squeeze(1).tolist()) == [0, 31, 32, 63, 69]
    allow_only(row, [1, 31, 64])
    assert unpack_bitmask(row.unsqueeze(0), 70)[0].nonzero().squeeze(1).tolist() == [1, 31, 64]


def test_greedy_follows_the_mask_exactly(setup):
    root, hf, tokenizer = setup
    engine = make_engine(root, tokenizer)
    free = engine.generate(PROMPTS, SamplingParams(temperature=0, max_tokens=10, ignore_eos=True))
    assert not all(satisfies_rule(o.outputs[0].token_ids) for o in free)  # the rule does bind
    params = SamplingParams(temperature=0, max_tokens=10, ignore_eos=True, logits_processor=rule_factory)
    outs = engine.generate(PROMPTS, params)
    for prompt, out in zip(PROMPTS, outs):
        assert out.outputs[0].token_ids == masked_greedy_reference(hf, prompt, 10), prompt
    del outs
    gc.collect()
    assert engine.logits_processors.num_live == 0  # a sample's processor goes with its sequence


def test_sampled_tokens_never_break_the_mask(setup):
    root, _, tokenizer = setup
    engine = make_engine(root, tokenizer)
    for top_p in (1.0, 0.9):
        params = SamplingParams(temperature=1.5, top_p=top_p, seed=7, max_tokens=12, ignore_eos=True,
                                logits_processor=rule_factory)
        for out in engine.generate(PROMPTS, params):
            assert satisfies_rule(out.outputs[0].token_ids)


def test_n_samples_each_get_their_own_processor(setup):
    root, _, tokenizer = setup
    engine = make_engine(root, tokenizer)
    RuleProcessor.instances.clear()
    params = SamplingParams(temperature=1.0, seed=3, n=4, max_tokens=9, ignore_eos=True,
                            logits_processor=rule_factory)
    (out,) = engine.generate([PROMPTS[0]], params)
    samples = [o.token_ids for o in out.outputs]
    assert len(samples) == 4 and all(satisfies_rule(s) for s in samples)
    assert len(set(map(tuple, samples))) > 1  # seeded siblings differ, each under its own state
    assert len(RuleProcessor.instances) == 4
    # each processor saw exactly its own sample (up to the token drawn after its last call)
    assert sorted(tuple(p.seen) for p in RuleProcessor.instances) == sorted(tuple(s[:-1]) for s in samples)


def test_mixed_batch_leaves_free_requests_untouched(setup):
    root, hf, tokenizer = setup
    engine = make_engine(root, tokenizer)
    free_params = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)
    alone = [o.outputs[0].token_ids for o in engine.generate(PROMPTS, free_params)]
    constrained = free_params.replace(logits_processor=rule_factory)
    params = [constrained if i % 2 else free_params for i in range(len(PROMPTS))]
    mixed = engine.generate(PROMPTS, params)
    for i, (prompt, out) in enumerate(zip(PROMPTS, mixed)):
        want = masked_greedy_reference(hf, prompt, 8) if i % 2 else alone[i]
        assert out.outputs[0].token_ids == want, i


def test_preemption_by_recompute_keeps_the_constraint(setup):
    root, hf, tokenizer = setup
    # 10 blocks of 4 tokens for 6 sequences that grow to ~20 tokens each: the scheduler must preempt
    engine = make_engine(root, tokenizer, num_kv_blocks=10, enable_prefix_caching=False)
    params = SamplingParams(temperature=0, max_tokens=14, ignore_eos=True, logits_processor=rule_factory)
    outs = engine.generate(PROMPTS, params)
    assert engine.scheduler.num_preemptions > 0
    for prompt, out in zip(PROMPTS, outs):
        assert out.outputs[0].token_ids == masked_greedy_reference(hf, prompt, 14), prompt


class NothingAllowed(LogitsProcessor):
    def fill_bitmask(self, output_token_ids, bitmask, row):
        bitmask[row] = 0


def test_a_processor_that_allows_nothing_ends_the_sample_at_eos(setup):
    root, _, tokenizer = setup
    engine = make_engine(root, tokenizer)
    for temperature in (0.0, 1.0):
        (out,) = engine.generate([PROMPTS[1]], SamplingParams(temperature=temperature, max_tokens=5,
                                                              logits_processor=NothingAllowed))
        assert out.outputs[0].finish_reason == "stop"
        assert out.outputs[0].token_ids == [engine.eos_token_ids[0]]


def test_validate_checks_the_factory():
    with pytest.raises(InvalidRequestError) as err:
        SamplingParams(logits_processor="not callable").validate()
    assert err.value.param == "logits_processor"

    class Picky:
        def __call__(self):
            return NothingAllowed()

        def check_params(self, params):
            if params.n > 1:
                raise InvalidRequestError("no n > 1 here", "n")

    SamplingParams(logits_processor=Picky()).validate()
    with pytest.raises(InvalidRequestError):
        SamplingParams(n=2, logits_processor=Picky()).validate()
