"""The bundled all-MiniLM-L6-v2: our Embedder equals sentence-transformers within 1e-5 on a batch
(short and long inputs, unicode, upper case, one past the 256-token limit when truncating),
keeps input order, counts tokens, refuses bad input with a 400-class error, and encodes vectors
as OpenAI does (base64 = little-endian float32)."""
from __future__ import annotations

import base64
import json
import os

import numpy as np
import pytest
import torch

from fireplace.catalog.minilm import MAX_INPUT_TOKENS, POOLING_CONFIG, ensure_minilm, find_minilm_package_dir
from fireplace.engine.errors import InvalidRequestError
from fireplace.serving.embeddings import MAX_INPUTS, Embedder, decode_base64, encode_embedding

LONG = " ".join(f"word{i} and more text" for i in range(120))  # well past 256 tokens
TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "A fast, dark-coloured fox leaps above a sleepy hound.",
    "Quantum chromodynamics describes the strong interaction.",
    "hi",
    "THE CAPITAL OF FRANCE IS PARIS",
    "Café crème, naïve résumé — ünïcödé text ✓ 東京",
    "def fibonacci(n):\n    return n if n < 2 else fibonacci(n - 1) + fibonacci(n - 2)",
    "   leading and trailing spaces   ",
    "Paris is the capital of France.",
    "\n".join(["a line of text"] * 20),
]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return ensure_minilm(tmp_path_factory.mktemp("minilm") / "all-minilm-l6-v2")


@pytest.fixture(scope="module")
def embedder(model_dir):
    return Embedder(model_dir, batch_size=4)  # several length-sorted batches for the inputs below


@pytest.fixture(scope="module")
def reference():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer
    return SentenceTransformer(str(find_minilm_package_dir()), device="cpu")


def test_flat_directory_keeps_what_the_embedder_needs(model_dir):
    names = {p.name for p in model_dir.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "modules.json", "sentence_bert_config.json",
            POOLING_CONFIG} <= names
    assert all(p.is_file() for p in model_dir.iterdir())  # top-level files only: what the blob store keeps
    assert json.loads((model_dir / POOLING_CONFIG).read_text())["pooling_mode_mean_tokens"] is True
    assert ensure_minilm(model_dir) == model_dir  # idempotent


def test_equals_sentence_transformers(embedder, reference):
    texts = TEXTS + [LONG]
    ours = embedder.encode(texts, truncate=True).vectors
    want = torch.from_numpy(reference.encode(texts, batch_size=3, convert_to_numpy=True))
    assert ours.shape == want.shape == (len(texts), 384)
    assert (ours - want).abs().max().item() < 1e-5
    assert torch.allclose(ours.norm(dim=1), torch.ones(len(texts)), atol=1e-5)
    # the model is real: paraphrases are closer than unrelated sentences
    assert ours[0] @ ours[1] > ours[0] @ ours[2] + 0.2
    assert ours[4] @ ours[8] > 0.8


def test_order_and_batching_do_not_change_vectors(embedder):
    alone = torch.stack([embedder.encode([t]).vectors[0] for t in TEXTS[:4]])
    batched = embedder.encode(list(reversed(TEXTS[:4]))).vectors.flip(0)
    assert (alone - batched).abs().max().item() < 1e-5


def test_token_counts_and_the_length_limit(embedder):
    batch = embedder.encode(["hi", "Paris is the capital of France."])
    assert batch.num_tokens == [3, 9]  # [CLS] ... [SEP]
    assert batch.total_tokens == 12
    assert embedder.count_tokens([LONG])[0] > embedder.max_input_tokens == MAX_INPUT_TOKENS == 256
    with pytest.raises(InvalidRequestError) as err:
        embedder.encode(["fine", LONG])
    assert err.value.param == "input" and "input[1]" in err.value.message and "256" in err.value.message
    assert embedder.encode(["fine", LONG], truncate=True).num_tokens == [3, 256]


@pytest.mark.parametrize("bad", [[], "", [""], ["ok", 3], [None], ["x"] * (MAX_INPUTS + 1), {"text": "x"}])
def test_bad_input_is_an_invalid_request(embedder, bad):
    with pytest.raises(InvalidRequestError) as err:
        embedder.encode(bad)
    assert err.value.param == "input"


def test_a_single_string_is_one_input(embedder):
    assert len(embedder.embed("hello world")) == 1


def test_float_and_base64_encodings(embedder):
    vector = embedder.encode(["encode me"]).vectors[0]
    as_floats = encode_embedding(vector, "float")
    assert isinstance(as_floats, list) and len(as_floats) == 384 and as_floats == vector.tolist()
    as_base64 = encode_embedding(vector, "base64")
    raw = base64.b64decode(as_base64)
    assert len(raw) == 384 * 4
    assert np.array_equal(np.frombuffer(raw, dtype="<f4"), vector.numpy().astype("<f4"))
    assert decode_base64(as_base64) == vector.tolist()
    with pytest.raises(InvalidRequestError) as err:
        encode_embedding(vector, "int8")
    assert err.value.param == "encoding_format"
