"""Admission control on a tiny random model: prefills admitted with their whole prompt reserved do
not preempt each other, the waiting queue is bounded (EngineOverloadedError), and a request still
waiting at its deadline ends with a DeadlineExceededError output while the others run."""
from __future__ import annotations

import time

import pytest

from fireplace.catalog.smollm2 import ensure_smollm2
from fireplace.engine.engine_config import EngineConfig
from fireplace.engine.errors import DeadlineExceededError, EngineOverloadedError
from fireplace.engine.llm_engine import LLMEngine, merge_output
from fireplace.engine.sampling_params import SamplingParams
from tests.engine.helpers import make_hf_checkpoint

GREEDY = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("admission")
    make_hf_checkpoint("llama", path, seed=7)
    return path


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(str(ensure_smollm2()))


def make_engine(model_dir, tokenizer, **kw):
    values = dict(model=str(model_dir), num_kv_blocks=64, block_size=4, max_num_batched_tokens=32,
                  max_num_seqs=8, enable_prefix_caching=False)
    values.update(kw)
    return LLMEngine(EngineConfig(**values), tokenizer=tokenizer)


def run_all(engine) -> dict:
    merged = {}
    while engine.has_unfinished_requests():
        for out in engine.step():
            merged[out.request_id] = merge_output(merged.get(out.request_id), out)
    return merged


def test_long_prefills_do_not_preempt_each_other_chunk_by_chunk(model_dir, tokenizer):
    # 20 blocks of 4 tokens; each 40-token prompt + 8 tokens needs 12: one at a time fits, two
    # interleaved chunk by chunk do not (the second was preempted again and again before)
    prompts = [[(7 * i + j) % 120 + 1 for j in range(40)] for i in range(2)]
    engine = make_engine(model_dir, tokenizer, num_kv_blocks=20)
    for i, prompt in enumerate(prompts):
        engine.add_request(f"r{i}", prompt, GREEDY)
    merged, prefill_tokens = {}, 0
    while engine.has_unfinished_requests():
        for out in engine.step():
            merged[out.request_id] = merge_output(merged.get(out.request_id), out)
    prefill_tokens = sum(len(o.prompt_token_ids) for o in merged.values())
    stats = engine.stats()
    assert stats.num_preemptions == 0
    assert stats.prompt_tokens_total == prefill_tokens == 80  # every prompt token computed once
    alone = make_engine(model_dir, tokenizer).generate(prompts, GREEDY)
    assert [merged[f"r{i}"].outputs[0].token_ids for i in range(2)] == [o.outputs[0].token_ids for o in alone]


def test_the_waiting_queue_is_bounded(model_dir, tokenizer):
    engine = make_engine(model_dir, tokenizer, max_waiting_requests=2, max_num_seqs=2)
    engine.add_request("a", [1, 2, 3], GREEDY)
    engine.add_request("b", [4, 5, 6], GREEDY)
    with pytest.raises(EngineOverloadedError, match="max_waiting_requests=2") as info:
        engine.add_request("c", [7, 8, 9], GREEDY)
    assert (info.value.num_waiting, info.value.max_waiting) == (2, 2)
    assert not engine.scheduler.sequences("c")
    engine.step()  # both admitted: the queue has room again
    engine.add_request("c", [7, 8, 9], GREEDY)
    engine.add_request("d", [1, 1], GREEDY)
    with pytest.raises(EngineOverloadedError):
        engine.add_request("e", [2, 2], GREEDY)
    merged = run_all(engine)
    assert sorted(merged) == ["a", "b", "c", "d"] and all(o.error is None for o in merged.values())
    assert engine.stats().num_overloaded_rejections == 2


def test_a_request_waiting_past_its_deadline_is_rejected(model_dir, tokenizer):
    engine = make_engine(model_dir, tokenizer, max_num_seqs=1, queue_timeout_s=0.05)
    engine.add_request("running", [1, 2, 3], SamplingParams(temperature=0, max_tokens=12, ignore_eos=True))
    merged = {}
    for out in engine.step():
        merged[out.request_id] = merge_output(merged.get(out.request_id), out)
    now = time.monotonic()
    engine.add_request("late", [4, 5], GREEDY, deadline=now + 0.01)
    engine.add_request("default-timeout", [6, 7], GREEDY)  # arrival + queue_timeout_s
    engine.add_request("patient", [8, 9], GREEDY, deadline=now + 3600)
    time.sleep(0.06)
    outs = engine.step()
    rejected = {o.request_id: o for o in outs if o.error is not None}
    assert sorted(rejected) == ["default-timeout", "late"]
    for out in rejected.values():
        assert out.finished and isinstance(out.exception, DeadlineExceededError)
        assert out.outputs[0].finish_reason == "error" and out.outputs[0].token_ids == []
        assert "passed its deadline" in out.error and out.exception.waited_s >= 0.05
    for out in outs:
        merged[out.request_id] = merge_output(merged.get(out.request_id), out)
    merged.update({k: merge_output(merged.get(k), v) for k, v in run_all(engine).items()})
    assert len(merged["running"].outputs[0].token_ids) == 12
    assert engine.stats().num_deadline_rejections == 2
    assert merged["patient"].error is None and len(merged["patient"].outputs[0].token_ids) == 8


def test_admission_settings_are_validated(model_dir):
    for bad in (dict(max_waiting_requests=0), dict(queue_timeout_s=0), dict(kv_watermark=1.0)):
        with pytest.raises(ValueError):
            EngineConfig(model=str(model_dir), **bad).validate()
    assert EngineConfig(model="m", kv_watermark=0.01).watermark_blocks(1000) == 10
    assert EngineConfig(model="m", kv_watermark=0.01).watermark_blocks(20) == 1
    assert EngineConfig(model="m", kv_watermark=0.0).watermark_blocks(20) == 0
