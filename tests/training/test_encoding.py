"""Dataset validation against the base model: chat template + tokenizer, loss masks,
truncation, and the errors a user sees (real tokenizers: the tiny one and SmolLM2's)."""
from __future__ import annotations

import json

import pytest
from transformers import AutoTokenizer

from fireplace.training.encoding import EncodingError, ExampleEncoder
from fireplace.training.errors import TrainingError
from fireplace.training.validation import carve_out, encode_dataset
from tests.training.tiny_model import tiny_model_dir


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return AutoTokenizer.from_pretrained(str(tiny_model_dir(tmp_path_factory.mktemp("tiny"))))


def trained_text(tok, ex) -> str:
    return tok.decode([t for t, m in zip(ex.input_ids, ex.loss_mask) if m])


def lines(*objs) -> list[bytes]:
    return [json.dumps(o).encode() for o in objs]


def test_chat_loss_covers_assistant_turns_only_and_respects_weight(tok):
    enc = ExampleEncoder(tok, max_length=512)
    ex = enc.encode({"messages": [
        {"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"},
        {"role": "assistant", "content": "first answer", "weight": 0},
        {"role": "user", "content": "again"}, {"role": "assistant", "content": "second answer"}]}, 1, "CHAT")
    assert trained_text(tok, ex) == "second answer<|im_end|>\n"
    full = tok.decode(ex.input_ids)
    assert full.startswith("<|im_start|>system\nbe brief") and "first answer" in full
    both = enc.encode({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "one"},
                                    {"role": "user", "content": "b"},
                                    {"role": "assistant", "content": [{"type": "text", "text": "two"}]}]}, 2, "CHAT")
    assert trained_text(tok, both) == "one<|im_end|>\ntwo<|im_end|>\n"
    # the assistant header is context, not a target
    assert "<|im_start|>assistant" not in trained_text(tok, both)


def test_completion_trains_on_the_completion_and_eos_only(tok):
    ex = ExampleEncoder(tok, max_length=512).encode({"prompt": "the quick brown", "completion": " fox jumps"}, 1,
                                                     "COMPLETION")
    assert trained_text(tok, ex) == " fox jumps<|im_end|>"
    assert tok.decode(ex.input_ids).startswith("the quick brown")


def test_jinja_template_override_and_smollm2_template():
    from fireplace.catalog.smollm2 import ensure_smollm2
    smol = AutoTokenizer.from_pretrained(str(ensure_smollm2()))
    msgs = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hello there"}]}
    ex = ExampleEncoder(smol, max_length=512).encode(msgs, 1, "CHAT")
    assert trained_text(smol, ex) == "Hello there<|im_end|>\n"
    assert "You are a helpful AI assistant named SmolLM" in smol.decode(ex.input_ids)  # template's default system
    custom = "{% for m in messages %}[{{ m['role'] }}]{{ m['content'] }}{% endfor %}" \
             "{% if add_generation_prompt %}[assistant]{% endif %}"
    ex = ExampleEncoder(smol, chat_template=custom, max_length=512).encode(msgs, 1, "CHAT")
    assert smol.decode(ex.input_ids) == "[user]hi[assistant]Hello there" and trained_text(smol, ex) == "Hello there"


def test_over_long_examples_are_truncated_and_counted(tok):
    long_reply = "the quick brown fox " * 40
    data = lines({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "short"}]},
                 {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": long_reply}]},
                 {"messages": [{"role": "user", "content": long_reply}, {"role": "assistant", "content": "late"}]})
    out = encode_dataset(data, ExampleEncoder(tok, max_length=48))
    assert (out.total, out.truncated, out.dropped) == (3, 2, 1)       # line 3's only target is past the cut
    assert out.first_truncated_line == 2 and out.longest_line in (2, 3) and out.longest > 48
    assert [e.line for e in out.examples] == [1, 2]
    assert all(len(e.input_ids) <= 48 for e in out.examples) and out.examples[1].truncated


def test_all_over_long_fails_naming_the_limit_and_line(tok):
    data = lines(*[{"messages": [{"role": "user", "content": "the quick brown fox " * 30},
                                 {"role": "assistant", "content": "ok"}]} for _ in range(3)])
    with pytest.raises(TrainingError, match=r"all 3 examples .* longer than maxContextLength=32 .*line 1"):
        encode_dataset(data, ExampleEncoder(tok, max_length=32))


def test_all_over_long_fails_even_when_the_cut_parts_keep_assistant_tokens(tok):
    """The issue's rule: truncate with a warning, or fail the job when every example is over the
    limit, here although each cut example still holds assistant tokens to train on."""
    data = lines(*[{"messages": [{"role": "user", "content": "q"},
                                 {"role": "assistant", "content": "the quick brown fox " * (20 + i)}]}
                   for i in range(3)])
    with pytest.raises(TrainingError) as err:
        encode_dataset(data, ExampleEncoder(tok, max_length=32))
    shortest = len(ExampleEncoder(tok, max_length=4096).encode(json.loads(data[0]), 1, "CHAT").input_ids)
    assert "all 3 examples of the dataset are longer than maxContextLength=32 tokens" in str(err.value)
    assert f"the shortest, line 1, has {shortest} tokens" in str(err.value)
    assert f"raise maxContextLength to at least {shortest}" in str(err.value)
    # one example within the limit: the others are truncated and counted, nothing fails
    out = encode_dataset(data + lines({"messages": [{"role": "user", "content": "q"},
                                                    {"role": "assistant", "content": "ok"}]}),
                         ExampleEncoder(tok, max_length=32))
    assert (out.total, out.truncated, len(out.examples)) == (4, 3, 4)


def test_template_errors_name_the_line(tok):
    raising = "{% for m in messages %}{% if m['role'] == 'tool' %}{{ raise_exception('no tools here') }}" \
              "{% endif %}{{ m['content'] }}{% endfor %}"
    data = lines({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]},
                 {"messages": [{"role": "user", "content": "a"}, {"role": "tool", "content": "x"},
                               {"role": "assistant", "content": "b"}]})
    with pytest.raises(EncodingError, match=r"line 2: the chat template failed: .*no tools here"):
        encode_dataset(data, ExampleEncoder(tok, chat_template=raising, max_length=64))


def test_eval_carveout_is_seeded_and_disjoint(tok):
    data = lines(*[{"prompt": f"p {i}", "completion": f"c {i}"} for i in range(30)])
    examples = encode_dataset(data, ExampleEncoder(tok, max_length=64)).examples
    train, held = carve_out(examples, seed=7)
    assert len(held) == 3 and len(train) == 27
    assert {e.line for e in train}.isdisjoint({e.line for e in held})
    assert [e.line for e in carve_out(examples, seed=7)[1]] == [e.line for e in held]
    assert [e.line for e in carve_out(examples, seed=8)[1]] != [e.line for e in held]
