"""A tiny random-weight Llama with a real (tiny, byte-level BPE) tokenizer and a ChatML chat
template: small enough that a fine-tuning job runs in seconds on CPU, real enough that every
code path (template, offsets, loss masks, LoRA on all projections) is exercised.

    files = tiny_model_files()            # {"config.json": b..., "model.safetensors": ..., "tokenizer.json": ...}
    directory = tiny_model_dir(tmp_path)  # the same files on disk
"""
from __future__ import annotations

import functools
import tempfile
from pathlib import Path

CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")

_CORPUS = [
    "the quick brown fox jumps over the lazy dog", "hello world, how are you today?",
    "what is the capital of france? paris is the capital.", "count: one two three four five six seven",
    "Sure! Here is the answer you asked for.", "ahoy matey, the sea is calm and the sky is blue",
    "user assistant system tool", "0123456789 + - * / = ( ) [ ] { } : ; , . ! ?",
]


def _tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(_CORPUS * 4, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>", unk_token="<|endoftext|>")
    fast.chat_template = CHATML
    return fast


def _model(vocab_size: int):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    cfg = AutoConfig.for_model("llama", vocab_size=vocab_size, hidden_size=64, intermediate_size=128,
                               num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                               max_position_embeddings=512, tie_word_embeddings=False,
                               bos_token_id=1, eos_token_id=2, pad_token_id=0)
    return AutoModelForCausalLM.from_config(cfg)


@functools.lru_cache(maxsize=1)
def tiny_model_files() -> dict[str, bytes]:
    tok = _tokenizer()
    model = _model(len(tok))
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        return {p.name: p.read_bytes() for p in sorted(Path(tmp).iterdir()) if p.is_file()}


def tiny_model_dir(dest: Path) -> Path:
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    for name, data in tiny_model_files().items():
        (dest / name).write_bytes(data)
    return dest
