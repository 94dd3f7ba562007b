"""Adapters loaded, re-loaded and unloaded while requests run: the adapter's identity is its
weights (a content version), its bytes are read once at load, and a bad adapter fails its own
load and requests only. Every generation is checked against PEFT's own greedy generate."""
from __future__ import annotations

import shutil

import pytest

from fireplace.catalog.smollm2 import ensure_smollm2
from fireplace.engine.engine_config import EngineConfig
from fireplace.engine.errors import AdapterLoadError, AdapterUnavailableError, InvalidRequestError
from fireplace.engine.llm_engine import LLMEngine, merge_output
from fireplace.engine.sampling_params import SamplingParams
from tests.engine.lora_helpers import make_peft_adapter, tiny_hf_llama
from tests.engine.test_engine_lora import greedy_reference

GREEDY = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True)
PROMPT = list(range(10, 30))  # 5 full blocks of 4 tokens


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from transformers import AutoTokenizer
    root = tmp_path_factory.mktemp("lora-churn")
    base = tiny_hf_llama(seed=3)
    base.save_pretrained(root / "base")
    peft = [make_peft_adapter(base, root / f"a{i}", r=8, lora_alpha=16, target_modules=("q_proj", "v_proj"),
                              seed=20 + i) for i in range(3)]
    tokenizer = AutoTokenizer.from_pretrained(str(ensure_smollm2()))
    return root, base, peft, tokenizer


def make_engine(root, tokenizer, **kw):
    values = dict(model=str(root / "base"), enable_lora=True, max_loras=2, max_lora_rank=16, num_kv_blocks=64,
                  block_size=4, max_num_batched_tokens=64)
    values.update(kw)
    return LLMEngine(EngineConfig(**values), tokenizer=tokenizer)


def files_of(path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in path.iterdir() if p.is_file()}


def run_all(engine) -> dict[str, object]:
    merged: dict[str, object] = {}
    while engine.has_unfinished_requests():
        for out in engine.step():
            merged[out.request_id] = merge_output(merged.get(out.request_id), out)
    return merged


def test_reload_with_other_weights_never_serves_the_old_kv(setup):
    root, base, peft, tokenizer = setup
    engine = make_engine(root, tokenizer)
    v0 = engine.load_adapter("x", str(root / "a0"))
    first = engine.generate([PROMPT], GREEDY, adapter_ids=["x"])[0]
    assert first.outputs[0].token_ids == greedy_reference(peft[0], PROMPT, 6)

    v1 = engine.load_adapter("x", files_of(root / "a1"))  # same id, other weights (the blob store's bytes)
    assert v1 != v0
    again = engine.generate([PROMPT], GREEDY, adapter_ids=["x"])[0]
    assert again.num_cached_tokens == 0  # nothing computed under a0 is reused
    assert again.outputs[0].token_ids == greedy_reference(peft[1], PROMPT, 6)

    engine.unload_adapter("x")
    with pytest.raises(AdapterUnavailableError):
        engine.add_request(None, PROMPT, GREEDY, adapter_id="x")
    assert engine.load_adapter("x", str(root / "a2")) not in (v0, v1)  # unload, then load under the same id
    third = engine.generate([PROMPT], GREEDY, adapter_ids=["x"])[0]
    assert third.num_cached_tokens == 0
    assert third.outputs[0].token_ids == greedy_reference(peft[2], PROMPT, 6)

    # identical files are the same adapter: loading them again keeps the cached prefix
    assert engine.load_adapter("x", files_of(root / "a2")) == engine.load_adapter("x", str(root / "a2"))
    fourth = engine.generate([PROMPT], GREEDY, adapter_ids=["x"])[0]
    assert fourth.num_cached_tokens >= 16 and fourth.outputs[0].token_ids == third.outputs[0].token_ids
    # the versions nobody uses any more left no cached KV blocks behind
    cached_keys = {k for k in engine.scheduler.block_manager._block_adapter if k is not None}
    assert cached_keys == {engine.adapters.version_of("x")}


def test_reload_while_the_old_version_runs_stays_within_the_slots(setup):
    root, base, peft, tokenizer = setup
    engine = make_engine(root, tokenizer, max_loras=2)
    engine.load_adapter("x", str(root / "a0"))
    engine.load_adapter("y", str(root / "a2"))
    params = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)
    engine.add_request("old", [5, 6, 7], params, adapter_id="x")
    merged = {}
    for _ in range(2):
        for out in engine.step():
            merged[out.request_id] = merge_output(merged.get(out.request_id), out)
    engine.load_adapter("x", str(root / "a1"))  # "old" keeps running on a0 in its slot
    engine.add_request("new", [5, 6, 7], params, adapter_id="x")
    engine.add_request("other", [9, 8, 7, 6], params, adapter_id="y")
    while engine.has_unfinished_requests():
        for out in engine.step():  # two slots, three versions wanted: one waits, none fails
            merged[out.request_id] = merge_output(merged.get(out.request_id), out)
            assert out.error is None
        assert engine.adapters.num_slots_used <= 2
    assert merged["old"].outputs[0].token_ids == greedy_reference(peft[0], [5, 6, 7], 8)
    assert merged["new"].outputs[0].token_ids == greedy_reference(peft[1], [5, 6, 7], 8)
    assert merged["other"].outputs[0].token_ids == greedy_reference(peft[2], [9, 8, 7, 6], 8)
    assert not engine.adapters.has_orphans  # a0's bytes were dropped once "old" finished


def test_preempted_request_resumes_on_the_version_it_started_with(setup):
    root, base, peft, tokenizer = setup
    # 8 blocks of 4 tokens: two requests growing to 3 + 16 tokens each cannot both stay resident
    engine = make_engine(root, tokenizer, num_kv_blocks=8, max_loras=2)
    engine.load_adapter("x", str(root / "a0"))
    params = SamplingParams(temperature=0, max_tokens=16, ignore_eos=True)
    engine.add_request("first", [1, 2, 3], params)
    engine.add_request("victim", [4, 5, 6], params, adapter_id="x")
    merged = {}
    for out in engine.step():
        merged[out.request_id] = merge_output(merged.get(out.request_id), out)
    engine.load_adapter("x", str(root / "a1"))
    merged.update({k: merge_output(merged.get(k), v) for k, v in run_all(engine).items()})
    assert engine.stats().num_preemptions >= 1
    assert merged["victim"].outputs[0].token_ids == greedy_reference(peft[0], [4, 5, 6], 16)


def test_adapter_files_are_read_at_load_never_in_a_step(setup, tmp_path):
    root, base, peft, tokenizer = setup
    # one slot and one parsed adapter in host memory: every switch re-parses the other adapter
    engine = make_engine(root, tokenizer, max_loras=1, max_cpu_loras=1)
    shutil.copytree(root / "a0", tmp_path / "p")
    shutil.copytree(root / "a1", tmp_path / "q")
    calls = []

    def download():  # what the blob store hands the engine: called once, at load
        calls.append(1)
        return files_of(tmp_path / "q")

    engine.load_adapter("p", str(tmp_path / "p"))
    engine.load_adapter("q", download)
    shutil.rmtree(tmp_path / "p")
    shutil.rmtree(tmp_path / "q")
    for adapter, model in [("p", peft[0]), ("q", peft[1]), ("p", peft[0]), ("q", peft[1])]:
        out = engine.generate([[3, 1, 4, 1, 5]], GREEDY, adapter_ids=[adapter])[0]
        assert out.outputs[0].token_ids == greedy_reference(model, [3, 1, 4, 1, 5], 6), adapter
    assert calls == [1]
    assert engine.adapters.stats().num_host_loads >= 4  # it did re-parse, from host memory


def test_a_corrupt_adapter_fails_its_load_and_its_requests_only(setup):
    root, base, peft, tokenizer = setup
    engine = make_engine(root, tokenizer)
    engine.load_adapter("good", str(root / "a0"))
    params = SamplingParams(temperature=0, max_tokens=10, ignore_eos=True)
    engine.add_request("base", [7, 7, 7], params)
    engine.add_request("tuned", [8, 9, 10], params, adapter_id="good")
    merged = {}
    for out in engine.step():
        merged[out.request_id] = merge_output(merged.get(out.request_id), out)

    corrupt = files_of(root / "a1")
    corrupt["adapter_model.safetensors"] = corrupt["adapter_model.safetensors"][:100]  # a truncated upload
    with pytest.raises(AdapterLoadError, match="'bad' could not be loaded: adapter_model.safetensors is not"):
        engine.load_adapter("bad", corrupt)
    with pytest.raises(AdapterUnavailableError, match="its load failed") as refused:
        engine.add_request(None, [1, 2], params, adapter_id="bad")
    assert isinstance(refused.value, InvalidRequestError) and refused.value.param == "model"

    def failing_download():
        raise OSError("blob store unreachable")

    with pytest.raises(AdapterLoadError, match="blob store unreachable"):
        engine.load_adapter("bad", failing_download)
    # a failed re-load of a serving id changes nothing: the old version keeps serving
    with pytest.raises(AdapterLoadError):
        engine.load_adapter("good", corrupt)
    engine.add_request("tuned-later", [8, 9, 10], params, adapter_id="good")

    merged.update({k: merge_output(merged.get(k), v) for k, v in run_all(engine).items()})
    assert merged["base"].outputs[0].token_ids == greedy_reference(base, [7, 7, 7], 10)
    assert merged["tuned"].outputs[0].token_ids == greedy_reference(peft[0], [8, 9, 10], 10)
    assert merged["tuned-later"].outputs[0].token_ids == merged["tuned"].outputs[0].token_ids
    engine.load_adapter("bad", str(root / "a1"))  # a good version under the failed id serves
    out = engine.generate([[8, 9, 10]], params, adapter_ids=["bad"])[0]
    assert out.outputs[0].token_ids == greedy_reference(peft[1], [8, 9, 10], 10)
