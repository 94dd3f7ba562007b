"""What the engine makes of a prompt: string prompts get the tokenizer's special tokens the way
transformers does by default (BOS here, as Llama/Mistral tokenizers add it), token ids are used
as given, and sliding-window models serve at most their window (where full attention is exact).

The tokenizer is a tiny word-level one saved next to a random checkpoint, with a Llama-style
"<s> $A" template, so the engine loads both from one directory as it would a real model."""
from __future__ import annotations

import pytest
import torch

from fireplace.engine.engine_config import EngineConfig
from fireplace.engine.errors import ContextLengthExceededError
from fireplace.engine.llm_engine import LLMEngine
from fireplace.engine.sampling_params import SamplingParams
from tests.engine.helpers import make_hf_checkpoint

BOS = 1


def save_bos_tokenizer(path) -> None:
    """Words w3..w127 are ids 3..127; <s> (1) starts every encoded text, like Llama's."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": BOS, "</s>": 2, **{f"w{i}": i for i in range(3, 128)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                       special_tokens=[("<s>", BOS)])
    tok.decoder = decoders.WordPiece(prefix="##")
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                            unk_token="<unk>").save_pretrained(str(path))


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    path = tmp_path_factory.mktemp("bos-llama")
    hf = make_hf_checkpoint("llama", path, seed=11, bos_token_id=BOS, eos_token_id=2)
    save_bos_tokenizer(path)
    return path, hf


def hf_greedy(hf, ids: list[int], n: int) -> list[int]:
    x = torch.tensor([ids])
    with torch.no_grad():
        out = hf.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=n, min_new_tokens=n,
                          do_sample=False, pad_token_id=0)
    return out[0, len(ids):].tolist()


def test_string_prompts_get_special_tokens_like_transformers(llama):
    from transformers import AutoTokenizer
    path, hf = llama
    engine = LLMEngine(EngineConfig(model=str(path), num_kv_blocks=64, block_size=4))  # its own tokenizer
    reference = AutoTokenizer.from_pretrained(str(path))
    prompt = "w5 w9 w17 w33 w64"
    expected = reference(prompt).input_ids  # transformers' default: add_special_tokens=True
    assert expected == [BOS, 5, 9, 17, 33, 64]
    params = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)
    out = engine.generate([prompt], params)[0]
    assert out.prompt_token_ids == expected
    assert out.outputs[0].token_ids == hf_greedy(hf, expected, 8)

    # token ids are the caller's: nothing is added; nor for text that already has its specials
    as_ids = engine.generate([[5, 9, 17, 33, 64]], params)[0]
    assert as_ids.prompt_token_ids == [5, 9, 17, 33, 64]
    assert as_ids.outputs[0].token_ids == hf_greedy(hf, [5, 9, 17, 33, 64], 8)
    rid = engine.add_request(None, "<s> w5 w9", params, add_special_tokens=False)
    assert engine.scheduler.sequences(rid)[0].prompt_token_ids == [BOS, 5, 9]
    engine.abort(rid)
    # echo shows the prompt without its special tokens (skip_special_tokens, the default)
    echoed = engine.generate([prompt], SamplingParams(temperature=0, max_tokens=1, echo=True))[0]
    assert echoed.outputs[0].text.startswith("w5 w9 w17 w33 w64")


@pytest.mark.parametrize("model_type, overrides, window", [
    ("mistral", dict(sliding_window=32), 32),
    ("qwen2", dict(use_sliding_window=True, sliding_window=48, max_window_layers=0), 48),
    ("qwen2", dict(use_sliding_window=False, sliding_window=48), None),
    ("mistral", dict(sliding_window=None), None),
])
def test_sliding_window_models_serve_at_most_their_window(tmp_path, model_type, overrides, window):
    hf = make_hf_checkpoint(model_type, tmp_path, seed=2, **overrides)
    save_bos_tokenizer(tmp_path)
    engine = LLMEngine(EngineConfig(model=str(tmp_path), num_kv_blocks=128, block_size=4, max_model_len=200))
    assert engine.max_model_len == (window or 200)
    if window is None:
        return
    with pytest.raises(ContextLengthExceededError, match=f"context length is {window}"):
        engine.add_request(None, list(range(3, 3 + window)), SamplingParams(max_tokens=None))
    prompt = list(range(10, 10 + window // 2))
    out = engine.generate([prompt], SamplingParams(temperature=0, max_tokens=None, ignore_eos=True))[0]
    completion = out.outputs[0]
    assert completion.finish_reason == "length" and len(prompt) + len(completion.token_ids) == window
    # inside the window full attention is sliding-window attention: equal to transformers'
    assert completion.token_ids == hf_greedy(hf, prompt, len(completion.token_ids))
