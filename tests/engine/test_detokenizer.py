"""Detokenizer tests with a tiny byte-level BPE tokenizer trained in-process on ASCII text,
so accented letters and emoji are split over several byte tokens."""
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fireplace.engine.detokenizer import IncrementalDetokenizer

tokenizers = pytest.importorskip("tokenizers")
transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=["<eos>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(["Hello world, the stop word is STOP. hello there, general kenobi!"] * 20, trainer)
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>")


def _stream(tokenizer, text, *, prompt="", chunk=1, **kwargs):
    detok = IncrementalDetokenizer(tokenizer, tokenizer.encode(prompt) if prompt else [], **kwargs)
    ids = tokenizer.encode(text)
    deltas = []
    for i in range(0, len(ids), chunk):
        delta = detok.step(ids[i:i + chunk], is_final=i + chunk >= len(ids))
        deltas.append(delta.text)
        if delta.stop_string:
            break
    return detok, deltas


def test_multibyte_characters_are_never_split(tokenizer):
    text = "café 🔥 naïve — 日本"
    ids = tokenizer.encode(text)
    assert len(ids) > len(text.split())  # really split over byte tokens
    detok, deltas = _stream(tokenizer, text)
    assert "".join(deltas) == text == detok.text
    assert not any("\ufffd" in d for d in deltas)
    assert "" in deltas  # some tokens ended mid-character and produced nothing yet


def test_leading_space_of_first_output_token_is_kept(tokenizer):
    detok, deltas = _stream(tokenizer, " world", prompt="Hello")
    assert "".join(deltas) == " world"


def test_stop_string_across_tokens_is_cut_and_reported(tokenizer):
    text = "hello there, general kenobi"
    detok, deltas = _stream(tokenizer, text, stop=["re, gen"])
    assert "".join(deltas) == "hello the"
    assert detok.stop_string == "re, gen" and detok.is_stopped
    assert detok.step([5]).text == ""  # nothing after a stop


def test_text_is_held_while_it_may_start_a_stop_string(tokenizer):
    detok = IncrementalDetokenizer(tokenizer, stop=["STOPPED"])
    seen = ""
    for token in tokenizer.encode("is STOP"):
        seen += detok.step([token]).text
    assert seen == "is "  # "STOP" could still become "STOPPED"
    seen += detok.step(tokenizer.encode(" now")).text
    assert seen == "is STOP now"


def test_final_step_flushes_held_text(tokenizer):
    detok = IncrementalDetokenizer(tokenizer, stop=["STOPPED"])
    assert detok.step(tokenizer.encode("is STOP")).text == "is "
    assert detok.step([], is_final=True).text == "STOP"
    assert detok.output_text == "is STOP"


def test_earliest_stop_wins_and_min_tokens_defers_stops(tokenizer):
    _, deltas = _stream(tokenizer, "hello world STOP", chunk=100, stop=["STOP", "world"])
    assert "".join(deltas) == "hello "
    detok, deltas = _stream(tokenizer, "hello world hello", stop=["hello"], min_tokens=3)
    assert "".join(deltas) == "hello world " and detok.stop_string == "hello"


def test_special_tokens_are_skipped_by_default(tokenizer):
    eos = tokenizer.eos_token_id
    ids = tokenizer.encode("hello") + [eos]
    assert IncrementalDetokenizer(tokenizer).step(ids, is_final=True).text == "hello"
    kept = IncrementalDetokenizer(tokenizer, skip_special_tokens=False).step(ids, is_final=True).text
    assert kept == "hello<eos>"


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    text=st.text(alphabet="ab é🔥.\n", max_size=30),
    stop=st.text(alphabet="ab é🔥.", min_size=1, max_size=4),
    chunk=st.integers(1, 3),
)
def test_stream_equals_text_up_to_stop(tokenizer, text, stop, chunk):
    detok, deltas = _stream(tokenizer, text, chunk=chunk, stop=[stop])
    index = text.find(stop)
    expected = text if index == -1 else text[:index]
    assert "".join(deltas) == expected
    assert detok.stop_string == (None if index == -1 else stop)
    assert not any("\ufffd" in d for d in deltas)
